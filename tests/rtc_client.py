"""The tests' WebRTC client peer: bench/client.py's `Peer` sending generated frames as a webcam
would, with what tests add to it: their waits are scaled (tests/timing.py), and a peer in a
loopback-only namespace offers 127.0.0.1 the way the server under test would."""

from __future__ import annotations

from typing import Any

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
