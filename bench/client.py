"""The WebRTC client peer: aiortc playing a browser page's part, sending a webcam's frames and
reading the `scores` data channel. The benchmarks' load generator is made of these peers, and
the tests use the same one (tests/rtc_client.py only adds the test time scale and a loopback
address for a server in the test's own process).

    python -m bench.client URL PEERS SECONDS FPS OUT.json [h264|vp8] [WIDTHxHEIGHT] [KBIT/S]

starts K peers, each sending a face clip (640x480 unless told) at `fps` like a webcam, recording
frame-to-score latency (send time of the scored frame -> score arrival). `FPS` may be
fractional: the capacity benchmark's capped senders send at the `max_fps` of the server's
capture hints (GET /v1/config), as the page's capped RTCRtpSender does; their clip shows the same
motion per second as the 30 fps one (its every n-th frame). `KBIT/S` (default 1000): the H.264
clip's bit rate, the same at any frame rate (a browser's encoder aims at its bandwidth estimate
or its `maxBitrate`, not at a number of bits per frame); the capped senders use the `max_kbps`
of the capture hints, as the page's RTCRtpSender does.

`h264` (default): the clip is encoded once (H.264 constrained baseline, a key frame every second,
as a hardware webcam encoder or a browser would send it) and every peer sends those packets on
its own schedule, so the sending side costs almost no CPU and the server's cores are measured,
not the load generator's. `vp8`: every peer encodes every frame live with libvpx (aiortc's
default), which on a small machine competes with the server for the same cores.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import aioice.ice
import av
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)


def offer_only_loopback() -> None:
    """Make every peer in this process offer 127.0.0.1 and nothing else (the server is on this
    host). aioice leaves loopback out of the addresses it offers and has no option for it, so its
    address lookup (looked up at call time) is replaced."""
    aioice.ice.get_host_addresses = _loopback


def _loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


class Pacer:
    """A webcam's schedule: frame i is due at start + i / fps (start: the first request)."""

    def __init__(self, fps: float) -> None:
        self.fps, self.i = fps, 0
        self.start: float | None = None

    async def next(self) -> tuple[int, int]:
        """Waits for the next frame's time; returns (frame index, its 90 kHz timestamp)."""
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + self.i / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i, self.i = self.i, self.i + 1
        return i, int(i * 90000 / self.fps)


class FramesTrack(VideoStreamTrack):
    """Plays RGB frames in a loop at `fps` with 90 kHz timestamps, like a camera; aiortc encodes
    each one (VP8 by default) as it is sent."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 15) -> None:
        super().__init__()
        self.frames, self.fps, self.pacer = frames, fps, Pacer(fps)

    @property
    def i(self) -> int:
        """How many frames have been sent."""
        return self.pacer.i

    async def recv(self) -> av.VideoFrame:
        i, pts = await self.pacer.next()
        frame = av.VideoFrame.from_ndarray(self.frames[i % len(self.frames)], format="rgb24")
        frame.pts, frame.time_base = pts, Fraction(1, 90000)
        return frame


class EncodedClip(MediaStreamTrack):
    """Sends pre-encoded H.264 access units (Annex B) at `fps`, looping the clip."""

    kind = "video"

    def __init__(self, units: list[bytes], fps: float) -> None:
        super().__init__()
        self.units, self.pacer = units, Pacer(fps)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        i, pts = await self.pacer.next()
        packet = av.Packet(self.units[i % len(self.units)])
        packet.pts, packet.time_base = pts, Fraction(1, 90000)
        return packet


def encode_h264(frames: Sequence[np.ndarray], fps: float, kbps: int = 1000) -> list[bytes]:
    """One access unit per frame, a key frame every second (`fps` may be fractional); the clip
    length should be a whole number of GOPs so it loops cleanly."""
    rate = Fraction(fps).limit_denominator(1000)
    keyint = max(1, round(fps))
    ctx = av.CodecContext.create("libx264", "w")
    ctx.height, ctx.width = frames[0].shape[:2]
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = 1 / rate
    ctx.framerate = rate
    ctx.options = {
        "profile": "baseline",
        "tune": "zerolatency",
        "preset": "veryfast",
        "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0",
        "b": str(kbps * 1000),
    }
    units: list[bytes] = []
    for k, f in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
        frame.pts = k
        units.extend(bytes(p) for p in ctx.encode(frame))
    units.extend(bytes(p) for p in ctx.encode(None))
    return units


class Peer:
    """One client peer: `connect()` offers `track` (sent as it is; an `EncodedClip` as H.264)
    and a `scores` data channel to POST {base_url}/offer, and every message that arrives on the
    channel is kept with its arrival time (time.monotonic())."""

    def __init__(self, base_url: str, track: MediaStreamTrack) -> None:
        self.base_url = base_url
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = track
        self.messages: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.answer: dict[str, Any] = {}
        self.got_message = asyncio.Event()
        self.headers: dict[str, str] = {}  # sent with the offer (e.g. the bearer token)

    async def connect(self) -> dict[str, Any]:
        """Offer, and set the server's answer; returns it. A refusal raises httpx's
        HTTPStatusError."""
        if isinstance(self.track, EncodedClip):
            transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
            transceiver.setCodecPreferences(
                [
                    c
                    for c in RTCRtpSender.getCapabilities("video").codecs
                    if c.mimeType == "video/H264"
                ]
            )
        else:
            self.pc.addTrack(self.track)
        channel = self.pc.createDataChannel("scores")

        @channel.on("message")
        def on_message(data: str) -> None:
            self.messages.append(json.loads(data))
            self.received_at.append(time.monotonic())
            self.got_message.set()

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=30, headers=self.headers
        ) as client:
            r = await client.post(
                "/offer", json={"sdp": self.pc.localDescription.sdp, "type": "offer"}
            )
        r.raise_for_status()
        self.answer = r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer["sdp"], "answer"))
        self.connected_at = time.monotonic()
        return self.answer

    def scores(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "score"]

    def score_times(self) -> list[float]:
        """When each score message arrived (time.monotonic()), in the order of `scores()`."""
        return [
            t
            for m, t in zip(self.messages, self.received_at, strict=True)
            if m.get("type") == "score"
        ]

    async def wait_scores(self, n: int, within: float) -> list[dict[str, Any]]:
        """Wait until n score messages have arrived or `within` seconds have passed."""
        try:
            async with asyncio.timeout(within):
                while len(self.scores()) < n:
                    self.got_message.clear()
                    await self.got_message.wait()
        except TimeoutError:
            pass
        return self.scores()

    async def close(self) -> None:
        await self.pc.close()


async def peer(
    url: str, track: FramesTrack | EncodedClip, seconds: float, stop_after_scores: int | None = None
) -> dict[str, object]:
    """One peer sending `track` for `seconds` (or until `stop_after_scores` scores arrived),
    offering 127.0.0.1 only; its latencies: from each scored frame's place in the sending
    schedule to the score's arrival (client side), and the server's own `latency_ms`."""
    offer_only_loopback()
    p = Peer(url, track)
    try:
        await p.connect()
    except httpx.HTTPStatusError as e:
        await p.close()
        return {"error": e.response.text}
    await p.wait_scores(sys.maxsize if stop_after_scores is None else stop_after_scores, seconds)
    await p.close()
    start = track.pacer.start or 0.0
    scores = list(zip(p.scores(), p.score_times(), strict=True))
    return {
        "latencies_s": [t - (start + float(m["t"])) for m, t in scores],
        "server_latencies_s": [float(m["latency_ms"]) / 1000.0 for m, _ in scores],
        "scores": len(scores),
        "dropped": scores[-1][0].get("dropped", 0) if scores else 0,
        "seconds": seconds,
    }


def clip_frames(fps: float, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """Two seconds of the face clip at `fps` (two whole GOPs): the 30 fps clip's every n-th
    frame, so a capped sender shows the same motion per second as a 30 fps one."""
    from bench.media import face_frames

    step = max(1, round(30 / fps))
    return face_frames(60, size)[::step][: max(1, round(fps)) * 2]


async def run_peers() -> list[dict[str, object]]:
    url, peers, seconds, fps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    codec = sys.argv[6] if len(sys.argv) > 6 else "h264"
    w, h = (int(x) for x in sys.argv[7].split("x")) if len(sys.argv) > 7 else (640, 480)
    kbps = int(sys.argv[8]) if len(sys.argv) > 8 else 1000
    sys.path.insert(0, ".")
    frames = clip_frames(fps, (w, h))
    units = encode_h264(frames, fps, kbps) if codec == "h264" else []
    tracks: list[FramesTrack | EncodedClip] = [
        EncodedClip(units, fps) if codec == "h264" else FramesTrack(frames, fps)
        for _ in range(peers)
    ]
    return list(await asyncio.gather(*(peer(url, t, seconds) for t in tracks)))


if __name__ == "__main__":
    Path(sys.argv[5]).write_text(json.dumps(asyncio.run(run_peers())))
