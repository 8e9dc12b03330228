"""`python -m models.ensemble`: the default bundle averages two fine-tuned frame classifiers.

The Keras tests build two tiny members with different weights, average them into a model
directory, export it with `deepfake-export build` and check that onnxruntime serves exactly the
mean of the members' frame probabilities over a window's valid steps. The others check the
leave-one-family-out arithmetic on frame_eval.json files and the command's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.config import ModelConfig
from models.ensemble import average_rows, lofo, main, normalised

CFG = ModelConfig(backbone="tiny_cnn", input_size=64, weights=None, window=6, head="frame_mean")


def _member(run: Path, seed: int, whole: bool) -> Any:
    """A deepfake-train-shaped run dir: checkpoints/finetune.weights.h5 (+ a model dir)."""
    import keras

    from models.cnn_gru import build_encoder
    from models.finetune import frame_classifier
    from models.saving import new_model, save_model_dir

    keras.utils.set_random_seed(seed)
    clf = frame_classifier(build_encoder(CFG))
    (run / "checkpoints").mkdir(parents=True)
    clf.save_weights(run / "checkpoints" / "finetune.weights.h5")
    if whole:
        model = new_model(CFG)
        model.training = {"data": ["somewhere"], "videos": {"train": 2, "val": 2}}
        save_model_dir(model, run)
        (run / "split.json").write_text(json.dumps({"train": [], "val": [], "groups": {}}))
    return clf


@pytest.mark.tensorflow
def test_ensemble_model_scores_the_mean_of_its_members_through_onnx(tmp_path: Path) -> None:
    from export.cli import main as export_main
    from models.saving import load_model_dir
    from stream_server.core.runtime import session

    clfs = [_member(tmp_path / "a", 1, True), _member(tmp_path / "b", 2, False)]
    out = tmp_path / "ens"
    assert main(["build", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    model = load_model_dir(out)  # saved and loaded back like any model directory
    assert model.feature_dim == 64 and model.config.head == "frame_mean"
    assert len(model.training["ensemble"]["members"]) == 2

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    frame_p = [np.asarray(c(crops, training=False)).reshape(-1) for c in clfs]
    assert abs(frame_p[0] - frame_p[1]).max() > 1e-3  # the members differ
    mask = np.array([[True] * 6, [True] * 4 + [False] * 2])
    want = [(frame_p[0][:k].mean() + frame_p[1][:k].mean()) / 2 for k in (6, 4)]

    emb = np.asarray(model.encoder(crops, training=False))
    window = np.stack([emb, emb])
    keras_p = np.asarray(model.head([window, mask], training=False)).reshape(-1)
    np.testing.assert_allclose(keras_p, want, atol=1e-5)

    bundle = tmp_path / "bundle"
    assert export_main(["build", str(out), "--out", str(bundle), "--version", "1"]) == 0
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["feature_dim"] == 64 and m["head"]["kind"] == "frame_mean"
    enc, head = session(bundle / "encoder.onnx"), session(bundle / "head.onnx")
    e = np.asarray(enc.run(None, {"crops": crops})[0])
    served = head.run(None, {"embeddings": np.stack([e, e]).astype("float32"), "mask": mask})
    np.testing.assert_allclose(np.asarray(served[0]).reshape(-1), want, atol=1e-4)


@pytest.mark.tensorflow
def test_weights_tilt_the_mean(tmp_path: Path) -> None:
    from models.saving import load_model_dir

    clfs = [_member(tmp_path / "a", 1, True), _member(tmp_path / "b", 2, False)]
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    out = tmp_path / "ens"
    assert main(["build", *runs, "--out", str(out), "--weights", "3", "1"]) == 0
    model = load_model_dir(out)
    crops = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    p = [np.asarray(c(crops, training=False)).reshape(-1) for c in clfs]
    emb = np.asarray(model.encoder(crops, training=False))[None]
    window = emb[:, [0, 1, 0, 1, 0, 1]]
    got = np.asarray(model.head([window, np.ones((1, 6), bool)], training=False)).reshape(-1)
    mean = (0.75 * p[0] + 0.25 * p[1]).mean()
    # The window holds crops 0, 1, then copies of them: 3 of each, so the mean of both crops.
    np.testing.assert_allclose(got, [mean], atol=1e-5)


def test_build_refuses_what_it_cannot_average(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    assert main(["build", str(tmp_path / "a"), "--out", str(tmp_path / "o")]) == 2
    assert "two or more runs" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(["build", *runs, "--out", str(tmp_path / "o")]) == 2
    assert "not a whole model directory: config.json is missing" in capsys.readouterr().err
    assert main(["build", *runs, "--out", str(tmp_path / "o"), "--bundle", "x"]) == 2
    assert "--bundle needs --data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="2 weights for 3 runs"):
        normalised([1, 1], 3)
    with pytest.raises(ValueError, match="not all 0"):
        normalised([0, 0], 2)
    assert normalised(None, 4) == [0.25] * 4


def _eval(rows: list[tuple[str, int, str | None, float, bool]]) -> dict[str, Any]:
    return {
        "rows": [
            {"video": v, "label": y, "family": f, "p_fake": p, "excluded_family": x}
            for v, y, f, p, x in rows
        ],
        "fine_tune": {"steps": 10},
    }


def test_lofo_averages_each_left_out_run_with_the_fixed_run(tmp_path: Path) -> None:
    """Stage 1 ranks the DFL fakes right and the talking heads wrong; the run without DFL the
    other way round: their mean ranks both families' fakes above every real."""
    stage1 = tmp_path / "synth"
    stage1.mkdir()
    reals = [("r1", 0, None, 0.2, False), ("r2", 0, None, 0.3, False)]
    (stage1 / "frame_eval.json").write_text(
        json.dumps(
            _eval(
                [
                    *reals,
                    ("dfl1", 1, "deepfacelive", 0.9, True),
                    ("dfl2", 1, "deepfacelive", 0.8, True),
                    ("th1", 1, "talking_head", 0.1, False),
                    ("unused", 1, "reenactment", 0.5, True),  # not in the lofo run: dropped
                ]
            )
        )
    )
    lofo_dir = tmp_path / "lofo" / "deepfacelive"
    lofo_dir.mkdir(parents=True)
    (lofo_dir / "frame_eval.json").write_text(
        json.dumps(
            _eval(
                [
                    ("r1", 0, None, 0.4, False),
                    ("r2", 0, None, 0.1, False),
                    ("dfl1", 1, "deepfacelive", 0.2, True),
                    ("dfl2", 1, "deepfacelive", 0.3, True),
                    ("th1", 1, "talking_head", 0.9, False),
                ]
            )
        )
    )
    first = json.loads((stage1 / "frame_eval.json").read_text())
    second = json.loads((lofo_dir / "frame_eval.json").read_text())
    rows = average_rows([first, second], [0.5, 0.5])
    assert {r["video"]: round(r["p_fake"], 6) for r in rows} == {
        "r1": 0.3,
        "r2": 0.2,
        "dfl1": 0.55,
        "dfl2": 0.55,
        "th1": 0.5,
    }
    result = lofo([stage1], tmp_path / "lofo", tmp_path / "out")
    dfl = result["families"]["deepfacelive"]
    assert dfl["fakes"] == 2 and dfl["reals"] == 2 and dfl["auc"] == 1.0
    assert dfl["held_out_auc_other_families"] == 1.0  # r1, r2 against th1
    assert result["mean_auc"] == 1.0
    # Either run alone: the left-out family below the reals (stage 1 alone: DFL fine, TH not).
    alone = json.loads((tmp_path / "lofo" / "deepfacelive" / "frame_eval.json").read_text())
    assert max(r["p_fake"] for r in alone["rows"] if r["family"] == "deepfacelive") < 0.4
    written = json.loads((tmp_path / "out" / "lofo.json").read_text())
    assert written["families"].keys() == {"deepfacelive"}
    assert written["missing"] == ["dfdc", "faceswap", "talking_head", "reenactment"]
    from models.evaluation import lofo_lines

    assert any("Not measured (no leave-one-out run): dfdc" in x for x in lofo_lines(written))


def test_lofo_without_runs_is_an_error(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "synth").mkdir()
    argv = ["lofo", "--out", str(tmp_path / "o"), "--fixed", str(tmp_path / "synth")]
    assert main([*argv, "--lofo", str(tmp_path / "nothing")]) == 2
    assert "has no leave-one-out runs" in capsys.readouterr().err


@pytest.mark.tensorflow
def test_build_with_bundle_exports_and_scans_the_first_runs_held_out_videos(
    tmp_path: Path, dfdc_folder: Path
) -> None:
    """`build --bundle B --data D`: the ensemble exported by deepfake-export, its held-out videos
    exactly the first run's split.json ones, scanned through the serving path,
    and the model card names both members."""
    _member(tmp_path / "a", 1, True)
    _member(tmp_path / "b", 2, False)
    val = ["person1_fake.mp4", "person1_real.mp4", "person2_fake.mp4", "person2_real.mp4"]
    split = {"train": ["person0_fake.mp4", "person0_real.mp4"], "val": val, "groups": {}}
    (tmp_path / "a" / "split.json").write_text(json.dumps(split))
    bundle = tmp_path / "bundle"
    argv = ["build", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ens")]
    argv += ["--bundle", str(bundle), "--data", str(dfdc_folder), "--quantize", "none"]
    assert main([*argv, "--version", "2", "--name", "ens"]) == 0

    m = json.loads((bundle / "manifest.json").read_text())
    assert m["encoder"]["precision"] == "fp32" and m["feature_dim"] == 64  # 2 x 32-d
    ev = m["training"]["evaluation"]
    assert ev["held_out_files"] == val and ev["scored"] == 4 and 0 < ev["threshold"] < 1
    assert len(m["training"]["ensemble"]["members"]) == 2
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "ens 2" in card and str(tmp_path / "b") in card


def test_export_argv_is_the_training_export_with_int8_only() -> None:
    from models.train import export_argv

    kw = {"name": "n", "version": "1", "detector": "full_range", "fps": 8.0, "margin": 0.3}
    plain = export_argv(Path("m"), Path("b"), quantize="int8", calibration=Path("c.npy"), **kw)
    assert plain[:4] == ["build", "m", "--out", "b"]
    assert plain[-5:] == ["--quantize", "int8", "--int8-fallback", "--calibration", "c.npy"]
    assert ["--analysis-fps", "8.0"] == plain[plain.index("--analysis-fps") :][:2]
    only = export_argv(
        Path("m"), Path("b"), quantize="int8", calibration=None, int8_only=True, **kw
    )
    assert only[-4:] == ["--quantize", "int8", "--int8-fallback", "--int8-only"]
    none = export_argv(
        Path("m"), Path("b"), quantize="none", calibration=None, int8_only=True, **kw
    )
    assert "--quantize" not in none and "--int8-only" not in none
