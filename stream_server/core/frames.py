"""The one frame source: decoded PyAV frames -> stream time -> sampling at the analysis rate ->
downscale -> RGB. Live streams, offline scans and training crops all convert frames here, so a
training crop is cut from exactly the pixels the server analyses (see DESIGN.md, "Data flow").

No TensorFlow here: serving imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer

# Frames whose larger side exceeds this are downscaled before analysis (the serving default;
# `Settings.max_frame_side` / `ScanLimits.max_frame_side` override it).
MAX_FRAME_SIDE = 1280


class FrameSampler:
    """Picks the first frame of each 1/fps interval of stream time (t in seconds)."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.last_bucket: int | None = None

    def due(self, t: float) -> bool:
        bucket = math.floor(t * self.fps + 1e-6)
        if self.last_bucket is not None and bucket <= self.last_bucket:
            return False
        self.last_bucket = bucket
        return True


# The largest frame decoded from an uploaded or scanned file: 3840x2160 (4K UHD), 8.3 MP.
# Checked from the stream header before decoding, and enforced by the decoder itself
# (FFmpeg's `max_pixels`), so a small file declaring huge frames cannot allocate them.
MAX_FRAME_PIXELS = 3840 * 2160


class FrameTooLarge(ValueError):
    """The stream's frames have more pixels than allowed (`width`, `height` from its header,
    0 when the header names none)."""

    def __init__(self, width: int, height: int, limit: int) -> None:
        self.width, self.height, self.limit = width, height, limit
        size = f"{width}x{height} ({width * height / 1e6:.1f} megapixels)" if width else "larger"
        super().__init__(f"frames are {size}; the limit is {limit / 1e6:.1f} megapixels per frame")


def pixel_options(max_pixels: int | None) -> dict[str, str]:
    """`av.open` options that make FFmpeg refuse frames over `max_pixels` already while it
    probes the file (probing decodes a frame of some formats, e.g. PNG)."""
    return {} if max_pixels is None else {"max_pixels": str(int(max_pixels))}


# The frame rate assumed for frames without timestamps when the stream names none (FFmpeg's
# own default for raw streams).
DEFAULT_RATE = 25.0


class StreamClock:
    """Stream time in seconds relative to the first frame, never going back.

    A frame without a timestamp (raw Annex-B H.264, some elementary streams) gets one synthesised
    from the frame rate: the previous frame's time plus 1/`rate` (0.0 for the first frame), so
    sampling and duration limits work on such streams as on timestamped ones.

    A timestamp that goes back (a looping file, an encoder or camera restart) re-bases the clock:
    the frame is timed one step after the previous one and later frames continue from there, so
    sampling goes on and a duration limit cannot be dodged by timestamps that restart. A step
    back of at most half a frame at `rate` (reordering, rounding) is held at the previous time
    instead. With `max_jump`, a step forward by more than `max_jump` seconds beyond the wall
    time that passed (`now`, when the caller passes it; else beyond zero) re-bases the same way:
    a restarted RTP sender's random timestamp origin, or aiortc reading a step back as a 32-bit
    wrap (+47,722 s). A real pause is no jump: media and wall time advance together. A re-based
    frame is timed the wall time since the previous frame later (1/`rate` without `now`).
    `jumps` counts the re-bases and `last_jump` is the size of the latest one (seconds, signed).
    """

    def __init__(self, rate: float | None = None, *, max_jump: float | None = None) -> None:
        self.rate = rate if rate is not None and rate > 0 else DEFAULT_RATE
        self.max_jump = max_jump
        self.t0: float | None = None
        self.last: float | None = None
        self.last_now: float | None = None
        self.jumps = 0
        self.last_jump = 0.0

    def __call__(self, t: float | None, now: float | None = None) -> float:
        wall = None if now is None or self.last_now is None else max(0.0, now - self.last_now)
        if now is not None:
            self.last_now = now
        if t is None:
            self.last = 0.0 if self.last is None else self.last + 1.0 / self.rate
            return self.last
        if self.t0 is None:  # untimed frames came first: continue one frame after them
            self.t0 = t if self.last is None else t - (self.last + 1.0 / self.rate)
        elif self.last is not None:
            step = (t - self.t0) - self.last
            forward_limit = None if self.max_jump is None else (wall or 0.0) + self.max_jump
            if step < -0.5 / self.rate or (forward_limit is not None and step > forward_limit):
                self.jumps += 1
                self.last_jump = step
                advance = wall if wall is not None else 1.0 / self.rate
                self.t0 = t - (self.last + advance)
            elif step < 0:
                return self.last
        self.last = t - self.t0
        return self.last


def analysis_size(width: int, height: int, max_side: int = MAX_FRAME_SIDE) -> tuple[int, int]:
    """(width, height) a frame is analysed at: unchanged up to `max_side`, else scaled so its
    larger side is `max_side` (aspect kept, rounded, at least 2 px)."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, round(width * scale)), max(2, round(height * scale))


def to_rgb(frame: av.VideoFrame, max_side: int = MAX_FRAME_SIDE) -> np.ndarray:
    """A decoded frame as (h, w, 3) uint8 RGB at its analysis size: scaled in the decoder's pixel
    format first (only when larger than `max_side`), then converted to rgb24."""
    w, h = analysis_size(frame.width, frame.height, max_side)
    if (w, h) != (frame.width, frame.height):
        frame = frame.reformat(width=w, height=h)
    return frame.to_ndarray(format="rgb24")


def stream_rate(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's frame rate as FFmpeg guesses it (codec header first, then the container's
    average); None when it names none."""
    for rate in (stream.guessed_rate, stream.average_rate):
        if rate:
            return float(rate)
    return None


class DecodedFrames:
    """Iterator over a container's decoded video frames that also carries the stream's frame
    `rate` (what `FrameSource` synthesises missing timestamps from).

    With `max_pixels`, a stream whose header names larger frames raises FrameTooLarge before
    anything is decoded, and the decoder is told the same limit (a header may name no size,
    or lie): it then refuses such a frame with an error instead of allocating it."""

    def __init__(self, container: InputContainer, max_pixels: int | None = None) -> None:
        stream = container.streams.video[0]
        if max_pixels is not None:
            cc = stream.codec_context
            if cc.width * cc.height > max_pixels:
                raise FrameTooLarge(cc.width, cc.height, max_pixels)
            cc.options = {**cc.options, **pixel_options(max_pixels)}
        stream.thread_type = "AUTO"
        self.rate = stream_rate(stream)
        self._frames = container.decode(stream)

    def __iter__(self) -> Iterator[av.VideoFrame]:
        return self

    def __next__(self) -> av.VideoFrame:
        frame: av.VideoFrame = next(self._frames)
        return frame


def decode_video(container: InputContainer, max_pixels: int | None = None) -> DecodedFrames:
    """Decoded frames of the container's first video stream (threaded decoding); `.rate` is the
    stream's frame rate. With `max_pixels`, larger frames are refused (see DecodedFrames)."""
    return DecodedFrames(container, max_pixels)


class FrameSource:
    """Iterating yields (t, rgb) for the frames due at `fps`: t is stream seconds relative to the
    first frame, rgb the frame via `to_rgb(frame, max_side)`. Frames not due are never converted.

    Frames without timestamps are timed from `rate` (default: the `rate` attribute of `frames`,
    as `decode_video` gives, else `DEFAULT_RATE`), so sampling and `max_seconds` apply to them.
    With `max_seconds`, iteration stops at the first frame later than that and `too_long` is set.
    After (or during) iteration: `last_t` is the time of the last frame decoded within the limit,
    `decoded` the frames decoded, `sampled` the frames yielded. Decode errors propagate.
    """

    def __init__(
        self,
        frames: Iterable[av.VideoFrame],
        fps: float,
        *,
        max_side: int = MAX_FRAME_SIDE,
        max_seconds: float | None = None,
        rate: float | None = None,
    ) -> None:
        self.frames = frames
        self.fps = fps
        self.rate = rate if rate is not None else getattr(frames, "rate", None)
        self.max_side = max_side
        self.max_seconds = max_seconds
        self.decoded = 0
        self.sampled = 0
        self.last_t = 0.0
        self.too_long = False

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        clock = StreamClock(self.rate)
        sampler = FrameSampler(self.fps)
        for frame in self.frames:
            self.decoded += 1
            t = clock(None if frame.time is None else float(frame.time))
            if self.max_seconds is not None and t > self.max_seconds:
                self.too_long = True
                return
            self.last_t = t
            if not sampler.due(t):
                continue
            self.sampled += 1
            yield t, to_rgb(frame, self.max_side)


def sample_frames(
    source: Iterable[av.VideoFrame] | InputContainer | Path | str,
    fps: float,
    *,
    max_side: int = MAX_FRAME_SIDE,
    max_seconds: float | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """`FrameSource` over PyAV frames, an open container (its first video stream) or a video file
    path (opened and closed here); yields (t, rgb) for the frames due at `fps`."""
    if isinstance(source, str | Path):
        with av.open(str(source)) as container:
            yield from FrameSource(
                decode_video(container), fps, max_side=max_side, max_seconds=max_seconds
            )
        return
    frames = decode_video(source) if isinstance(source, InputContainer) else source
    yield from FrameSource(frames, fps, max_side=max_side, max_seconds=max_seconds)
