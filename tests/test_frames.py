"""The one frame source (stream_server/core/frames.py): sampling, the downscale rule, and proof that
training, offline scans and live streams cut byte-identical crops from the same video."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bench.media import face_frames, faceless_frames, write_video
from stream_server.core.frames import (
    MAX_FRAME_SIDE,
    FrameSource,
    analysis_size,
    sample_frames,
    to_rgb,
)
from tests.timing import scaled


def _frames(n: int, fps: int, first_pts: int = 0, size: tuple[int, int] = (64, 48)) -> list[Any]:
    out = []
    for i, f in enumerate(faceless_frames(n, size=size)):
        vf = av.VideoFrame.from_ndarray(f, format="rgb24")
        vf.pts = first_pts + i
        vf.time_base = Fraction(1, fps)
        out.append(vf)
    return out


def test_sampling_5fps_from_30fps_relative_to_first_frame() -> None:
    # 3 s at 30 fps whose timestamps start at 1.5 s: times are relative to the first frame.
    src = FrameSource(_frames(90, 30, first_pts=45), 5.0)
    got = list(src)
    times = [t for t, _ in got]
    np.testing.assert_allclose(times, np.arange(15) * 0.2, atol=1e-9)
    assert (src.decoded, src.sampled, src.too_long) == (90, 15, False)
    assert src.last_t == pytest.approx(89 / 30)
    assert all(rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3) for _, rgb in got)


def test_sampling_from_a_file_and_the_duration_limit(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "c.mp4", faceless_frames(90, size=(64, 48)), fps=30)
    times = [t for t, _ in sample_frames(clip, 5.0)]
    np.testing.assert_allclose(times, np.arange(15) * 0.2, atol=1e-6)
    with av.open(str(clip)) as c:  # an open container works as well
        assert len(list(sample_frames(c, 5.0))) == 15
    src = FrameSource(_frames(90, 30), 5.0, max_seconds=1.0)
    times = [t for t, _ in src]
    assert src.too_long and src.decoded == 32  # frame 31 (1.033 s) is past the limit
    np.testing.assert_allclose(times, np.arange(6) * 0.2, atol=1e-9)
    assert src.last_t == pytest.approx(1.0)


def test_downscale_rule() -> None:
    assert MAX_FRAME_SIDE == 1280
    assert analysis_size(1920, 1080) == (1280, 720)
    assert analysis_size(1080, 1920) == (720, 1280)
    assert analysis_size(1280, 720) == (1280, 720)  # at the limit: untouched
    assert analysis_size(640, 480) == (640, 480)
    assert analysis_size(3840, 2160, 640) == (640, 360)
    assert analysis_size(5000, 3) == (1280, 2)  # never below 2 px
    # Serving's settings all default to the same rule.
    from stream_server.core.scan import ScanLimits
    from stream_server.shell.settings import Settings

    assert Settings().max_frame_side == ScanLimits().max_frame_side == MAX_FRAME_SIDE

    (big,) = _frames(1, 30, size=(1920, 1080))
    rgb = to_rgb(big.reformat(format="yuv420p"))
    assert rgb.shape == (720, 1280, 3) and rgb.dtype == np.uint8
    # Scaled in the decoder's pixel format, then converted (the server's conversion until now).
    yuv = big.reformat(format="yuv420p")
    np.testing.assert_array_equal(
        rgb, yuv.reformat(width=1280, height=720).to_ndarray(format="rgb24")
    )
    (small,) = _frames(1, 30, size=(640, 480))
    np.testing.assert_array_equal(to_rgb(small), small.to_ndarray(format="rgb24"))


# -- training, scan and live cut the same crops from a 1080p clip ---------------------------------


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 s of a face at 1920x1080, 10 fps: 15 frames due at 5 analysed frames/s.
    return write_video(
        tmp_path_factory.mktemp("hd") / "face_1080p.mp4",
        face_frames(30, size=(1920, 1080)),
        fps=10,
    )


class RecordingEngine:
    """The real engine, keeping a copy of every face crop the server sends it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.crops: list[np.ndarray] = []

    def submit(self, job: Any) -> Future[np.ndarray]:
        self.crops.extend(c.copy() for c in job.crops)
        return self.engine.submit(job)


@pytest.fixture(scope="module")
def served(tiny_bundle: Path) -> Any:
    from stream_server.core.bundle import load_bundle
    from stream_server.core.engine import InferenceEngine
    from stream_server.core.faces import Detectors
    from stream_server.core.runtime import open_sessions

    bundle = load_bundle(tiny_bundle)
    sessions = open_sessions(bundle, "cpu")
    engine = InferenceEngine(bundle, sessions, max_batch=1)
    engine.start()
    try:
        yield bundle, Detectors.for_bundle(bundle, sessions), engine
    finally:
        engine.stop()


def _live_run(path: Path, bundle: Any, detector: Any, engine: Any) -> tuple[list, list]:
    """Feed the file's decoded frames to a StreamAnalyzer (the WebRTC/RTSP path), waiting for
    each taken frame to be analysed so none is dropped; returns (analysed RGB, messages)."""
    from stream_server.core.metrics import Metrics
    from stream_server.core.pipeline import FramePipeline
    from stream_server.core.stream import StreamAnalyzer

    rgbs: list[np.ndarray] = []
    msgs: list[Any] = []

    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            stream = StreamAnalyzer(
                "hd",
                FramePipeline(bundle, detector, engine),
                fps=bundle.analysis_fps,
                metrics=Metrics(),
                executor=pool,
                emit=msgs.append,
            )
            stream.taps.append(lambda rgb, result, msg: rgbs.append(rgb.copy()))
            stream.start()
            try:
                taken = 0
                with av.open(str(path)) as c:
                    for frame in c.decode(video=0):
                        if not stream.offer_frame(frame):
                            continue
                        taken += 1  # each taken frame ends in one message (score or error)
                        deadline = time.monotonic() + scaled(30)
                        while len(msgs) < taken:
                            assert time.monotonic() < deadline, "analysis stalled"
                            await asyncio.sleep(0.005)
            finally:
                await stream.close()

    asyncio.run(run())
    return rgbs, msgs


def test_training_scan_and_live_cut_identical_crops_from_1080p(hd_clip: Path, served: Any) -> None:
    from models.extract import extract_video
    from stream_server.core.faces import FaceStage, crop_face
    from stream_server.core.scan import scan_file

    bundle, detector, engine = served
    size, fps = bundle.encoder.input_size, bundle.analysis_fps
    assert fps == 5.0

    # The frames every path analyses: downscaled to 1280x720.
    frames = list(sample_frames(hd_clip, fps))
    assert len(frames) == 15
    assert all(rgb.shape == (720, 1280, 3) for _, rgb in frames)

    # Training.
    train = extract_video(hd_clip, detector, bundle.crop, size, fps)
    assert train.error is None and train.sampled == 15 and len(train.crops) == 15
    np.testing.assert_allclose(train.times, [t for t, _ in frames], atol=1e-6)

    # Offline scan (deepfake-scan and POST /v1/analyze).
    rec = RecordingEngine(engine)
    result = scan_file(hd_clip, bundle, detector, rec)  # type: ignore[arg-type]
    assert result.frames_analysed == 15 and result.frames_with_face == 15 and result.faces == 1
    scan_crops = np.stack(rec.crops)
    assert np.array_equal(scan_crops, train.crops)

    # Live (WebRTC / RTSP): its own intake, the same conversion.
    live = RecordingEngine(engine)
    rgbs, msgs = _live_run(hd_clip, bundle, detector, live)
    assert len(rgbs) == 15
    assert all(rgb.shape == (720, 1280, 3) for rgb in rgbs)
    for rgb, (_, expected) in zip(rgbs, frames, strict=True):
        assert np.array_equal(rgb, expected)
    assert [m.t for m in msgs if m.type == "score"] == pytest.approx([t for t, _ in frames])
    assert np.array_equal(np.stack(live.crops), train.crops)

    # The drift this removes: crops cut from the full 1080p pixels are other pixels.
    stage = FaceStage(detector)
    full = []
    with av.open(str(hd_clip)) as c:
        for frame in c.decode(video=0):
            if len(full) == 1:
                break
            rgb = frame.to_ndarray(format="rgb24")
            assert rgb.shape == (1080, 1920, 3)
            (_, det), *_ = stage.step(rgb)[0]
            full.append(crop_face(rgb, det.box, bundle.crop, size))
    assert not np.array_equal(full[0], train.crops[0])
