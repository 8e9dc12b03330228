"""`deepfake-train --bundle DIR --groups FILE --quantize int8` on a tiny generated DFDC folder
(README: "train, export, evaluate held-out identities"), run in-process; the export runs as its
own process (models/ never imports export/) under the export's own INT8 drift limits, which the
tiny trained encoder passes (the refusing path is forced in test_export_units.py).

The --groups file joins two videos that the seeded split without it puts on opposite sides, so
the rules visibly change the split: both end up in training, and the bundle's held-out files
are the split's held-out files, none of them sharing an identity with a training video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.media import face_frames
from tests.conftest import tinted

pytestmark = pytest.mark.tensorflow  # trains and exports a Keras model

N = 6  # people; one real and one fake clip each, unrelated in metadata (no "original")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.media import write_video

    d = tmp_path_factory.mktemp("train_bundle")
    base = face_frames(20, size=(320, 240))
    meta = {}
    for i in range(N):
        frames = base[i * 3 :] + base[: i * 3]
        write_video(d / f"p{i}_real.mp4", frames, fps=10)
        write_video(d / f"p{i}_fake.mp4", tinted(frames), fps=10)
        meta[f"p{i}_real.mp4"] = {"label": "REAL", "original": None, "split": "train"}
        meta[f"p{i}_fake.mp4"] = {"label": "FAKE", "original": None, "split": "train"}
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


def test_train_with_bundle_groups_and_int8(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export.validate import validate_bundle
    from models.dfdc import identity_groups, read_folder, split_by_identity
    from models.train import main
    from stream_server.core.bundle import load_bundle

    videos = read_folder(folder).videos
    plain = identity_groups(videos)
    _, val0 = split_by_identity(videos, plain, 0.25, 3)
    held0 = {v.name for v in val0}
    assert held0 and len(held0) < len(videos)
    # One held-out and one training video of the rule-less split, declared the same person.
    a = sorted(held0)[0]
    b = sorted({v.name for v in videos} - held0)[0]
    rules = tmp_path / "groups.json"
    rules.write_text(json.dumps({"same_identity": [[f"^{a}$", f"^{b}$"]]}))

    out, bundle = tmp_path / "model", tmp_path / "bundle"
    rc = main(
        [
            *("--data", str(folder), "--out", str(out), "--bundle", str(bundle)),
            *("--groups", str(rules), "--quantize", "int8", "--cache", str(tmp_path / "cache")),
            *("--backbone", "tiny_cnn", "--input-size", "64", "--weights", "none"),
            *("--window", "8", "--val-fraction", "0.25", "--seed", "3"),
            *("--encoder-epochs", "1", "--head-epochs", "1", "--head-steps", "4"),
            *("--batch-size", "8", "--finetune-blocks", "0", "--no-sbi"),
            *("--name", "tiny-trained", "--version", "9"),
        ]
    )
    assert rc == 0
    split = json.loads((out / "split.json").read_text())
    # --groups took effect: the two declared the same person are one group, on one side.
    assert split["groups"][a] == split["groups"][b]
    assert (a in split["val"]) == (b in split["val"])
    assert set(split["val"]) != held0
    train_groups = {split["groups"][n] for n in split["train"]}
    assert split["val"] and not {split["groups"][n] for n in split["val"]} & train_groups

    # --bundle: exported, verified, INT8 (--quantize int8), evaluated on exactly the held-out
    # videos, with a model card.
    m = json.loads((bundle / "manifest.json").read_text())
    assert validate_bundle(bundle, "int8")["model"] == "tiny-trained@9"
    assert m["encoder"]["precision"] == "int8" and m["encoder"]["file"] == "encoder_int8.onnx"
    import stream_server.core.bundle as sb

    monkeypatch.setattr(sb, "int8_exact_here", lambda: True)  # a VNNI CPU (see test_manifest)
    assert load_bundle(bundle).encoder.precision == "int8"
    ev = m["training"]["evaluation"]
    assert ev["held_out_files"] == sorted(split["val"])
    assert m["training"]["videos"]["val"] == len(split["val"])
    assert 0 < m["threshold"] < 1 and m["threshold"] == pytest.approx(ev["threshold"], abs=1e-4)
    card = bundle / "MODEL_CARD.md"
    assert card.is_file() and "tiny-trained 9" in card.read_text()


def test_frame_mean_head_is_exported_and_served_as_the_fine_tuned_frame_classifier(
    folder: Path, tmp_path: Path
) -> None:
    """`--head frame-mean`: the bundle's head is the encoder fine-tune's frame classifier
    averaged over the valid steps of a window (recorded as head.kind), through ONNX as in the
    server; without an encoder fine-tune to take it from, it is refused before any work."""
    import numpy as np

    from models.train import main
    from stream_server.core.runtime import session

    base = [
        *("--data", str(folder), "--cache", str(tmp_path / "cache"), "--quantize", "none"),
        *("--backbone", "tiny_cnn", "--input-size", "64", "--weights", "none"),
        *("--window", "8", "--val-fraction", "0.25", "--seed", "3", "--head", "frame-mean"),
    ]
    assert main([*base, "--out", str(tmp_path / "x")]) == 2  # no --encoder-steps
    assert not (tmp_path / "cache").exists()
    out, bundle = tmp_path / "model", tmp_path / "bundle"
    rc = main(
        [
            *base,
            *("--out", str(out), "--bundle", str(bundle), "--encoder-steps", "4"),
            *("--units", "4", "--synth", "none", "--name", "tiny-mean", "--version", "1"),
        ]
    )
    assert rc == 0
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["head"]["kind"] == "frame_mean" and "gru_units" not in m["head"]
    assert "frame-mean head" in (bundle / "MODEL_CARD.md").read_text()
    head = session(bundle / "head.onnx")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 8, m["feature_dim"])).astype("float32")
    mask = np.zeros((2, 8), bool)
    mask[0, :8], mask[1, :3] = True, True

    def p(e: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.asarray(head.run(None, {"embeddings": e, "mask": k})[0]).reshape(-1)

    one = np.zeros((1, 8), bool)
    one[0, 0] = True
    # Each valid step's own probability (alone at step 0), then their mean is the window's.
    steps = [[p(np.roll(emb[i : i + 1], -j, axis=1), one)[0] for j in range(8)] for i in (0, 1)]
    got = p(emb, mask)
    np.testing.assert_allclose(got, [np.mean(steps[0]), np.mean(steps[1][:3])], atol=1e-5)
    assert len(set(np.round(steps[0], 6))) > 1  # the steps differ, so the mean is a real test
