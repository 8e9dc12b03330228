"""README claims that no other test pins: --max-frame-side and --analysis-fps on a live stream,
--analysis-fps on uploads,
--cameras-file, --ice-servers, --max-analyses (429), and deepfake-scan's exit-code precedence
(3 over 1) and "no video files found" (2)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.media import face_frames, write_video
from tests.conftest import LiveServer
from tests.rtc_client import ClientPeer

ROOT = Path(__file__).resolve().parent.parent


def test_max_frame_side_and_analysis_fps_override_on_a_live_stream(tiny_bundle: Path) -> None:
    """640x480 frames with --max-frame-side 320 are analysed at 320x240; --analysis-fps 2.5
    replaces the bundle's 5 fps in the answer, /healthz and the spacing of analysed frames."""
    shapes: list[tuple[int, ...]] = []
    with LiveServer(bundle=tiny_bundle, max_frame_side=320, analysis_fps=2.5) as srv:
        assert srv.service.bundle.analysis_fps == 5.0  # the override is what differs

        async def run() -> ClientPeer:
            peer = ClientPeer(srv.url, face_frames(60, size=(640, 480)), fps=15)
            await peer.connect()
            stream = srv.service.streams[peer.answer["stream"]]
            stream.taps.append(lambda rgb, result, msg: shapes.append(rgb.shape))
            await peer.wait_scores(7, within=30.0)
            await peer.close()
            return peer

        peer = asyncio.run(run())
        assert httpx.get(srv.url + "/healthz").json()["analysis_fps"] == 2.5
    assert peer.answer["analysis_fps"] == 2.5
    scores = peer.scores()
    assert len(scores) >= 7
    assert shapes and set(shapes) == {(240, 320, 3)}, set(shapes)
    assert all(len(m["faces"]) == 1 for m in scores)  # still found at the smaller size
    # 0.4 s apart in stream time, not 0.2: per sampling interval, counting the frames the
    # server reports dropped between two analysed ones (a busy machine drops, and says so).
    gaps = np.diff([m["t"] for m in scores])
    intervals = 1 + np.diff([m["dropped"] for m in scores])
    assert 0.3 <= float(np.median(gaps / intervals)) <= 0.55, (gaps, intervals)


def test_analysis_fps_override_applies_to_uploads(tiny_bundle: Path, tmp_path: Path) -> None:
    """README: --analysis-fps overrides the bundle's rate for uploads too. A 4 s clip posted to
    POST /v1/analyze is analysed at 2.5 frames/s (10 frames), not the bundle's 5 (20)."""
    clip = write_video(tmp_path / "face.mp4", face_frames(60, size=(320, 240)), fps=15)
    counts = {}
    for fps in (None, 2.5):
        with LiveServer(bundle=tiny_bundle, analysis_fps=fps) as srv, clip.open("rb") as f:
            r = httpx.post(
                srv.url + "/v1/analyze", files={"file": ("face.mp4", f, "video/mp4")}, timeout=120
            )
            assert r.status_code == 200, r.text
            counts[fps] = r.json()["frames_analysed"]
    assert counts == {None: 20, 2.5: 10}, counts


def test_ice_servers_reach_the_peer_configuration_and_default_to_none() -> None:
    from stream_server.shell.settings import Settings, parse_settings
    from stream_server.shell.webrtc import rtc_configuration

    assert rtc_configuration(Settings()).iceServers == []  # no public STUN by default
    s = parse_settings(["--ice-servers", "stun:stun.invalid:3478, turn:turn.invalid:3478"], {})
    urls = [srv.urls for srv in rtc_configuration(s).iceServers]
    assert urls == ["stun:stun.invalid:3478", "turn:turn.invalid:3478"]


@pytest.mark.rtsp
def test_cameras_file_registers_cameras_at_start_up(tiny_bundle: Path, tmp_path: Path) -> None:
    """Cameras listed in --cameras-file are registered (bad entries refused with a log line) and
    are monitored: the camera connects and scores arrive."""
    from tests.conftest import free_port
    from tests.rtsp import RtspServer
    from tests.test_rtsp import Feed

    clip = write_video(
        tmp_path / "cam.mp4",
        face_frames(60, size=(320, 240)) * 3,
        fps=15,
        options={"tune": "zerolatency", "g": "15"},
    )
    with RtspServer(clip, free_port()) as rtsp:
        cams = tmp_path / "cameras.json"
        cams.write_text(
            json.dumps([{"url": rtsp.url, "name": "lobby"}, {"url": "http://x/y", "name": "bad"}])
        )
        with LiveServer(bundle=tiny_bundle, cameras_file=cams, camera_allow=("127.0.0.1",)) as srv:
            listed = httpx.get(srv.url + "/v1/cameras").json()["cameras"]
            assert [c["name"] for c in listed] == ["lobby"], listed
            feed = Feed(f"{srv.url}/v1/cameras/{listed[0]['id']}/events")
            try:
                assert feed.wait(lambda e: e[0] in ("connected", "score"), 20), feed.events
                score = feed.wait(lambda e: e[0] == "score", 20)
            finally:
                feed.close()
            assert score is not None and len(score[1]["faces"]) == 1, feed.events


def test_max_analyses_refuses_a_second_upload_with_429(tiny_bundle: Path, tmp_path: Path) -> None:
    """With --max-analyses 1 and a slowed engine (fault injection), an upload sent while another
    is being analysed gets 429; once the first is done the next is analysed."""
    clip = write_video(tmp_path / "face.mp4", face_frames(30, size=(320, 240)), fps=15)
    with LiveServer(bundle=tiny_bundle, max_analyses=1) as srv:
        engine = srv.service.engine
        real = engine._process
        busy = threading.Event()

        def slow(batch: Any) -> None:
            busy.set()
            time.sleep(0.25)
            real(batch)

        engine._process = slow  # type: ignore[method-assign]

        def post() -> httpx.Response:
            with clip.open("rb") as f:
                return httpx.post(
                    srv.url + "/v1/analyze",
                    files={"file": ("face.mp4", f, "video/mp4")},
                    timeout=120,
                )

        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.append(post()))
        t.start()
        assert busy.wait(30), "the first upload's analysis never reached the engine"
        second = post()
        t.join(120)
        assert second.status_code == 429, second.text
        assert "1 analyses are already running" in second.json()["error"]
        assert first and first[0].status_code == 200, first
        third = post()
        assert third.status_code == 200, third.text
        assert third.json()["verdict"] in ("real", "fake")


def test_scan_exit_codes_unreadable_wins_over_fake_and_no_videos_is_2(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from tests.test_verdict import scan_cli, with_threshold

    fake = with_threshold(tiny_bundle, tmp_path / "always-fake", 1e-6)
    clip = write_video(tmp_path / "face.mp4", face_frames(30, size=(320, 240)), fps=15)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 1000)
    r = scan_cli(fake, clip, broken)
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])  # 3 (unreadable) over 1 (fake)
    face, bad = json.loads(r.stdout)["results"]
    assert face["verdict"] == "fake" and "error" in bad
    # Only the fake: 1; an empty folder: 2 with the reason.
    assert scan_cli(fake, clip).returncode == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no videos here")
    r = scan_cli(fake, empty)
    assert r.returncode == 2
    assert r.stderr.strip() == "deepfake-scan: error: no video files found in the given paths"


def test_capture_hints_are_twice_the_analysis_rate_at_most_30_and_no_larger_than_analysed() -> None:
    """README, GET /v1/config `capture`: 640x480 or less, preview 30 fps, `max_fps` = analysis
    fps x 2, at most 30, `max_kbps` = --sender-max-kbps (350 by default, 0 = no cap)."""
    from stream_server.shell.api import capture_hints
    from stream_server.shell.settings import Settings

    assert Settings.__dataclass_fields__["sender_max_kbps"].default == 350
    assert capture_hints(5.0, 1280, 350) == {
        "width": 640,
        "height": 480,
        "frame_rate": 30,
        "max_fps": 10.0,
        "max_kbps": 350,
    }
    assert capture_hints(2.5, 320, 0) == {
        "width": 320,
        "height": 240,
        "frame_rate": 30,
        "max_fps": 5.0,
        "max_kbps": 0,
    }
    assert capture_hints(24.0, 1280, 350)["max_fps"] == 30.0
