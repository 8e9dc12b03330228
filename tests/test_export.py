"""deepfake-export: bundles, Keras/ONNX parity, INT8, and validation errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_server.core.bundle import FORMAT, BundleError, load_bundle

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_help() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    assert "build" in r.stdout and "validate" in r.stdout
    r = run_cli("build", "--help")
    assert r.returncode == 0 and "--quantize" in r.stdout


def test_tiny_bundle_manifest_matches_contract(tiny_bundle: Path) -> None:
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["format"] == FORMAT
    for key in (
        "name",
        "version",
        "backbone",
        "feature_dim",
        "window",
        "analysis_fps",
        "threshold",
        "files",
        "encoder",
        "head",
        "detector",
    ):
        assert key in m, key
    assert m["encoder"]["input"] == {
        "name": "crops",
        "size": 64,
        "layout": "NHWC",
        "color": "RGB",
        "dtype": "uint8",
        "preprocessing": m["encoder"]["input"]["preprocessing"],
    }
    assert set(m["files"]) == {
        "encoder.onnx",
        "head.onnx",
        "face_detector.onnx",
        "face_detector_roi.onnx",
    }
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    # The tracked-face detector's boxes were mapped onto the full detector's on real faces.
    roi = m["roi_detector"]
    assert roi["kind"] == "blazeface_short_range" and roi["calibration"]["fitted_on"] >= 8
    assert 0.8 < roi["calibration"]["scale_w"] < 1.2 and abs(roi["calibration"]["dy"]) < 0.15
    assert m["parity"]["max_prob_diff_masked"] <= 1e-4


@pytest.mark.tensorflow
def test_cli_build_and_validate(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    r = run_cli(
        "build",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--name",
        "cli",
        "--version",
        "2",
        "--no-roi-detector",
    )
    assert r.returncode == 0, r.stderr
    assert "parity ok" in r.stderr  # progress is shown
    # Without the tracked-face detector the bundle is still complete (full search every frame).
    assert "roi_detector" not in json.loads((out / "manifest.json").read_text())
    assert not (out / "face_detector_roi.onnx").exists()
    r = run_cli("validate", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model"] == "cli@2"
    assert all(0 <= p <= 1 for p in report["test_run_p_fake"])
    # A second build does not silently overwrite.
    r = run_cli("build", str(tiny_model_dir), "--out", str(out))
    assert r.returncode == 1 and "not empty" in r.stderr


@pytest.mark.tensorflow
def test_face_detector_converts_to_the_same_bytes_every_time(tmp_path: Path) -> None:
    """Retraining re-exports the unchanged BlazeFace graphs into the bundle; they must come out
    byte for byte the same (tf2onnx's names count up across conversions in one process, which made
    2 MB of new detector files per committed retrain), and the renaming must not change them."""
    import onnx
    import onnxruntime as ort
    import tf2onnx

    from export.convert import OPSET, tflite_to_onnx
    from export.detector import VARIANTS, tflite_dir

    src = tflite_dir() / VARIANTS["full_range"]["tflite"]
    first = tflite_to_onnx(src, tmp_path / "a.onnx").read_bytes()
    tflite_to_onnx(tflite_dir() / VARIANTS["short_range"]["tflite"], tmp_path / "s.onnx")
    assert tflite_to_onnx(src, tmp_path / "b.onnx").read_bytes() == first

    raw, _ = tf2onnx.convert.from_tflite(str(src), opset=OPSET)
    onnx.save(raw, str(tmp_path / "raw.onnx"))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)
    ours, theirs = (ort.InferenceSession(str(tmp_path / f)) for f in ("a.onnx", "raw.onnx"))
    assert [o.name for o in ours.get_outputs()] == [o.name for o in theirs.get_outputs()]
    assert ours.get_inputs()[0].name == theirs.get_inputs()[0].name
    got = ours.run(None, {ours.get_inputs()[0].name: x})
    want = theirs.run(None, {theirs.get_inputs()[0].name: x})
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_build_rejects_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    r = run_cli("build", str(tmp_path), "--out", str(tmp_path / "b"))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "not a model directory" in r.stderr


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def _one_line_failure(bundle: Path, expect: str) -> None:
    r = run_cli("validate", str(bundle))
    assert r.returncode != 0
    line = r.stderr.strip()
    assert "\n" not in line, line
    assert expect in line, line


def test_validate_missing_file(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path)
    (b / "head.onnx").unlink()
    _one_line_failure(b, "head.onnx named by the manifest is missing")


def test_validate_hash_mismatch(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path)
    with (b / "encoder.onnx").open("ab") as f:
        f.write(b"\0")
    _one_line_failure(b, "encoder.onnx does not match its sha256")


def test_validate_wrong_input_shape(tiny_bundle: Path, tmp_path: Path) -> None:
    """A manifest that claims another crop size than the graph takes is refused."""
    from stream_server.core.bundle import write_manifest

    b = _copy(tiny_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["encoder"]["input"]["size"] = 96
    write_manifest(b, m)
    _one_line_failure(b, "encoder input shape")


def test_validate_wrong_window(tiny_bundle: Path, tmp_path: Path) -> None:
    from stream_server.core.bundle import write_manifest

    b = _copy(tiny_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["window"] = 8
    write_manifest(b, m)
    _one_line_failure(b, "head input shape")


def test_validate_roi_detector_tampered_or_mismatched(tiny_bundle: Path, tmp_path: Path) -> None:
    """The tracked-face detector is held to the same contract as the other graphs."""
    from stream_server.core.bundle import write_manifest

    b = _copy(tiny_bundle, tmp_path)
    with (b / "face_detector_roi.onnx").open("ab") as f:
        f.write(b"\0")
    _one_line_failure(b, "face_detector_roi.onnx does not match its sha256")
    b2 = tmp_path / "b2"
    shutil.copytree(tiny_bundle, b2)
    m = json.loads((b2 / "manifest.json").read_text())
    m["roi_detector"]["input_size"] = 192  # the short-range graph takes 128x128
    write_manifest(b2, m)
    _one_line_failure(b2, "roi_detector input shape")


def test_validate_not_json_and_bad_format(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path)
    (b / "manifest.json").write_text("{nope")
    _one_line_failure(b, "not valid JSON")
    (b / "manifest.json").write_text(json.dumps({"format": "something/9"}))
    _one_line_failure(b, "unsupported bundle format")
    _one_line_failure(tmp_path / "nowhere", "is not a directory")


def test_manifest_fields_are_type_checked(tiny_bundle: Path) -> None:
    from stream_server.core.bundle import parse_manifest

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    m["window"] = "twenty"
    with pytest.raises(BundleError, match="window has the wrong type"):
        parse_manifest(tiny_bundle, m)


def keras_vs_onnx(model: Any, bundle_dir: Path, crops: np.ndarray) -> dict[str, float]:
    """Parity measured here, not read from the exporter's manifest: the bundle's encoder and head
    run with onnxruntime and the Keras model run on the same crops, on a full window and on
    windows with 1, 7 and window-1 valid steps; the largest differences."""
    from stream_server.core.runtime import open_sessions

    s = open_sessions(load_bundle(bundle_dir), "cpu")
    window = load_bundle(bundle_dir).window
    emb = s.encoder.run(["embeddings"], {"crops": crops})[0]
    k_emb = np.asarray(model.encoder(crops))
    probs = 0.0
    for valid in (window, 1, 7, window - 1):
        mask = np.zeros((1, window), bool)
        mask[0, :valid] = True
        p_onnx = s.head.run(["p_fake"], {"embeddings": emb[None, :window], "mask": mask})[0]
        p_keras = np.asarray(model.head([emb[None, :window], mask]))
        probs = max(probs, abs(float(p_onnx[0, 0]) - float(p_keras[0, 0])))
    return {"embedding": float(np.abs(emb - k_emb).max()), "p_fake": probs}


def face_crop(frame: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    x, y, bw, bh = box
    crop = frame[int(y * h) : int((y + bh) * h), int(x * w) : int((x + bw) * w)]
    return np.asarray(Image.fromarray(crop).resize((size, size)))


@pytest.mark.tensorflow
def test_onnx_equals_keras_full_and_partial_windows(
    tiny_model_dir: Path, exported_tiny_bundle: Path
) -> None:
    """The served graphs give Keras' embeddings and probabilities, full window and masked."""
    from bench.media import face_box, face_frames
    from models.saving import load_model_dir

    km = load_model_dir(tiny_model_dir)
    random = np.random.default_rng(3).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    faces = np.stack([face_crop(f, face_box(i, 20), 64) for i, f in enumerate(face_frames(20))])
    for crops in (random, faces):
        diff = keras_vs_onnx(km, exported_tiny_bundle, crops)
        assert diff["embedding"] <= 1e-5 and diff["p_fake"] <= 1e-4, diff
    # The manifest's own record says no worse (it is what `validate` and the model card show).
    m = json.loads((exported_tiny_bundle / "manifest.json").read_text())
    assert m["parity"]["max_prob_diff_masked"] <= 1e-4


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.parametrize(
    ("backbone", "size", "weights"),
    [("efficientnet_lite0", 224, "imagenet"), ("inception_v3", 299, None)],
)
def test_real_backbones_export_with_parity(
    backbone: str, size: int, weights: str | None, tmp_path: Path
) -> None:
    from export.bundle_export import export_bundle
    from models.config import ModelConfig
    from models.saving import new_model

    model = new_model(ModelConfig(backbone=backbone, input_size=size, weights=weights))
    out = export_bundle(model, tmp_path / backbone)
    m = json.loads((out / "manifest.json").read_text())
    assert m["feature_dim"] == {"efficientnet_lite0": 1280, "inception_v3": 2048}[backbone]
    crops = np.random.default_rng(7).integers(0, 256, (20, size, size, 3), dtype=np.uint8)
    diff = keras_vs_onnx(model, out, crops)  # measured here, not the manifest's numbers
    assert diff["p_fake"] <= 1e-4, diff
