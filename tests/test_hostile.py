"""Hostile clients against real components on loopback (issue 14): WebRTC peers that never
finish setup or never send video, bad BUNDLE groups, raw H.264 files, chunked and trickling
upload bodies, idle HTTP connections, and shutdown with an upload in flight."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from tests.conftest import LiveServer
from tests.media import face_frames
from tests.rtc_client import ClientPeer


def metric(url: str, name: str) -> float:
    """One sample's value from /metrics (0.0 when absent)."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    return 0.0


async def wait_for(cond: object, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(cond())  # type: ignore[operator]


async def post_offer(
    url: str, pc: RTCPeerConnection, strip_candidates: bool = False
) -> httpx.Response:
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    if strip_candidates:  # a trickle-style offer whose candidates never follow
        sdp = "\r\n".join(
            line
            for line in sdp.split("\r\n")
            if not line.startswith(("a=candidate", "a=end-of-candidates"))
        )
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        return await c.post("/offer", json={"sdp": sdp, "type": "offer"})


def new_pc() -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("scores")
    return pc


SETUP = 'deepfake_peers_closed_total{reason="setup_timeout"}'
MEDIA = 'deepfake_peers_closed_total{reason="media_timeout"}'


# -- 1. WebRTC lock-out: setup and media-inactivity deadlines ----------------------------------
def test_peers_that_never_connect_free_their_slots(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, max_streams=2, peer_setup_seconds=1.0) as srv:

        async def run() -> None:
            # A browser closed mid-setup: the offer is answered, the local peer closes at once.
            gone = new_pc()
            gone.addTrack(VideoStreamTrack())
            r1 = await post_offer(srv.url, gone)
            await gone.close()
            # A trickle-style offer without candidates whose peer never applies the answer.
            silent = new_pc()
            silent.addTrack(VideoStreamTrack())
            r2 = await post_offer(srv.url, silent, strip_candidates=True)
            assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
            assert len(srv.service.streams) == 2
            third = new_pc()
            third.addTrack(VideoStreamTrack())
            r3 = await post_offer(srv.url, third)
            await third.close()
            assert r3.status_code == 503, r3.text  # locked out, for now
            assert await wait_for(lambda: not srv.service.streams, within=6.0), srv.service.streams
            await silent.close()
            # The freed slots serve a real peer.
            peer = ClientPeer(srv.url, face_frames(20, size=(320, 240)), fps=10)
            await peer.connect()
            assert await peer.wait_scores(2, within=10.0)
            await peer.close()

        asyncio.run(run())
        assert metric(srv.url, SETUP) == 2  # the refused third never held a slot
        assert metric(srv.url, MEDIA) == 0


def test_connected_peer_sending_no_video_is_closed_and_a_sending_one_is_not(
    tiny_bundle: Path,
) -> None:
    with LiveServer(bundle=tiny_bundle, max_streams=2, peer_idle_seconds=1.5) as srv:

        async def run() -> None:
            idle = new_pc()
            idle.addTransceiver("video", direction="sendonly")  # a video m-line, never a frame
            r = await post_offer(srv.url, idle)
            assert r.status_code == 200, r.text
            idle_id = r.json()["stream"]
            await idle.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))
            active = ClientPeer(srv.url, face_frames(20, size=(320, 240)), fps=10)
            await active.connect()
            assert await wait_for(lambda: idle.connectionState == "connected", within=10.0)
            assert idle_id in srv.service.streams
            assert await wait_for(lambda: idle_id not in srv.service.streams, within=6.0)
            # The peer that sends video outlives several idle deadlines and keeps scoring.
            before = len(active.scores())
            await asyncio.sleep(3.5)
            assert active.answer["stream"] in srv.service.streams
            assert len(active.scores()) > before
            await active.close()
            await idle.close()

        asyncio.run(run())
        assert metric(srv.url, MEDIA) == 1
        assert metric(srv.url, SETUP) == 0


# -- 15. BUNDLE naming a missing mid: 400, one line --------------------------------------------
def test_bundle_group_naming_a_missing_mid_is_a_400_with_one_line(live_server: LiveServer) -> None:
    async def offer() -> str:
        pc = new_pc()
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        await pc.close()
        return sdp

    sdp = asyncio.run(offer())
    group = next(line for line in sdp.split("\r\n") if line.startswith("a=group:BUNDLE"))
    for bad in ("a=group:BUNDLE 7 0 1", "a=group:BUNDLE 0 1 7"):
        r = httpx.post(
            live_server.url + "/offer",
            json={"sdp": sdp.replace(group, bad), "type": "offer"},
            timeout=30,
        )
        assert r.status_code == 400, r.text
        msg = r.json()["error"]
        assert msg == "malformed offer: BUNDLE group names mid '7', which no media has", msg
    assert not live_server.service.streams
    assert httpx.get(live_server.url + "/healthz").json()["status"] == "ok"


# -- 2. Raw H.264 (no timestamps): timed from the frame rate -----------------------------------
def test_stream_clock_times_untimed_frames_from_the_rate() -> None:
    from stream_server.frames import DEFAULT_RATE, StreamClock

    clock = StreamClock(10.0)
    assert [round(clock(None), 6) for _ in range(3)] == [0.0, 0.1, 0.2]
    assert round(clock(5.0), 6) == 0.3  # a timestamped frame continues one frame later
    assert round(clock(5.5), 6) == 0.8
    assert StreamClock().rate == StreamClock(0).rate == DEFAULT_RATE == 25.0
    timed = StreamClock()
    assert [timed(t) for t in (2.0, 2.5)] == [0.0, 0.5]


def test_raw_h264_is_analysed_like_the_same_clip_in_mp4(tmp_path: Path) -> None:
    import av

    from stream_server.frames import sample_frames
    from tests.media import write_video

    frames = face_frames(45, size=(160, 120))
    raw = write_video(tmp_path / "clip.h264", frames, fps=15, codec="h264", format="h264")
    mp4 = write_video(tmp_path / "clip.mp4", frames, fps=15)
    with av.open(str(raw)) as c:  # the premise: the raw stream carries no timestamps
        assert all(f.pts is None for f in c.decode(c.streams.video[0]))
    t_raw = [t for t, _ in sample_frames(raw, 5.0)]
    t_mp4 = [t for t, _ in sample_frames(mp4, 5.0)]
    assert len(t_raw) == len(t_mp4) == 15
    assert [round(t, 3) for t in t_raw] == [round(t, 3) for t in t_mp4]


def test_raw_h264_upload_sampling_and_duration_limit(tiny_bundle: Path, tmp_path: Path) -> None:
    from tests.media import write_video

    frames = face_frames(45, size=(160, 120))
    raw = write_video(tmp_path / "clip.h264", frames, fps=15, codec="h264", format="h264")
    mp4 = write_video(tmp_path / "clip.mp4", frames, fps=15)
    # 300 frames at 15 fps: 20 s of video, over a 10 s limit.
    long_raw = write_video(
        tmp_path / "long.h264", (frames * 7)[:300], fps=15, codec="h264", format="h264"
    )
    with LiveServer(bundle=tiny_bundle, max_video_seconds=10.0) as srv:

        def upload(path: Path) -> httpx.Response:
            with path.open("rb") as f:
                return httpx.post(
                    srv.url + "/v1/analyze", files={"file": (path.name, f)}, timeout=120
                )

        a, b = upload(raw), upload(mp4)
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        ra, rb = a.json(), b.json()
        assert ra["frames_analysed"] == rb["frames_analysed"] == 15
        assert abs(ra["duration_s"] - rb["duration_s"]) < 0.15, (ra, rb)
        assert ra["verdict"] == rb["verdict"]
        assert abs(ra["p_fake"] - rb["p_fake"]) < 0.05, (ra["p_fake"], rb["p_fake"])
        r = upload(long_raw)
        assert r.status_code == 413, r.text
        assert "longer than the limit of 10 s" in r.json()["error"]
