"""A real aiortc client peer: sends generated frames as a webcam would, collects the `scores`
data channel's messages."""

from __future__ import annotations

import asyncio
import json
import time
from fractions import Fraction
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from tests.timing import scaled


def offer_loopback() -> None:
    """Tests run in a loopback-only namespace, where aioice (which leaves loopback out) would
    give this client no candidate to offer: offer 127.0.0.1, as a browser on the same host
    does. aiortc then also answers an offer without candidates with none of its own, so a
    server in another process could never be reached."""
    import aioice.ice

    if "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False):
        from stream_server.shell.settings import Settings
        from stream_server.shell.webrtc import configure_ice

        configure_ice(Settings(ice_addresses=("127.0.0.1",)))


class FramesTrack(VideoStreamTrack):
    """Plays frames in a loop at `fps` with 90 kHz timestamps, like a camera."""

    def __init__(self, frames: list[np.ndarray], fps: int = 15) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.i = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self.i / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(self.frames[self.i % len(self.frames)], format="rgb24")
        frame.pts = int(self.i * 90000 / self.fps)
        frame.time_base = Fraction(1, 90000)
        self.i += 1
        return frame


class ClientPeer:
    def __init__(self, base_url: str, frames: list[np.ndarray], fps: int = 15) -> None:
        self.base_url = base_url
        offer_loopback()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = FramesTrack(frames, fps)
        self.messages: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.answer: dict[str, Any] = {}
        self.got_message = asyncio.Event()
        self.headers: dict[str, str] = {}

    async def connect(self) -> dict[str, Any]:
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
            t for m, t in zip(self.messages, self.received_at, strict=True) if m["type"] == "score"
        ]

    async def wait_scores(self, n: int, within: float) -> list[dict[str, Any]]:
        """Wait until n score messages have arrived or `within` seconds (times the test time
        scale, tests/timing.py) have passed."""
        try:
            async with asyncio.timeout(scaled(within)):
                while len(self.scores()) < n:
                    self.got_message.clear()
                    await self.got_message.wait()
        except TimeoutError:
            pass
        return self.scores()

    async def close(self) -> None:
        await self.pc.close()
