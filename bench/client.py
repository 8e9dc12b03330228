"""A load-generating process: K aiortc peers, each sending a 640x480 face clip at `fps` like a
webcam, recording frame-to-score latency (send time of the scored frame -> score arrival).

    python -m bench.client URL PEERS SECONDS FPS OUT.json
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import aioice.ice
import av
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Clip(VideoStreamTrack):
    def __init__(self, frames: list[av.VideoFrame], fps: int) -> None:
        super().__init__()
        self.frames, self.fps, self.i = frames, fps, 0
        self.start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + self.i / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        src = self.frames[self.i % len(self.frames)]
        frame = src.reformat(format="yuv420p")
        frame.pts = int(self.i * 90000 / self.fps)
        frame.time_base = Fraction(1, 90000)
        self.i += 1
        return frame


async def peer(
    url: str, frames: list[av.VideoFrame], fps: int, seconds: float
) -> dict[str, object]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = Clip(frames, fps)
    pc.addTrack(track)
    ch = pc.createDataChannel("scores")
    lat: list[float] = []
    server_lat: list[float] = []
    last: dict[str, object] = {}

    def on_message(data: str) -> None:
        m = json.loads(data)
        if m.get("type") == "score" and track.start is not None:
            lat.append(time.monotonic() - (track.start + float(m["t"])))
            server_lat.append(float(m["latency_ms"]) / 1000.0)
            last.update(m)

    ch.on("message", on_message)
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(url + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    if r.status_code != 200:
        await pc.close()
        return {"error": r.text}
    await pc.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))
    await asyncio.sleep(seconds)
    await pc.close()
    return {
        "latencies_s": lat,
        "server_latencies_s": server_lat,
        "scores": len(lat),
        "dropped": last.get("dropped", 0),
        "seconds": seconds,
    }


async def run_peers() -> list[dict[str, object]]:
    url, peers, seconds, fps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    sys.path.insert(0, ".")
    from tests.media import face_frames

    frames = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in face_frames(60, (640, 480))]
    return list(await asyncio.gather(*(peer(url, frames, fps, seconds) for _ in range(peers))))


if __name__ == "__main__":
    Path(sys.argv[5]).write_text(json.dumps(asyncio.run(run_peers())))
