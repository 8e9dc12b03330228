"""README: "any source frame rate is sampled down to the analysis rate". Clips at 24, 29.97, 30
and 60 fps go through the file sampler and `Scanner` (deepfake-scan's code path), and a 24 fps
WebRTC stream through the live path: analysed frames are the first of each 1/5 s interval of
stream time, whatever the source rate (24 and 29.97 are not multiples of 5)."""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bench.media import face_frames, write_video
from tests.conftest import LiveServer
from tests.rtc_client import ClientPeer

ANALYSIS_FPS = 5.0  # the tiny bundle's rate
RATES = [Fraction(24), Fraction(30000, 1001), Fraction(30), Fraction(60)]


def expected_times(n_frames: int, fps: Fraction) -> list[float]:
    """Stream times of the first frame of each 1/ANALYSIS_FPS interval, frames at i / fps."""
    out, last_bucket = [], -1
    for i in range(n_frames):
        t = float(i / fps)
        bucket = math.floor(t * ANALYSIS_FPS + 1e-6)
        if bucket > last_bucket:
            out.append(t)
            last_bucket = bucket
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[Fraction, Path]:
    d = tmp_path_factory.mktemp("rates")
    out = {}
    for fps in RATES:
        n = math.floor(2 * fps)  # 2 s (just under, at 29.97)
        frames = face_frames(n, size=(192, 144))
        out[fps] = write_video(d / f"face_{float(fps):.2f}.mp4", frames, fps=fps)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("fps", RATES, ids=lambda f: f"{float(f):.2f}fps")
def test_files_at_other_frame_rates_are_analysed_at_the_analysis_rate(
    clips: dict[Fraction, Path], tiny_bundle: Path, fps: Fraction
) -> None:
    from stream_server.core.frames import sample_frames
    from stream_server.core.scan import Scanner

    clip = clips[fps]
    n = math.floor(2 * fps)
    want = expected_times(n, fps)
    assert len(want) == 10  # 2 s at 5 analysed frames a second, whatever the source rate
    got = [t for t, _ in sample_frames(clip, ANALYSIS_FPS)]
    np.testing.assert_allclose(got, want, atol=1e-3)
    # Never faster than the analysis rate, never a whole interval skipped.
    gaps = np.diff(got)
    assert (gaps > 1 / ANALYSIS_FPS - 1 / float(fps) - 1e-3).all(), gaps
    assert (gaps < 1 / ANALYSIS_FPS + 1 / float(fps) + 1e-3).all(), gaps
    with Scanner(tiny_bundle, providers="cpu") as scanner:
        result = scanner.scan(clip)
    assert result.frames_analysed == 10 and result.frames_with_face == 10
    assert result.duration_s == pytest.approx(2.0, abs=0.1)
    assert [s["second"] for s in result.timeline] == [0, 1]


def test_a_24_fps_live_stream_is_analysed_at_the_analysis_rate(live_server: LiveServer) -> None:
    async def run() -> ClientPeer:
        peer = ClientPeer(live_server.url, face_frames(48, size=(320, 240)), fps=24)
        await peer.connect()
        await peer.wait_scores(12, within=20.0)
        await peer.close()
        return peer

    scores = asyncio.run(run()).scores()
    assert len(scores) >= 12
    # Consecutive analysed frames are one 1/5 s interval apart in stream time (a 24 fps frame
    # either side of it), or k+1 intervals when the server reports k frames dropped between.
    ts = np.array([m["t"] for m in scores])
    intervals = 1 + np.diff([m["dropped"] for m in scores])
    per_interval = np.diff(ts) / intervals
    assert 0.15 <= float(np.median(per_interval)) <= 0.25, (np.diff(ts), intervals)
    assert (np.diff(ts) > intervals * 0.2 - 1 / 24 - 1e-3).all(), (np.diff(ts), intervals)
    # Every analysed time is the time of one of the 24 fps frames sent.
    frames = np.round((ts - ts[0]) * 24)
    assert np.allclose((ts - ts[0]) * 24, frames, atol=0.02), ts
