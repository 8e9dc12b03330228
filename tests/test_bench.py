"""The benchmark command in its tiny form, so it cannot rot (numbers are reported, not asserted)."""

from __future__ import annotations

import json
import shutil
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
    assert data["capacity"]["senders"] == "capped"
    assert [x["streams"] for x in data["capacity"]["uncapped"]["levels"]] == [1]
    assert all(x["connected"] == x["streams"] and x["analysed_fps_per_stream"] > 0 for x in levels)
    assert data["machine"]["cores"] >= 1 and "onnxruntime" in data["machine"]["versions"]
    md = (out / "quick.md").read_text()
    assert "Largest stream count within budget" in md and "faster" in md
    assert (out / "quick.png").stat().st_size > 1000
    assert list(out.glob("bench-*-quick.json"))


def test_capacity_levels_with_capped_uncapped_and_chromium_senders(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """Issue #18: capped aiortc senders send at the server's capture hints (GET /v1/config), the
    uncapped ones at 30 fps, and a Chromium level runs the real page among capped peers; every
    level splits the server's CPU per stream-second into ingest and analysis."""
    from bench import capacity

    chromium = shutil.which("chromium") is not None or Path("/usr/bin/chromium").exists()
    r = capacity.run(
        tiny_bundle, [2], 6.0, uncapped_levels=[1], chromium_levels=[2] if chromium else []
    )
    hints = r["capture_hints"]
    assert hints["max_fps"] == 10.0  # the tiny model's 5 analysed fps x 2
    assert hints["max_kbps"] == 350  # --sender-max-kbps's default
    rows = r["levels"] + r["uncapped"]["levels"] + r.get("chromium", {}).get("levels", [])
    for row in rows:
        assert row["connected"] == row["streams"], row["errors"]
        assert row["analysed_fps_per_stream"] > 0
        split = row["cpu_ms_per_stream_second_split"]
        assert split["ingest"] > 0 and split["analysis"] > 0
        roles = row["cpu_seconds_by_thread_role"]
        assert roles["event_loop"] > 0 and roles["decoder"] > 0 and roles["inference_engine"] > 0
    assert [x["sender_fps"] for x in r["levels"]] == [hints["max_fps"]]
    assert [x["sender_fps"] for x in r["uncapped"]["levels"]] == [30.0]
    assert [x["sender_kbps"] for x in r["levels"]] == [hints["max_kbps"]]
    assert [x["sender_kbps"] for x in r["uncapped"]["levels"]] == [capacity.UNCAPPED_KBPS]
    if chromium:
        page = r["chromium"]["levels"][0]["chromium"]
        assert page["encoding"]["maxFramerate"] == hints["max_fps"], page
        assert 0 < page["sent"]["frames_per_s"] <= hints["max_fps"] * 1.25, page
        assert page["encoding"]["maxBitrate"] == hints["max_kbps"] * 1000, page


def test_capped_senders_clip_is_encoded_at_the_bit_rate_cap() -> None:
    """The capped aiortc senders' H.264 clip (two seconds at the hinted 10 fps) comes out at
    about the kbit/s it was encoded for, so they send what a browser capped by maxBitrate would
    (x264's average bit rate: it came out 3-8 % over on this 2-second loop)."""
    from bench.client import clip_frames, encode_h264

    for kbps in (350, 1000):
        units = encode_h264(clip_frames(10.0), 10.0, kbps)
        assert len(units) == 20
        sent = 8 * sum(len(u) for u in units) / 2.0 / 1000
        assert 0.5 * kbps <= sent <= 1.15 * kbps, (kbps, sent)


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
