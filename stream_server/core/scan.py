"""Offline scanning: a video file is one more source feeding the same face stage, engine, windows
and head as a live stream, sampled at the bundle's analysis rate."""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from stream_server.core.bundle import Bundle
from stream_server.core.engine import InferenceEngine
from stream_server.core.faces import Detectors, FaceDetector
from stream_server.core.frames import (
    MAX_FRAME_PIXELS,
    MAX_FRAME_SIDE,
    FrameSource,
    FrameTooLarge,
    decode_video,
    pixel_options,
)
from stream_server.core.pipeline import FramePipeline, FrameResult


class ScanError(Exception):
    """The file cannot be analysed; one line saying why. `too_long` marks the duration limit,
    `too_large` the frame size limit."""

    def __init__(self, message: str, too_long: bool = False, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_long = too_long
        self.too_large = too_large


def av_reason(exc: BaseException) -> str:
    """What went wrong, in words (never an exception class name): FFmpeg's own description
    ("invalid data found when processing input"), or "timed out"."""
    if (
        isinstance(exc, av.TimeoutError | TimeoutError)
        or getattr(exc, "errno", None) == errno.ETIMEDOUT
    ):
        return "timed out"
    if isinstance(exc, UnicodeDecodeError):
        return "its name or metadata is not valid text"
    text = str(getattr(exc, "strerror", None) or (str(exc).splitlines() or [""])[0])
    text = str(text).strip().rstrip(".")
    return (text[:1].lower() + text[1:])[:160] if text else "unreadable"


class ScanCancelled(ScanError):
    """The scan was stopped from outside (`stop` returned True): shutdown or a cancelled request."""


@dataclass(frozen=True)
class ScanLimits:
    max_seconds: float = 600.0
    max_frame_side: int = MAX_FRAME_SIDE
    max_frame_pixels: int | None = MAX_FRAME_PIXELS  # None: no limit


@dataclass
class ScanResult:
    path: str
    verdict: str  # real | fake | no_face
    p_fake: float | None
    duration_s: float
    frames_analysed: int
    frames_with_face: int
    faces: int  # distinct face tracks
    timeline: list[dict[str, Any]] = field(default_factory=list)  # one entry per second
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "verdict": self.verdict,
            "p_fake": None if self.p_fake is None else round(self.p_fake, 6),
            "duration_s": round(self.duration_s, 3),
            "frames_analysed": self.frames_analysed,
            "frames_with_face": self.frames_with_face,
            "faces": self.faces,
            "timeline": self.timeline,
            "model": self.model,
        }


def video_verdict(results: list[FrameResult], threshold: float) -> tuple[str, float | None]:
    """The video's p_fake is the mean over frames with a settled verdict (else any scored frame)."""
    ready = [r.p_fake for r in results if r.label in ("real", "fake") and r.p_fake is not None]
    scored = ready or [r.p_fake for r in results if r.p_fake is not None]
    if not scored:
        return "no_face", None
    p = float(np.mean(scored))
    return ("fake" if p >= threshold else "real"), p


def timeline(
    times: list[float], results: list[FrameResult], duration: float
) -> list[dict[str, Any]]:
    out = []
    for sec in range(max(1, math.ceil(duration))):
        ps = [
            r.p_fake
            for t, r in zip(times, results, strict=True)
            if sec <= t < sec + 1 and r.p_fake is not None
        ]
        labels: list[str] = [
            r.label for t, r in zip(times, results, strict=True) if sec <= t < sec + 1
        ]
        out.append(
            {
                "second": sec,
                "p_fake": None if not ps else round(float(np.mean(ps)), 6),
                "label": max(set(labels), key=labels.count) if labels else "no_frames",
            }
        )
    return out


def scan_file(
    path: Path,
    bundle: Bundle,
    detector: Detectors | FaceDetector,
    engine: InferenceEngine,
    limits: ScanLimits = ScanLimits(),
    fps: float | None = None,
    progress: Callable[[float], None] | None = None,
    name: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> ScanResult:
    """Analyse a video file; `name` is what error messages call it (default: its file name).
    `stop` is asked before each analysed frame; when it returns True the scan raises
    ScanCancelled."""
    name = name or Path(path).name
    pipeline = FramePipeline(bundle, detector, engine)
    times: list[float] = []
    results: list[FrameResult] = []
    max_pixels = limits.max_frame_pixels
    try:
        container = av.open(str(path), options=pixel_options(max_pixels))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise ScanError(f"{name} is not a readable video: {av_reason(exc)}") from None
    with container:
        if not container.streams.video:
            raise ScanError(f"{name} has no video stream")
        stream = container.streams.video[0]
        declared = (
            float(stream.duration * stream.time_base)
            if stream.duration and stream.time_base
            else None
        )
        if declared is not None and declared > limits.max_seconds:
            raise ScanError(
                f"{name} is {declared:.0f} s long; the limit of {limits.max_seconds:.0f} s is exceeded",
                too_long=True,
            )
        try:
            frames = decode_video(container, max_pixels)
        except FrameTooLarge as exc:
            raise ScanError(f"{name}: {exc}", too_large=True) from None
        header_size = stream.codec_context.width * stream.codec_context.height
        source = FrameSource(
            frames,
            fps or bundle.analysis_fps,
            max_side=limits.max_frame_side,
            max_seconds=limits.max_seconds,
        )
        try:
            for t, rgb in source:
                if stop is not None and stop():
                    raise ScanCancelled(f"analysis of {name} was stopped")
                results.append(pipeline.analyze(rgb))
                times.append(t)
                if progress is not None and declared:
                    progress(min(1.0, t / declared))
        except av.FFmpegError as exc:
            if not results and source.decoded == 0 and max_pixels and not header_size:
                # The header named no frame size and the decoder refused the first frame: the
                # decoder's pixel limit (or a damaged file) stopped it before it allocated.
                raise ScanError(
                    f"{name}: no frame could be decoded within the limit of "
                    f"{max_pixels / 1e6:.1f} megapixels per frame (its frames are larger, or "
                    f"it is damaged: {av_reason(exc)})",
                    too_large=isinstance(exc, av.ArgumentError),
                ) from None
            if not results:
                raise ScanError(f"{name} could not be decoded: {av_reason(exc)}") from None
        if source.too_long:
            raise ScanError(
                f"{name} is longer than the limit of {limits.max_seconds:.0f} s", too_long=True
            )
    if not results:
        raise ScanError(f"{name} has no decodable video frames")
    verdict, p = video_verdict(results, bundle.threshold)
    duration = max(source.last_t, declared or 0.0)
    return ScanResult(
        path=str(path),
        verdict=verdict,
        p_fake=p,
        duration_s=duration,
        frames_analysed=len(results),
        frames_with_face=sum(r.label != "no_face" for r in results),
        faces=pipeline.faces.tracker.next_id,
        timeline=timeline(times, results, duration),
        model=bundle.model_id,
    )


class Scanner:
    """Bundle, sessions, face detector and engine for offline scans (a context manager)."""

    def __init__(
        self,
        bundle_dir: Path,
        *,
        providers: str = "auto",
        precision: str = "auto",
        limits: ScanLimits = ScanLimits(),
        threads: int = 0,
    ) -> None:
        from stream_server.core.bundle import load_bundle
        from stream_server.core.runtime import open_sessions, warm_up

        self.bundle = load_bundle(bundle_dir, precision=precision)
        self.sessions = open_sessions(self.bundle, providers, threads)
        warm_up(self.bundle, self.sessions)
        self.detector = Detectors.for_bundle(self.bundle, self.sessions)
        self.engine = InferenceEngine(self.bundle, self.sessions)
        self.limits = limits

    def __enter__(self) -> Scanner:
        self.engine.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.stop()

    def scan(self, path: Path, progress: Callable[[float], None] | None = None) -> ScanResult:
        return scan_file(
            path, self.bundle, self.detector, self.engine, self.limits, progress=progress
        )
