"""RTSP camera monitoring against a real GStreamer RTSP server on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.media import face_frames, write_video
from tests.conftest import LiveServer, free_port
from tests.rtc_client import watch_camera
from tests.rtsp import RtspServer
from tests.timing import deadline, poll, scaled

pytestmark = pytest.mark.rtsp

# The GStreamer server listens on loopback, which cameras may only use when allowed explicitly.
FAST = {"camera_stall_seconds": 2.0, "camera_backoff_max": 1.0, "camera_allow": ("127.0.0.1/32",)}


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 s of a face at 15 fps, H.264 without B-frames (as IP cameras stream)."""
    frames = face_frames(90, size=(320, 240))
    return write_video(
        tmp_path_factory.mktemp("rtsp") / "cam.mp4",
        frames * 10,
        fps=15,
        options={"tune": "zerolatency", "g": "15"},
    )


@pytest.fixture
def rtsp(camera_clip: Path) -> Iterator[RtspServer]:
    with RtspServer(camera_clip, free_port()) as server:
        yield server


class Feed:
    """Reads a camera's Server-Sent Events feed in a background thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.raw = ""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.stream("GET", self.url, timeout=httpx.Timeout(5, read=30)) as r:
            event = "message"
            for line in r.iter_lines():
                self.raw += line + "\n"
                if self._stop.is_set():
                    return
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event, json.loads(line[6:])))

    def wait(self, pred: Any, within: float) -> tuple[str, dict[str, Any]] | None:
        """The first event (from the start of the feed) for which `pred` holds, waiting up to
        `within` seconds (times the test time scale)."""
        end = deadline(within)
        seen = 0
        while time.monotonic() < end:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self._stop.set()


def register(srv: LiveServer, url: str, name: str = "door") -> httpx.Response:
    return httpx.post(srv.url + "/v1/cameras", json={"url": url, "name": name})


def test_camera_scores_reconnects_and_resumes(tiny_bundle: Path, rtsp: RtspServer) -> None:
    with LiveServer(bundle=tiny_bundle, **FAST) as srv:
        r = register(srv, rtsp.url)
        assert r.status_code == 201, r.text
        cam = r.json()
        feed = Feed(f"{srv.url}/v1/cameras/{cam['id']}/events")
        try:
            assert feed.wait(lambda e: e[0] == "connected", 10)
            score = feed.wait(lambda e: e[0] == "score", 10)
            assert score is not None and score[1]["stream"] == cam["id"]
            assert (
                score[1]["label"] in ("warming_up", "real", "fake") and len(score[1]["faces"]) == 1
            )
            # The measured rate settles above 5 fps (a 15 fps camera): polled, not slept for.
            view = poll(
                lambda: httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").json(),
                10,
                every=0.1,
                until=lambda v: v["fps"] > 5 and (v["last_score"] or {}).get("faces") == 1,
            )
            assert view["status"] == "live" and view["fps"] > 5 and view["last_score"]["faces"] == 1
            # The camera goes away: source_lost.
            rtsp.stop()
            lost = feed.wait(lambda e: e[0] == "source_lost", 8)
            assert lost is not None
            assert httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").json()["status"] == "lost"
            assert httpx.get(srv.url + "/healthz").status_code == 200
            # It comes back: reconnected, and scores resume within 8 s (times the test time scale;
            # the back-off is capped at 1 s here).
            n_before = len(feed.events)
            rtsp.start()
            t0 = time.monotonic()
            assert feed.wait(lambda e: e[0] == "reconnected", 10)
            again = poll(
                lambda: next((e for e in feed.events[n_before:] if e[0] == "score"), None), 10
            )
            assert again is not None and time.monotonic() - t0 < scaled(8)
            view = httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").json()
            assert view["reconnects"] == 1 and view["status"] == "live"
        finally:
            feed.close()
        assert httpx.delete(f"{srv.url}/v1/cameras/{cam['id']}").status_code == 204
        assert httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").status_code == 404
        assert httpx.get(srv.url + "/v1/cameras").json() == {"cameras": []}
        # Its decode thread ends (polled: it finishes its last read first).
        alive = poll(
            lambda: [t for t in threading.enumerate() if t.name.startswith("rtsp-")],
            10,
            until=lambda ts: not ts,
        )
        assert not alive, alive


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only rtsp:// and rtsps://"),
        ("http://127.0.0.1/stream", "only rtsp:// and rtsps://"),
        ("concat:rtsp://a/b|file:///etc/passwd", "only rtsp:// and rtsps://"),
        ("subfile:,start,0,end,1,:/etc/passwd", "only rtsp:// and rtsps://"),
        ("pipe:0", "only rtsp:// and rtsps://"),
        ("rtsp://", "no host"),
        ("rtsp://127.0.0.1:99999/x", "invalid port"),
        ("rtsp://cam.local/a b", "whitespace"),
        ("rtsp:cam", "must look like"),
        ("", "non-empty"),
        (42, "non-empty string"),
    ],
)
def test_bad_camera_urls_are_refused(live_server: LiveServer, url: object, reason: str) -> None:
    r = register(live_server, url)  # type: ignore[arg-type]
    assert r.status_code == 400
    assert reason in r.json()["error"]
    assert httpx.get(live_server.url + "/v1/cameras").json() == {"cameras": []}


def test_allow_list_and_camera_limit(tiny_bundle: Path) -> None:
    with LiveServer(
        bundle=tiny_bundle, camera_allow=("10.0.0.0/8", "cams.example"), max_cameras=1
    ) as srv:
        r = register(srv, "rtsp://127.0.0.1:8554/cam")
        assert r.status_code == 400 and "not in the allow-list" in r.json()["error"]
        assert register(srv, "rtsp://10.1.2.3:8554/cam").status_code == 201
        r = register(srv, "rtsp://10.1.2.4:8554/cam")
        assert r.status_code == 503 and "camera limit" in r.json()["error"]


def test_credentials_never_appear_in_responses_or_logs(
    tiny_bundle: Path, rtsp: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_url = rtsp.url.replace("rtsp://", "rtsp://admin:hunter2@")
    with LiveServer(bundle=tiny_bundle, **FAST) as srv:
        r = register(srv, secret_url, name="lobby")
        assert r.status_code == 201
        cam = r.json()
        assert cam["url"] == rtsp.url.replace("rtsp://", "rtsp://***@")
        feed = Feed(f"{srv.url}/v1/cameras/{cam['id']}/events")
        # The camera (with its credentials) really connected: a score came through.
        score = feed.wait(lambda e: e[0] == "score", 10)
        feed.close()
        assert score is not None, feed.events
        texts = [
            r.text,
            httpx.get(srv.url + "/v1/cameras").text,
            httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").text,
            feed.raw,
        ]
        for t in texts:
            assert "hunter2" not in t and "admin" not in t
    assert "hunter2" not in caplog.text and "admin:" not in caplog.text


def test_unreachable_camera_stays_registered_and_blocks_nobody(
    tiny_bundle: Path, rtsp: RtspServer
) -> None:
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"
    with LiveServer(bundle=tiny_bundle, **FAST) as srv:
        bad = register(srv, dead, "dead").json()
        good = register(srv, rtsp.url, "alive").json()
        feed = Feed(f"{srv.url}/v1/cameras/{good['id']}/events")
        try:
            assert feed.wait(lambda e: e[0] == "score", 10)
        finally:
            feed.close()
        # An unreachable camera reports so after the stall time (not sooner: the time it takes
        # must not tell a closed port from a silent one).
        view = poll(
            lambda: httpx.get(f"{srv.url}/v1/cameras/{bad['id']}").json(),
            10,
            every=0.1,
            until=lambda v: bool(v.get("error")),
        )
        assert view["status"] == "error" and "camera unreachable" in view["error"], view
        assert httpx.get(srv.url + "/healthz").json()["status"] == "ok"


class WebhookReceiver:
    def __init__(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.received: list[dict[str, Any]] = []

        async def hook(request: Request) -> Response:
            self.received.append(await request.json())
            return Response(status_code=204)

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route("/hook", hook, methods=["POST"])]),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        # Bounded: a receiver that cannot start fails here, not at the 600 s pytest timeout.
        end = deadline(30)
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("webhook receiver did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def test_webhook_gets_the_alert(tiny_bundle: Path, rtsp: RtspServer, tmp_path: Path) -> None:
    """A bundle whose threshold the clip's scores exceed: the alert reaches the webhook."""
    from stream_server.core.bundle import write_manifest

    bundle = tmp_path / "low-threshold"
    shutil.copytree(tiny_bundle, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["threshold"] = 0.01
    write_manifest(bundle, m)
    hook = WebhookReceiver()
    try:
        with LiveServer(bundle=bundle, webhooks=(hook.url,), alert_seconds=1.0, **FAST) as srv:
            cam = register(srv, rtsp.url, "gate").json()
            poll(lambda: hook.received, 15, every=0.1)
    finally:
        hook.close()
    assert hook.received, "no alert reached the webhook"
    alert = hook.received[0]
    assert alert["type"] == "alert" and alert["camera"] == cam["id"] and alert["name"] == "gate"
    assert alert["p_fake"] >= 0.01 and alert["above_for_s"] >= 1.0
    assert alert["model"] == "tiny-test@1"


def test_webrtc_viewers_get_video_and_scores_from_one_decode(
    tiny_bundle: Path, rtsp: RtspServer
) -> None:
    with LiveServer(bundle=tiny_bundle, **FAST) as srv:
        cam = register(srv, rtsp.url, "hall").json()

        async def viewer() -> tuple[Any, list[dict[str, Any]]]:
            _, frame, messages = await watch_camera(srv.url, cam["id"])
            return frame, messages

        async def two() -> list[tuple[Any, list[dict[str, Any]]]]:
            return list(await asyncio.gather(viewer(), viewer()))

        for frame, messages in asyncio.run(two()):
            assert (frame.width, frame.height) == (320, 240)
            scores = [m for m in messages if m["type"] == "score"]
            assert scores and all(m["stream"] == cam["id"] for m in scores)
        # One decode thread for the camera however many viewers.
        assert len([t for t in threading.enumerate() if t.name == f"rtsp-{cam['id']}"]) == 1
        r = httpx.post(
            srv.url + "/offer",
            json={"sdp": "v=0\r\nm=video 9 x\r\n", "type": "offer", "camera": "nope"},
        )
        assert r.status_code == 404


def test_nonref_skip_rule() -> None:
    """Issue #18: a camera's decoder skips non-reference frames only while it sends at least 4x
    the analysis rate and nobody watches its video; a viewer turns it off at once; a stream left
    with fewer than 1.5x the analysis rate decodes every frame again, for good."""
    from types import SimpleNamespace

    from stream_server.shell.cameras import NonRefSkip

    cc = SimpleNamespace(skip_frame="DEFAULT")
    skip = NonRefSkip(5.0)

    def second(fps: int, start: float, watched: bool = False) -> float:
        for i in range(fps):
            skip.frame(cc, start + i / fps, watched)
        return start + 1.0

    t = second(30, 0.0)
    t = second(30, t)  # one whole second measured at 30 fps: skip
    assert skip.on and cc.skip_frame == "NONREF"
    skip.frame(cc, t, watched=True)  # a viewer: every frame, at once
    assert not skip.on and cc.skip_frame == "DEFAULT"
    t = second(30, second(30, t + 0.01, watched=True), watched=True)
    assert not skip.on  # not while watched
    t = second(30, second(30, t))
    assert skip.on
    t = second(6, second(6, t))  # only 6 fps left (< 1.5 x 5): back to every frame, for good
    assert not skip.on and skip.too_sparse
    second(30, second(30, t))
    assert not skip.on
    slow = NonRefSkip(5.0)
    for i in range(60):
        slow.frame(cc, i / 15, False)  # a 15 fps camera (< 4 x 5): never
    assert not slow.on


def test_a_camera_with_b_frames_decodes_fewer_frames_and_is_analysed_as_often(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A 30 fps camera whose H.264 has B-frames (x264, no B-pyramid: 2 of 3 frames are not
    referenced): its decoder skips them, so the server decodes about 10 frames/s, and the
    analysis still gets its 5 frames/s."""
    clip = write_video(
        tmp_path / "bframes.mp4",
        face_frames(90, size=(320, 240)) * 10,
        fps=30,
        options={"g": "30", "bf": "2", "x264-params": "b-pyramid=none"},
    )
    with RtspServer(clip, free_port()) as cam, LiveServer(bundle=tiny_bundle, **FAST) as srv:
        c = register(srv, cam.url).json()
        feed = Feed(f"{srv.url}/v1/cameras/{c['id']}/events")
        try:
            view = poll(
                lambda: httpx.get(f"{srv.url}/v1/cameras/{c['id']}").json(),
                20,
                every=0.2,
                until=lambda v: v["status"] == "live" and 0 < v["fps"] < 16,
            )
            assert 5 <= view["fps"] < 16, view  # ~10 of 30 decoded
            n0, t0 = len([e for e in feed.events if e[0] == "score"]), time.monotonic()
            time.sleep(3.0)  # a measuring window, not a deadline
            n1, t1 = len([e for e in feed.events if e[0] == "score"]), time.monotonic()
            assert (n1 - n0) / (t1 - t0) >= 3.5, (n1 - n0, t1 - t0)
        finally:
            feed.close()


def test_each_viewer_relays_its_own_copy_of_the_camera_frame() -> None:
    """Viewers of one camera share its decoded frame; each viewer's track stamps its own pts,
    so each must get its own frame. (PyAV's reformat to the same format returns the frame
    itself: two viewers stamped pts on one frame, libvpx then refused a frame whose pts ran
    backwards and that viewer's video stopped.)"""
    import av
    import numpy as np

    from stream_server.shell.webrtc import CameraTrack

    class Camera:  # what a CameraTrack reads of a camera (the WatchedCamera protocol)
        def __init__(self) -> None:
            pic = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            self.latest = av.VideoFrame.from_ndarray(pic, format="rgb24").reformat(format="yuv420p")
            self.latest.pts = 12345
            self.frame_seq = 1
            self.new_frame = asyncio.Event()

    async def run() -> None:
        cam = Camera()
        a, b = CameraTrack(cam), CameraTrack(cam)  # type: ignore[arg-type]
        b.start -= 10.0  # b has been watching 10 s longer
        fa, fb = await a.recv(), await b.recv()
        assert fa is not cam.latest and fb is not cam.latest and fa is not fb
        assert cam.latest.pts == 12345  # the camera's own frame is untouched
        assert fb.pts is not None and fa.pts is not None and fb.pts - fa.pts > 8 * 90000
        src = cam.latest.to_ndarray(format="rgb24").astype(int)
        assert np.abs(fa.to_ndarray(format="rgb24").astype(int) - src).max() <= 2

    asyncio.run(run())
