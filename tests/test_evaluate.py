"""The uncertainty stated beside every AUC of the model card: a bootstrap interval that resamples
whole identity groups, in the evaluation, the leave-one-out table and the card itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream_server.core.evaluate import auc, auc_interval


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
    return y, rng.normal(size=n) + 1.0 * y  # fakes score one standard deviation higher


def test_interval_holds_the_auc_repeats_and_narrows_with_more_videos() -> None:
    y, s = _scores(40)
    lo, hi = auc_interval(y, s)
    assert 0.0 <= lo < auc(y, s) < hi <= 1.0
    assert auc_interval(y, s) == (lo, hi)  # seeded: the card's numbers repeat
    assert auc_interval(y, s, seed=1) != (lo, hi)
    y4, s4 = _scores(400)
    lo4, hi4 = auc_interval(y4, s4)
    assert hi4 - lo4 < 0.6 * (hi - lo)  # ten times the videos: about a third of the width
    assert lo4 < 0.76 < hi4  # the AUC of a one-sigma shift, Phi(1 / sqrt 2)
    lo90, hi90 = auc_interval(y, s, level=0.9)
    assert lo <= lo90 and hi90 <= hi


def test_copies_of_one_video_do_not_narrow_the_interval_when_they_share_a_group() -> None:
    """Five videos of one person (or a fake and its own real) are not five independent samples:
    resampled as a group they add no confidence; resampled one by one they would."""
    y, s = _scores(30)
    lo, hi = auc_interval(y, s)
    y5, s5 = np.repeat(y, 5), np.repeat(s, 5)
    groups = np.repeat(np.arange(30), 5)
    lo_g, hi_g = auc_interval(y5, s5, groups)
    lo_v, hi_v = auc_interval(y5, s5)
    assert auc(y5, s5) == pytest.approx(auc(y, s))
    assert hi_g - lo_g == pytest.approx(hi - lo, abs=0.04)
    assert hi_v - lo_v < 0.7 * (hi_g - lo_g)


def test_one_class_gives_no_interval_and_bad_input_a_clear_error() -> None:
    lo, hi = auc_interval([0, 0, 0], [0.1, 0.2, 0.3])
    assert np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="equal-length"):
        auc_interval([0, 1], [0.5])
    with pytest.raises(ValueError, match="one cluster per score"):
        auc_interval([0, 1], [0.2, 0.8], ["a"])
    with pytest.raises(ValueError, match="level"):
        auc_interval([0, 1], [0.2, 0.8], level=95)


def _rows(tmp_path: Path) -> tuple[list[dict], dict[str, str]]:
    y, s = _scores(24)
    rows = [
        {"video": f"v{i}.mp4", "label": int(y[i]), "family": "dfdc" if y[i] else None}
        | {"p_fake": float(1 / (1 + np.exp(-s[i])))}
        for i in range(24)
    ]
    groups = {r["video"]: f"person{i // 2}" for i, r in enumerate(rows)}
    (tmp_path / "split.json").write_text(json.dumps({"groups": groups}))
    return rows, groups


def test_evaluation_tables_and_the_card_carry_the_interval(tmp_path: Path) -> None:
    from models.evaluation import _ci, by_group, interval, lofo_lines, split_groups

    rows, groups = _rows(tmp_path)
    assert split_groups(tmp_path) == groups
    assert split_groups(tmp_path / "missing") is None
    lo, hi = interval(rows, groups)
    want = auc_interval(
        [r["label"] for r in rows], [r["p_fake"] for r in rows], [groups[r["video"]] for r in rows]
    )
    assert (lo, hi) == pytest.approx(want, abs=1e-4)
    fam = by_group(rows, "family", 0.5, groups)["dfdc"]
    assert fam["auc_95"] == [lo, hi]  # one family: its fakes against every real, as the table
    assert interval([r for r in rows if r["label"] == 0], groups) is None  # no fake: none
    table = lofo_lines(
        {
            "families": {"dfdc": {**fam, "auc": fam["auc_vs_reals"], "mean_p_fake_real": 0.3}},
            "mean_auc": fam["auc_vs_reals"],
        }
    )
    assert any(f"[{lo:.2f}-{hi:.2f}]" in line for line in table)
    assert _ci(None) == ""  # a bundle evaluated before the intervals: the number alone


def test_leave_one_out_summary_adds_each_familys_interval(tmp_path: Path) -> None:
    from models.lofo import summarise

    run = tmp_path / "dfdc"
    run.mkdir()
    rows, groups = _rows(run)
    reals = [r["p_fake"] for r in rows if r["label"] == 0]
    fakes = [r["p_fake"] for r in rows if r["label"] == 1]
    a = auc(np.r_[np.zeros(len(reals)), np.ones(len(fakes))], np.r_[reals, fakes])
    family = {"auc": a, "fakes": len(fakes), "reals": len(reals), "mean_p_fake": np.mean(fakes)}
    ev = {"families": {"dfdc": family}, "rows": rows, "fine_tune": {"steps": 1}}
    (run / "frame_eval.json").write_text(json.dumps(ev))
    out = summarise(tmp_path, ["dfdc"], "how")
    lo, hi = out["families"]["dfdc"]["auc_95"]
    assert lo < a < hi
