"""export/quantize and export/parity tested directly, `deepfake-export build --quantize int8` run
as a user runs it (both outcomes forced, so neither can pass by accident), and
`models/evaluation.py` run on a tiny generated bundle and labelled folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export.bundle_export import ONNX_NAMES
from stream_server.core.bundle import load_bundle


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _float_convs(path: Path) -> list[str]:
    """Convolutions of an ONNX graph whose weight is an initializer, not a DequantizeLinear
    output (i.e. left fp32 by the quantizer), in graph order."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name for i in g.initializer}
    return [n.name for n in g.node if n.op_type == "Conv" and n.input[1] in inits]


def test_quantized_encoder_is_qdq_and_its_drift_is_measured(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    import onnx

    from export.quantize import check_drift, measure_drift, quantize_encoder, session

    out = tmp_path / "int8.onnx"
    kept = quantize_encoder(tiny_bundle / "encoder.onnx", out, ONNX_NAMES["encoder_in"], crops(24))
    assert kept == ()
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    assert _float_convs(out) == []  # every convolution reads dequantized INT8 weights
    # With the stem kept fp32, its first two convolutions read their fp32 weights directly.
    stem = tmp_path / "stem.onnx"
    kept = quantize_encoder(
        tiny_bundle / "encoder.onnx", stem, ONNX_NAMES["encoder_in"], crops(24), float_stem=True
    )
    assert len(kept) == 2 and _float_convs(stem) == list(kept)
    fp32, int8 = session(tiny_bundle / "encoder.onnx"), session(out)
    head = session(tiny_bundle / "head.onnx")
    window = load_bundle(tiny_bundle).window
    d = measure_drift(fp32, int8, head, ONNX_NAMES, crops(16, seed=1), window, 24)
    assert -1 <= d.min_cosine <= d.mean_cosine <= 1 + 1e-6
    assert 0 <= d.max_prob_change <= 1
    assert (d.calibration_crops, d.evaluation_crops) == (24, 16)
    assert d.to_dict()["bounds"] == {"min_cosine": 0.98, "max_prob_change": 0.05}
    # The same encoder against itself does not drift at all.
    same = measure_drift(fp32, fp32, head, ONNX_NAMES, crops(16, seed=1), window, 0)
    assert same.min_cosine == pytest.approx(1.0, abs=1e-5) and same.max_prob_change == 0.0
    check_drift(same)


@pytest.mark.parametrize(
    ("min_cos", "prob", "refused"),
    [(0.99, 0.01, False), (0.98, 0.05, False), (0.97, 0.01, True), (0.99, 0.06, True)],
)
def test_drift_bounds(min_cos: float, prob: float, refused: bool) -> None:
    from export.convert import ExportError
    from export.quantize import Drift, check_drift

    d = Drift(min_cos, min_cos, prob, 8, 8, {})
    if refused:
        with pytest.raises(ExportError, match="drifts too far"):
            check_drift(d)
    else:
        check_drift(d)


class Shifted:
    """An onnxruntime session whose outputs are moved by `by` (a broken conversion)."""

    def __init__(self, inner: Any, by: float) -> None:
        self.inner, self.by = inner, by

    def run(self, names: Any, feeds: Any) -> list[np.ndarray]:
        return [o + self.by for o in self.inner.run(names, feeds)]


@pytest.mark.tensorflow
def test_parity_passes_the_real_conversion_and_catches_a_broken_one(
    tiny_model_dir: Path, exported_tiny_bundle: Path
) -> None:
    from export.convert import ExportError
    from export.parity import PROB_TOLERANCE, _windows, check_parity
    from export.quantize import session
    from models.saving import load_model_dir

    model = load_model_dir(tiny_model_dir)
    window = load_bundle(exported_tiny_bundle).window
    sessions = {
        "encoder": session(exported_tiny_bundle / "encoder.onnx"),
        "head": session(exported_tiny_bundle / "head.onnx"),
    }
    inputs = {"random": crops(12), "more": crops(12, seed=5)}
    report = check_parity(model, sessions, inputs, window, ONNX_NAMES)
    assert report.cases == 2
    assert report.max_embedding_diff <= 1e-4
    assert max(report.max_prob_diff_full, report.max_prob_diff_masked) <= PROB_TOLERANCE
    broken = {**sessions, "head": Shifted(sessions["head"], 10 * PROB_TOLERANCE)}
    with pytest.raises(ExportError, match="disagree on random inputs"):
        check_parity(model, broken, inputs, window, ONNX_NAMES)
    # The windows: 4 fully valid, then the same 4 with the first 1, w/3, w-1 and w steps valid.
    idx, masks = _windows(12, window, np.random.default_rng(0))
    assert idx.shape == masks.shape == (8, window)
    assert (idx[:4] == idx[4:]).all() and masks[:4].all()
    assert masks[4:].sum(1).tolist() == [1, window // 3, window - 1, window]


@pytest.mark.tensorflow
@pytest.mark.parametrize("bounds", ["relaxed", "impossible", "stem"])
def test_export_cli_quantize_int8(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounds: str
) -> None:
    """`deepfake-export build --quantize int8`: with bounds any INT8 encoder meets it must
    quantize (and the bundle serves INT8, FP32 on request); with bounds none can meet it must
    refuse with exit 1 and write nothing."""
    import export.quantize as q
    from export.cli import main
    from export.validate import validate_bundle

    if bounds in ("relaxed", "stem"):
        monkeypatch.setattr(q, "MIN_COSINE", -1.0)
        monkeypatch.setattr(q, "MAX_PROB_CHANGE", 1.0)
    else:
        monkeypatch.setattr(q, "MIN_COSINE", 1.5)
    if bounds == "stem":  # fault injection: the fully quantized encoder drifts too far
        import export.bundle_export as be

        def refuse_full_int8(d: q.Drift) -> None:
            if not d.float_nodes:
                raise q.DriftError("INT8 encoder drifts too far (injected)")
            q.check_drift(d)

        monkeypatch.setattr(be, "check_drift", refuse_full_int8)
    out = tmp_path / "int8"
    rc = main(["build", str(tiny_model_dir), "--out", str(out), "--quantize", "int8"])
    if bounds == "impossible":
        assert rc == 1 and not out.exists()
        assert not list(tmp_path.iterdir())  # no temporary directory left behind either
        return
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    enc = m["encoder"]
    assert enc["precision"] == "int8" and enc["file"] == "encoder_int8.onnx"
    assert enc["alternatives"] == {"fp32": "encoder.onnx"}
    assert enc["quantization"]["bounds"] == {"min_cosine": -1.0, "max_prob_change": 1.0}
    assert enc["quantization"]["calibration_crops"] > 0
    # Full INT8 first; only when it drifts is the stem kept fp32 (and the manifest says so).
    assert len(enc["quantization"]["float_nodes"]) == (2 if bounds == "stem" else 0)
    assert _float_convs(out / "encoder_int8.onnx") == enc["quantization"]["float_nodes"]
    import stream_server.core.bundle as sb

    monkeypatch.setattr(sb, "int8_exact_here", lambda: True)  # a VNNI CPU (see test_manifest)
    assert load_bundle(out).encoder.precision == "int8"
    assert load_bundle(out, precision="fp32").encoder.file == "encoder.onnx"
    assert validate_bundle(out, "int8")


@pytest.mark.tensorflow
def test_export_int8_only_ships_the_int8_encoder_alone(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`--int8-only` (the two-encoder default bundle uses it to stay small): the INT8 encoder is
    measured against fp32 as always, then the fp32 file is left out; asking the bundle for fp32
    is a clear error. Without --quantize int8 it is refused and nothing is written."""
    import export.quantize as q
    from export.cli import main
    from export.validate import validate_bundle
    from stream_server.core.bundle import BundleError

    monkeypatch.setattr(q, "MIN_COSINE", -1.0)
    monkeypatch.setattr(q, "MAX_PROB_CHANGE", 1.0)
    out = tmp_path / "int8"
    assert main(["build", str(tiny_model_dir), "--out", str(out), "--int8-only"]) == 1
    assert "--int8-only needs --quantize int8" in capsys.readouterr().err and not out.exists()
    argv = ["build", str(tiny_model_dir), "--out", str(out), "--quantize", "int8", "--int8-only"]
    assert main(argv) == 0
    enc = json.loads((out / "manifest.json").read_text())["encoder"]
    assert enc["file"] == "encoder_int8.onnx" and "alternatives" not in enc
    assert enc["quantization"]["evaluation_crops"] > 0  # measured against fp32 first
    assert not (out / "encoder.onnx").exists()
    assert validate_bundle(out, "int8")
    with pytest.raises(BundleError, match="bundle has no fp32 encoder"):
        load_bundle(out, precision="fp32")


def test_evaluation_on_a_tiny_bundle_and_folder(
    tiny_bundle: Path, dfdc_folder: Path, tmp_path: Path
) -> None:
    """models.evaluation.evaluate_bundle scans every held-out video through the serving path,
    chooses the threshold at the equal-error point, records it in the manifest (the bundle still
    loads: hashes rewritten) and the model card is written from it."""
    from models.dfdc import read_folder
    from models.evaluation import evaluate_bundle, write_model_card
    from stream_server.core.evaluate import eer_threshold
    from stream_server.core.scan import Scanner

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    videos = read_folder(dfdc_folder).videos
    assert len(videos) == 7  # 3 real, 3 fake, 1 without a face
    result = evaluate_bundle(bundle, videos, tmp_path)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["metrics"] == result["metrics"]
    rows = {r["video"]: r for r in result["videos"]}
    assert set(rows) == {v.name for v in videos}
    assert result["unscored"] == ["empty_room.mp4"]
    scored = [r for r in result["videos"] if r.get("p_fake") is not None]
    assert len(scored) == 6 and result["metrics"]["n"] == 6
    thr = round(eer_threshold([r["label"] for r in scored], [r["p_fake"] for r in scored]), 4)
    assert result["metrics"]["threshold"] == thr
    for r in scored:  # verdicts at the chosen threshold, by the rule
        assert r["verdict"] == ("fake" if r["p_fake"] >= thr else "real"), r
    # The per-video scores are the scanner's (one code path).
    with Scanner(tiny_bundle, providers="cpu") as scanner:
        p = scanner.scan(dfdc_folder / "person0_fake.mp4").p_fake
    assert rows["person0_fake.mp4"]["p_fake"] == pytest.approx(p, abs=1e-6)
    assert result["by_family"]["(real)"]["reals"] == 3
    assert result["by_family"]["other"]["fakes"] == 3
    b = load_bundle(bundle)
    assert b.threshold == thr
    ev = json.loads((bundle / "manifest.json").read_text())["training"]["evaluation"]
    assert ev["held_out_videos"] == 7 and ev["scored"] == 6
    assert ev["held_out_files"] == sorted(rows)
    assert (bundle / "roc.png").stat().st_size > 1000
    card = write_model_card(bundle, tmp_path, "deepfake-train --tiny", 1.0)
    text = card.read_text() if card.is_file() else (card / "MODEL_CARD.md").read_text()
    assert "# Model card: tiny-test 1" in text


def test_export_config_refuses_an_unknown_quantization_before_any_work() -> None:
    from export.bundle_export import ExportConfig
    from export.convert import ExportError

    assert ExportConfig().quantize is None and ExportConfig(quantize="int8").quantize == "int8"
    with pytest.raises(ExportError, match="unknown quantization 'int4'"):
        ExportConfig(quantize="int4")
