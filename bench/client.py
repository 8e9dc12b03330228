"""A load-generating process: K aiortc peers, each sending a 640x480 face clip at `fps` like a
webcam, recording frame-to-score latency (send time of the scored frame -> score arrival).

    python -m bench.client URL PEERS SECONDS FPS OUT.json [h264|vp8]

`h264` (default): the clip is encoded once (H.264 constrained baseline, a key frame every second,
as a hardware webcam encoder or a browser would send it) and every peer sends those packets on
its own schedule, so the sending side costs almost no CPU and the server's cores are measured,
not the load generator's. `vp8`: every peer encodes every frame live with libvpx (aiortc's
default), which on a small machine competes with the server for the same cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import aioice.ice
import av
import httpx
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Pacer:
    """A webcam's schedule: frame i is due at start + i / fps (start: the first request)."""

    def __init__(self, fps: int) -> None:
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


class Clip(VideoStreamTrack):
    """Raw frames; aiortc encodes each one (VP8 by default) as it is sent."""

    def __init__(self, frames: list[av.VideoFrame], fps: int) -> None:
        super().__init__()
        self.frames, self.pacer = frames, Pacer(fps)

    async def recv(self) -> av.VideoFrame:
        i, pts = await self.pacer.next()
        frame = self.frames[i % len(self.frames)].reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, Fraction(1, 90000)
        return frame


class EncodedClip(MediaStreamTrack):
    """Sends pre-encoded H.264 access units (Annex B) at `fps`, looping the clip."""

    kind = "video"

    def __init__(self, units: list[bytes], fps: int) -> None:
        super().__init__()
        self.units, self.pacer = units, Pacer(fps)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        i, pts = await self.pacer.next()
        packet = av.Packet(self.units[i % len(self.units)])
        packet.pts, packet.time_base = pts, Fraction(1, 90000)
        return packet


def encode_h264(frames: list[av.VideoFrame], fps: int) -> list[bytes]:
    """One access unit per frame; the clip length is a whole number of GOPs so it loops cleanly."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height = frames[0].width, frames[0].height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    ctx.options = {
        "profile": "baseline",
        "tune": "zerolatency",
        "preset": "veryfast",
        "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0",
        "b": "1000000",
    }
    units: list[bytes] = []
    for k, f in enumerate(frames):
        frame = f.reformat(format="yuv420p")
        frame.pts = k
        units.extend(bytes(p) for p in ctx.encode(frame))
    units.extend(bytes(p) for p in ctx.encode(None))
    return units


async def peer(
    url: str, track: Clip | EncodedClip, seconds: float, stop_after_scores: int | None = None
) -> dict[str, object]:
    """One peer sending `track` for `seconds` (or until `stop_after_scores` scores arrived)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if isinstance(track, EncodedClip):
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        )
    else:
        pc.addTrack(track)
    pacer = track.pacer
    ch = pc.createDataChannel("scores")
    enough = asyncio.Event()
    lat: list[float] = []
    server_lat: list[float] = []
    last: dict[str, object] = {}

    def on_message(data: str) -> None:
        m = json.loads(data)
        if m.get("type") == "score" and pacer.start is not None:
            lat.append(time.monotonic() - (pacer.start + float(m["t"])))
            server_lat.append(float(m["latency_ms"]) / 1000.0)
            last.update(m)
            if stop_after_scores is not None and len(lat) >= stop_after_scores:
                enough.set()

    ch.on("message", on_message)
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(url + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    if r.status_code != 200:
        await pc.close()
        return {"error": r.text}
    await pc.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(enough.wait(), seconds)
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
    codec = sys.argv[6] if len(sys.argv) > 6 else "h264"
    sys.path.insert(0, ".")
    from bench.media import face_frames

    frames = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in face_frames(60, (640, 480))]
    units = encode_h264(frames, fps) if codec == "h264" else []
    tracks = [
        EncodedClip(units, fps) if codec == "h264" else Clip(frames, fps) for _ in range(peers)
    ]
    return list(await asyncio.gather(*(peer(url, t, seconds) for t in tracks)))


if __name__ == "__main__":
    Path(sys.argv[5]).write_text(json.dumps(asyncio.run(run_peers())))
