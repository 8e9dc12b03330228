"""The bundled default model: it loads and serves, and its model card's held-out numbers are
reproduced by scanning the held-out videos from ../shared/data (the folders it was trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream_server.core.bundle import DEFAULT_BUNDLE

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def test_default_bundle_validates_and_has_a_model_card() -> None:
    from export.validate import validate_bundle

    report = validate_bundle(DEFAULT_BUNDLE)
    assert report["model"].startswith("deepfake-cnn-gru")
    card = (DEFAULT_BUNDLE / "MODEL_CARD.md").read_text()
    m = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    ev = m["training"]["evaluation"]
    assert f"AUC **{ev['auc']:.3f}**" in card
    assert "## Reproduce" in card and "deepfake-train --data" in card
    total = sum(f["bytes"] for f in m["files"].values())
    assert total < 30 * 1024 * 1024


@pytest.mark.shared_data
def test_held_out_videos_share_no_identity_with_training_videos() -> None:
    """Held out means held out, recomputed here from the video lists rather than read from the
    counts the trainer wrote: the data folders are read again, identities grouped with the
    --groups file of the recorded command, and no held-out video shares a group with any video
    it was trained on (every other video of those folders); the seeded split, redone, gives the
    same held-out files."""
    import shlex

    from models.dfdc import identity_groups, read_folders, split_by_identity

    tr = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["training"]
    held = set(tr["evaluation"]["held_out_files"])
    videos = read_folders([SHARED / Path(d).name for d in tr["data"]]).videos
    assert held <= {v.name for v in videos}, held - {v.name for v in videos}
    cmd = shlex.split(_train_command(tr))
    rules = {}
    if "--groups" in cmd:
        rules = json.loads((ROOT / cmd[cmd.index("--groups") + 1]).read_text())
    groups = identity_groups(videos, rules)
    trained = [v for v in videos if v.name not in held]
    assert len(trained) == tr["videos"]["train"] and len(held) == tr["videos"]["val"]
    shared = {groups[n] for n in held} & {groups[v.name] for v in trained}
    assert not shared, sorted(n for n in held if groups[n] in shared)
    # A fake and its original are never split apart (the basic identity rule, checked directly).
    by_name = {v.name: v for v in videos}
    for v in videos:
        if v.original in by_name:
            assert (v.name in held) == (v.original in held), (v.name, v.original)
    s = tr["settings"]
    _, val = split_by_identity(videos, groups, s["val_fraction"], s["seed"])
    assert sorted(v.name for v in val) == sorted(held)


@pytest.mark.shared_data
@pytest.mark.slow
def test_default_model_held_out_metrics_are_reproducible() -> None:
    from stream_server.core.evaluate import compute
    from stream_server.core.labels import read_labels
    from stream_server.core.scan import Scanner

    m = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    ev = m["training"]["evaluation"]
    where: dict[str, Path] = {}
    labels: dict[str, int] = {}
    for d in m["training"]["data"]:  # the folders it was trained on, found under ../shared/data
        folder = SHARED / Path(d).name
        for name, label in read_labels(folder).items():
            where[name], labels[name] = folder / name, label
    files = ev["held_out_files"]
    assert len(files) >= 30  # that none was trained on: test_held_out_videos_share_no_identity...
    ys, ps, names = [], [], []
    with Scanner(DEFAULT_BUNDLE, providers="cpu") as scanner:
        for name in files:
            r = scanner.scan(where[name])
            if r.p_fake is not None:
                ys.append(labels[name])
                ps.append(r.p_fake)
                names.append(name)
    got = compute(ys, ps, m["threshold"])
    assert got.n == ev["scored"]
    assert got.auc == pytest.approx(ev["auc"], abs=0.02)  # the model card tells the truth
    assert got.accuracy == pytest.approx(ev["accuracy"], abs=0.05)
    assert got.auc > 0.5  # better than chance on people it never saw (the card states how much)
    # The per-family table of the card is reproduced too.
    for fam, row in ev.get("by_family", {}).items():
        if fam == "(real)":
            continue
        fk = [p for p, n in zip(ps, names, strict=True) if _family(where[n], n) == fam]
        assert len(fk) == row["fakes"]
        assert sum(fk) / len(fk) == pytest.approx(row["mean_p_fake"], abs=0.03)
    # And the card's interval around the AUC: identity groups redone from the recorded command.
    if ev.get("auc_95"):
        import shlex

        from models.dfdc import identity_groups, read_folders
        from stream_server.core.evaluate import auc_interval

        cmd = shlex.split(_train_command(m["training"]))
        rules = json.loads((ROOT / cmd[cmd.index("--groups") + 1]).read_text())
        videos = read_folders([SHARED / Path(d).name for d in m["training"]["data"]]).videos
        groups = identity_groups(videos, rules)
        lo, hi = auc_interval(ys, ps, [groups[n] for n in names])
        assert [lo, hi] == pytest.approx(ev["auc_95"], abs=0.03)


def _train_command(training: dict) -> str:
    """The deepfake-train command that split the data: the fine-tune's own (an ensemble bundle's
    reproduce command is `python -m models.ensemble`, its first member's is this)."""
    ft = training.get("encoder_finetune") or {}
    return str(ft.get("command") or training["reproduce"]["command"])


def _family(path: Path, name: str) -> str | None:
    from models.finetune import family_of

    meta = json.loads((path.parent / "metadata.json").read_text())[name]
    return family_of(meta.get("generator"), int(meta["label"] == "FAKE"))
