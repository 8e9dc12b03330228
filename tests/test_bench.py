"""The benchmark command in its tiny form, so it cannot rot (numbers are reported, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.tensorflow  # the prototype baseline is Keras InceptionV3
def test_quick_benchmark_writes_results(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--bundle", str(tiny_bundle), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "quick.json").read_text())
    s = data["stages"]
    for key in (
        "decode_640x480",
        "face_detection_640x480",
        "face_detection_roi_640x480",
        "encoder",
        "head",
        "full_per_frame_path",
        "engine_vs_onnxruntime",
    ):
        assert key in s
    assert set(s["encoder"]["fp32"]) == {"batch_1", "batch_4", "batch_8", "batch_16"}
    assert data["baseline"]["speedup"] > 0
    levels = data["capacity"]["levels"]
    assert [x["streams"] for x in levels] == [1, 2]
    assert data["capacity"]["client_codec"] == "h264"  # pre-encoded clip, real H.264 decode
    assert all(x["connected"] == x["streams"] and x["analysed_fps_per_stream"] > 0 for x in levels)
    assert data["machine"]["cores"] >= 1 and "onnxruntime" in data["machine"]["versions"]
    md = (out / "quick.md").read_text()
    assert "Largest stream count within budget" in md and "faster" in md
    assert (out / "quick.png").stat().st_size > 1000
    assert list(out.glob("bench-*-quick.json"))


def test_quick_soak_and_overload_write_results(tiny_bundle: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--quick",
            "--bundle",
            str(tiny_bundle),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "soak-quick.json").read_text())
    assert data["soak"]["cycles"] == 20 and data["soak"]["scored_cycles"] >= 18
    assert data["soak"]["streams_after"] == 0
    assert data["soak"]["after"]["threads"] <= data["soak"]["before"]["threads"] + 2
    assert data["overload"]["scores"] > 0 and data["healthy_after"]
