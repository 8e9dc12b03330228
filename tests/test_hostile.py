"""Hostile clients against real components on loopback (issue 14): WebRTC peers that never
finish setup or never send video, bad BUNDLE groups, raw H.264 files, chunked and trickling
upload bodies, idle HTTP connections, and shutdown with an upload in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from bench.media import face_frames
from tests.conftest import LiveServer, wait_serving
from tests.exposition import scrape
from tests.rtc_client import ClientPeer


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
        # The candidate-less peer always runs into the deadline; the closed one may instead fail
        # ICE first (its port is gone). The refused third never held a slot.
        assert 1 <= scrape(srv.url, SETUP, default=0.0) <= 2
        assert scrape(srv.url, MEDIA, default=0.0) == 0


def test_connected_peer_sending_no_video_is_closed_and_a_sending_one_is_not(
    tiny_bundle: Path,
) -> None:
    with LiveServer(bundle=tiny_bundle, max_streams=2, peer_idle_seconds=2.0) as srv:

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
            assert await wait_for(lambda: idle_id not in srv.service.streams, within=8.0)
            # The peer that sends video outlives several idle deadlines and keeps scoring.
            before = len(active.scores())
            await asyncio.sleep(4.5)
            assert active.answer["stream"] in srv.service.streams
            assert len(active.scores()) > before
            await active.close()
            await idle.close()

        asyncio.run(run())
        assert scrape(srv.url, MEDIA, default=0.0) == 1
        assert scrape(srv.url, SETUP, default=0.0) == 0


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
    from stream_server.core.frames import DEFAULT_RATE, StreamClock

    clock = StreamClock(10.0)
    assert [round(clock(None), 6) for _ in range(3)] == [0.0, 0.1, 0.2]
    assert round(clock(5.0), 6) == 0.3  # a timestamped frame continues one frame later
    assert round(clock(5.5), 6) == 0.8
    assert StreamClock().rate == StreamClock(0).rate == DEFAULT_RATE == 25.0
    timed = StreamClock()
    assert [timed(t) for t in (2.0, 2.5)] == [0.0, 0.5]


def test_raw_h264_is_analysed_like_the_same_clip_in_mp4(tmp_path: Path) -> None:
    import av

    from bench.media import write_video
    from stream_server.core.frames import sample_frames

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
    from bench.media import write_video

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


# -- helpers for raw HTTP --------------------------------------------------------------------
BOUNDARY = "hostileboundary"


def multipart_head() -> bytes:
    """The start of a multipart body: the file part's headers; its bytes follow."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def request_head(port: int, headers: dict[str, str]) -> bytes:
    lines = [
        "POST /v1/analyze HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
    ] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_reply(sock: socket.socket, within: float = 15.0) -> bytes:
    sock.settimeout(within)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                n = next(
                    (
                        int(v)
                        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                        if k.strip().lower() == b"content-length"
                    ),
                    None,
                )
                if n is not None and len(rest) >= n:
                    break
    return data


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


class LogCatcher(logging.Handler):
    """Collects records at WARNING and above from uvicorn and the service."""

    NAMES = ("", "uvicorn", "uvicorn.error", "stream_server", "starlette")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> LogCatcher:
        for n in self.NAMES:
            logging.getLogger(n).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for n in self.NAMES:
            logging.getLogger(n).removeHandler(self)

    def tracebacks(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.exc_info or "Traceback" in r.getMessage()]


def small_clip(tmp_path: Path, n: int = 30) -> Path:
    from bench.media import write_video

    return write_video(tmp_path / "small.mp4", face_frames(n, size=(160, 120)), fps=15)


# -- 3. Upload size enforced on the bytes read --------------------------------------------------
def test_chunked_uploads_cannot_pass_the_size_limit(tiny_bundle: Path, tmp_path: Path) -> None:
    limit = 64 * 1024
    clip = small_clip(tmp_path)
    assert clip.stat().st_size < limit
    with LiveServer(bundle=tiny_bundle, max_upload_bytes=limit) as srv, LogCatcher() as logs:
        # Chunked framing with a small declared Content-Length (which the size check trusted).
        with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
            s.sendall(
                request_head(srv.port, {"Content-Length": "100", "Transfer-Encoding": "chunked"})
            )
            part = multipart_head() + b"\0" * 16384
            sent = 0
            with contextlib.suppress(OSError):
                while sent < 20 * limit:
                    s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                    sent += len(part)
            reply = read_reply(s)
        assert status_of(reply) in (400, 413), reply[:300]

        # Chunked with no Content-Length at all, from a real client.
        def body() -> Iterator[bytes]:
            yield multipart_head()
            for _ in range(40):
                yield b"\0" * 16384
            yield f"\r\n--{BOUNDARY}--\r\n".encode()

        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        r = httpx.post(srv.url + "/v1/analyze", content=body(), headers=headers, timeout=30)
        assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["error"], r.text
        assert (
            scrape(srv.url, 'deepfake_requests_refused_total{reason="too_large"}', default=0.0) >= 1
        )

        # A chunked upload within the limit is analysed (it used to need Content-Length).
        def clip_body() -> Iterator[bytes]:
            data = clip.read_bytes()
            yield multipart_head()
            for i in range(0, len(data), 4096):
                yield data[i : i + 4096]
            yield f"\r\n--{BOUNDARY}--\r\n".encode()

        r = httpx.post(srv.url + "/v1/analyze", content=clip_body(), headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["frames_analysed"] >= 5, r.text
        assert not logs.tracebacks(), logs.tracebacks()


# -- 5. Slow uploads: slot after the body, body deadline, quiet disconnects ---------------------
def test_trickling_upload_neither_blocks_others_nor_lives_past_the_body_deadline(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    clip = small_clip(tmp_path)
    with (
        LiveServer(bundle=tiny_bundle, max_analyses=1, body_timeout_seconds=3.0) as srv,
        LogCatcher() as logs,
    ):
        replies: list[bytes] = []

        def trickle() -> None:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
                s.sendall(request_head(srv.port, {"Content-Length": "100000"}))
                s.sendall(multipart_head())
                with contextlib.suppress(OSError):
                    for _ in range(100):  # one byte every 0.1 s: 10 s, far past the deadline
                        s.sendall(b"x")
                        time.sleep(0.1)
                        s.settimeout(0.001)
                        with contextlib.suppress(TimeoutError, BlockingIOError):
                            if s.recv(1, socket.MSG_PEEK):
                                break
                        s.settimeout(20)
                replies.append(read_reply(s))

        threads = [threading.Thread(target=trickle) for _ in range(2)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(0.5)
        for _ in range(2):  # two tricklers and max_analyses=1: others are still analysed
            with clip.open("rb") as f:
                r = httpx.post(srv.url + "/v1/analyze", files={"file": ("c.mp4", f)}, timeout=60)
            assert r.status_code == 200, r.text
        for t in threads:
            t.join(20)
        elapsed = time.monotonic() - t0
        assert len(replies) == 2 and all(status_of(x) == 408 for x in replies), replies
        assert b"not received within 3 s" in replies[0]
        assert elapsed < 8, elapsed
        assert (
            scrape(srv.url, 'deepfake_requests_refused_total{reason="timeout"}', default=0.0) == 2
        )

        # A client that goes away mid-body: no traceback, counted.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(request_head(srv.port, {"Content-Length": "100000"}))
            s.sendall(multipart_head() + b"\0" * 5000)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        name = 'deepfake_requests_refused_total{reason="disconnected"}'
        while scrape(srv.url, name, default=0.0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scrape(srv.url, name, default=0.0) == 1
        assert not logs.tracebacks(), logs.tracebacks()
        h = httpx.get(srv.url + "/healthz").json()
        assert h["status"] == "ok"


# -- 6. Idle HTTP connections are closed; connections are capped --------------------------------
class HardenedServer(LiveServer):
    """LiveServer running the server `deepfake-serve` builds (stream_server.shell.server)."""

    def __init__(self, **overrides: object) -> None:
        from stream_server.shell.server import build_server

        super().__init__(**overrides)
        self.server = build_server(
            self.app,
            self.service.settings,
            self.service.begin_shutdown,
            log_level="warning",
            port=self.port,
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes `sock` (reading and discarding what it sends), or None."""
    t0 = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - t0 < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def test_idle_connections_are_closed_and_capped(tiny_bundle: Path) -> None:
    with HardenedServer(bundle=tiny_bundle, keep_alive_seconds=1.0, max_connections=4) as srv:
        addr = ("127.0.0.1", srv.port)
        # Kept alive after a response, then idle.
        kept = socket.create_connection(addr)
        kept.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
        assert read_reply(kept).startswith(b"HTTP/1.1 200")
        # Connected and silent; and a request head that never ends.
        silent = socket.create_connection(addr)
        partial = socket.create_connection(addr)
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        waits = [closed_within(s, 4.0) for s in (kept, silent, partial)]
        assert all(w is not None and w < 3.0 for w in waits), waits
        for s in (kept, silent, partial):
            s.close()

        # At most 4 open: a fifth is closed on arrival, long before the idle deadline.
        held = [socket.create_connection(addr) for _ in range(4)]
        time.sleep(0.2)
        extra = socket.create_connection(addr)
        w = closed_within(extra, 2.0)
        assert w is not None and w < 0.5, w
        extra.close()
        for s in held:
            assert closed_within(s, 4.0) is not None
            s.close()
        # Those gone, the server answers again.
        assert httpx.get(srv.url + "/healthz", timeout=10).json()["status"] == "ok"


# -- 16. Shutdown with uploads in flight: 503s, no traceback, exit 0 ----------------------------
def test_sigterm_with_uploads_in_flight_exits_0_without_tracebacks(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from bench.media import write_video
    from tests.conftest import free_port

    root = Path(__file__).resolve().parent.parent
    long_clip = write_video(
        tmp_path / "long.mp4", face_frames(40, size=(160, 120)) * 30, fps=10
    )  # 120 s: 600 analysed frames, several seconds of analysis
    port = free_port()
    env = {
        **os.environ,
        "DEEPFAKE_BUNDLE": str(tiny_bundle),
        "DEEPFAKE_MAX_VIDEO_SECONDS": "1000",
    }
    p = subprocess.Popen(
        [sys.executable, "-m", "stream_server", "--port", str(port)],
        cwd=root,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_serving(p, f"http://127.0.0.1:{port}")
        results: dict[str, object] = {}

        def analysed() -> None:
            with long_clip.open("rb") as f:
                try:
                    r = httpx.post(
                        f"http://127.0.0.1:{port}/v1/analyze",
                        files={"file": ("long.mp4", f)},
                        timeout=60,
                    )
                    results["analysed"] = (r.status_code, r.json())
                except httpx.HTTPError as exc:
                    results["analysed"] = exc

        def trickled() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(request_head(port, {"Content-Length": "100000"}))
                s.sendall(multipart_head())
                s.settimeout(0.2)
                reply = b""
                for _ in range(100):
                    with contextlib.suppress(OSError):
                        s.sendall(b"x")
                    try:
                        reply = s.recv(65536)
                        break
                    except TimeoutError:
                        continue
                results["trickled"] = reply + read_reply(s, 5.0)

        threads = [threading.Thread(target=analysed), threading.Thread(target=trickled)]
        for t in threads:
            t.start()
        # Wait until the long clip is being analysed (the engine has run); the trickle is mid-body.
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while (
            scrape(url, "deepfake_batch_size_count", default=0.0) < 3
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert "analysed" not in results, results
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=15)
        took = time.monotonic() - t0
        for t in threads:
            t.join(20)
        assert p.returncode == 0, (p.returncode, err[-2000:])
        assert took < 5, took
        assert "Traceback" not in err and "CancelledError" not in err, err[-3000:]
        trickle = results["trickled"]
        assert isinstance(trickle, bytes) and status_of(trickle) == 503, trickle
        assert b"shutting down" in trickle
        status, body = results["analysed"]  # type: ignore[misc]
        assert (status, body) == (503, {"error": "server is shutting down"}), (status, body)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
