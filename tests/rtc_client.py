"""The tests' WebRTC client peer: bench/client.py's `Peer` sending generated frames as a webcam
would, with what tests add to it: their waits are scaled (tests/timing.py), and a peer in a
loopback-only namespace offers 127.0.0.1 the way the server under test would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import av
import httpx
import numpy as np

from bench.client import FramesTrack, Peer
from tests.timing import scaled


def offer_loopback() -> None:
    """Tests run in a loopback-only namespace, where aioice (which leaves loopback out) would
    give this client no candidate to offer: offer 127.0.0.1, as a browser on the same host
    does. aiortc then also answers an offer without candidates with none of its own, so a
    server in another process could never be reached. Done with the server's own
    `configure_ice` (bench/client.py's `offer_only_loopback` would do it before the server's
    module had kept aioice's own lookup, changing what a server in this process offers)."""
    import aioice.ice

    if "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False):
        from stream_server.shell.settings import Settings
        from stream_server.shell.webrtc import configure_ice

        configure_ice(Settings(ice_addresses=("127.0.0.1",)))


class ClientPeer(Peer):
    """A `Peer` sending `frames` in a loop at `fps`."""

    def __init__(self, base_url: str, frames: list[np.ndarray], fps: int = 15) -> None:
        offer_loopback()
        super().__init__(base_url, FramesTrack(frames, fps))

    async def wait_scores(self, n: int, within: float) -> list[dict[str, Any]]:
        """Wait until n score messages have arrived or `within` seconds (times the test time
        scale, tests/timing.py) have passed."""
        return await super().wait_scores(n, scaled(within))


async def watch_camera(
    base_url: str, camera: str, within: float = 10.0
) -> tuple[dict[str, Any], av.VideoFrame, list[dict[str, Any]]]:
    """Watch a registered camera as the page does: offer a receive-only video transceiver and
    a `scores` channel to /offer with `"camera"`. Returns the answer, the first video frame
    received, and the messages that arrived until the first score (or `within` seconds, times
    the test time scale, after the frame); then closes."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    offer_loopback()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("scores")
        messages: list[dict[str, Any]] = []
        scored = asyncio.Event()

        def on_message(m: str) -> None:
            messages.append(json.loads(m))
            if messages[-1]["type"] == "score":
                scored.set()

        channel.on("message", on_message)
        got_track: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pc.on("track", lambda t: got_track.done() or got_track.set_result(t))
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as c:
            r = await c.post(
                "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", "camera": camera}
            )
        assert r.status_code == 200, r.text
        await pc.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))
        track = await asyncio.wait_for(got_track, scaled(within))
        frame = await asyncio.wait_for(track.recv(), scaled(within))
        try:
            await asyncio.wait_for(scored.wait(), scaled(within))
        except TimeoutError:
            pass
        return r.json(), frame, messages
    finally:
        await pc.close()
