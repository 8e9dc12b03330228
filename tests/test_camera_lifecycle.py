"""Camera claims from the README with a real GStreamer RTSP server: feeds behind `--token`, stall
detection (a camera that stops sending without closing is marked lost, then reconnects), and
the reconnect back-off that doubles up to `--camera-backoff-max`."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, free_port
from tests.rtsp import RtspServer, write_camera_clip
from tests.test_rtsp import FAST, Feed
from tests.timing import poll, scaled

pytestmark = pytest.mark.rtsp

TOKEN = "camera-token-0123456789abcdef"


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator[RtspServer]:
    """A camera playing 30 s of a face at 15 fps (H.264 without B-frames)."""
    clip = write_camera_clip(tmp_path / "cam.mp4", loops=5)
    with RtspServer(clip, free_port()) as server:
        yield server


def test_camera_feed_and_viewer_offer_with_a_token(tiny_bundle: Path, rtsp: RtspServer) -> None:
    """With --token: the camera API and its event feed refuse without it; the feed takes
    `?token=` (EventSource cannot send headers) and delivers the camera's scores."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    with LiveServer(bundle=tiny_bundle, token=TOKEN, **FAST) as srv:
        assert httpx.post(srv.url + "/v1/cameras", json={"url": rtsp.url}).status_code == 401
        r = httpx.post(srv.url + "/v1/cameras", json={"url": rtsp.url}, headers=auth)
        assert r.status_code == 201, r.text
        cam = r.json()
        events = f"{srv.url}/v1/cameras/{cam['id']}/events"
        assert httpx.get(events, timeout=5).status_code == 401
        assert httpx.get(events + "?token=wrong-token-0123456789ab", timeout=5).status_code == 401
        feed = Feed(f"{events}?token={TOKEN}")
        try:
            score = feed.wait(lambda e: e[0] == "score", 15)
        finally:
            feed.close()
        assert score is not None and score[1]["stream"] == cam["id"], feed.events
        assert TOKEN not in feed.raw
        view = httpx.get(f"{srv.url}/v1/cameras/{cam['id']}?token={TOKEN}").json()
        assert view["status"] == "live"
        assert httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").status_code == 401


def test_a_camera_that_stops_sending_is_marked_lost_then_reconnects(
    tiny_bundle: Path, rtsp: RtspServer
) -> None:
    """The RTSP server process is frozen (SIGSTOP): its sockets stay open but no frame comes.
    After the stall time (2 s here) the camera is `lost` with "no frames for 2 s"; thawed
    (SIGCONT), it reconnects and scores resume."""
    assert rtsp.proc is not None
    with LiveServer(bundle=tiny_bundle, **FAST) as srv:
        cam = httpx.post(srv.url + "/v1/cameras", json={"url": rtsp.url}).json()
        view_url = f"{srv.url}/v1/cameras/{cam['id']}"
        feed = Feed(f"{srv.url}/v1/cameras/{cam['id']}/events")
        try:
            assert feed.wait(lambda e: e[0] == "score", 15), feed.events
            os.kill(rtsp.proc.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                lost = feed.wait(lambda e: e[0] == "source_lost", 15)
                lost_after = time.monotonic() - frozen_at
                view = httpx.get(view_url).json()
            finally:
                os.kill(rtsp.proc.pid, signal.SIGCONT)
            assert lost is not None, feed.events
            assert lost[1]["detail"] == "no frames for 2 s", lost
            # Not before the stall time (frames in flight may arrive a moment after the freeze).
            assert lost_after >= 2.0 - 0.5, lost_after
            assert view["status"] == "lost" and view["error"] == "no frames for 2 s", view
            n = len(feed.events)
            assert feed.wait(lambda e: e[0] == "reconnected", 20), feed.events[n:]
            again = poll(lambda: [e for e in feed.events[n:] if e[0] == "score"], 15)
            assert again, feed.events[n:]
        finally:
            feed.close()
        view = poll(lambda: httpx.get(view_url).json(), 5, until=lambda v: v["status"] == "live")
        assert view["status"] == "live" and view["reconnects"] == 1, view


def test_reconnect_back_off_doubles_up_to_the_cap(tiny_bundle: Path) -> None:
    """A camera at a closed port: each attempt takes the stall time (0.5 s here: a closed port
    must not answer faster than a silent one), then the wait doubles from 0.5 s up to
    --camera-backoff-max (2 s here). Attempts are counted where they reach the camera."""
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"
    stall, cap = 0.5, 2.0
    with LiveServer(
        bundle=tiny_bundle,
        camera_stall_seconds=stall,
        camera_backoff_max=cap,
        camera_allow=("127.0.0.1/32",),
    ) as srv:
        cam = httpx.post(srv.url + "/v1/cameras", json={"url": dead}).json()
        reader = srv.app.state.cameras.cameras[cam["id"]].reader
        seen: list[float] = []  # when each new attempt was first seen

        def attempts() -> int:
            while len(seen) < reader.attempts:
                seen.append(time.monotonic())
            return int(reader.attempts)

        # Attempts 1..6: waits between them 0.5, 1, 2, 2, 2 (+ the stall time each).
        poll(attempts, 20, every=0.02, until=lambda n: n >= 6)
        view = httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").json()
    assert len(seen) >= 6, seen
    gaps = np.diff(seen[:6])
    want = np.array([stall + min(cap, 0.5 * 2**k) for k in range(5)])  # 1.0 1.5 2.5 2.5 2.5
    # Never sooner than the back-off (a poll may see an attempt up to 20 ms late) ...
    assert (gaps >= want - 0.05).all(), (gaps, want)
    # ... and not much later: the wait grew, then stopped growing at the cap.
    assert (gaps <= want + scaled(0.5)).all(), (gaps, want)
    assert gaps[2:].max() - gaps[2:].min() < scaled(0.5), gaps
    assert view["status"] == "error" and "camera unreachable" in view["error"], view
