"""Hostile senders and requests against real components on loopback (issue 14, items 4, 8, 13
and 17): a looping WebRTC sender whose timestamps jump back, the token in the access log, an
offer with hundreds of remote candidates, the trailing-slash redirect, huge frame headers and
clear upload errors."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from bench.client import FramesTrack
from bench.media import face_frames
from tests.conftest import LiveServer
from tests.exposition import scrape
from tests.rtc_client import ClientPeer
from tests.test_hostile import wait_for


class LoopingTrack(FramesTrack):
    """A looping file sent as it is stored (as `ffmpeg -stream_loop -1 -c copy` would): VP8
    packets encoded once, whose timestamps go back to 0 every `loop` frames. aiortc sends
    pre-encoded packets with their own pts as RTP timestamps (its encoder would refuse pts that
    go back, so frames cannot show this)."""

    def __init__(self, frames: list[np.ndarray], fps: int, loop: int) -> None:
        super().__init__(frames, fps)
        self.loop = loop
        h, w = frames[0].shape[:2]
        self.codec = av.CodecContext.create("libvpx", "w")
        self.codec.width, self.codec.height = w, h
        self.codec.pix_fmt = "yuv420p"
        self.codec.time_base = Fraction(1, fps)
        self.codec.gop_size = loop  # a key frame where each loop starts
        self.codec.bit_rate = 500_000
        self.codec.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}

    async def recv(self) -> av.Packet:  # type: ignore[override]
        while True:
            frame = await super().recv()
            n = self.i - 1
            frame.pts, frame.time_base = n, Fraction(1, self.fps)
            packets = self.codec.encode(frame.reformat(format="yuv420p"))
            if packets:
                packet = packets[0]
                packet.pts = int((n % self.loop) * 90000 / self.fps)
                packet.time_base = Fraction(1, 90000)
                return packet


# -- 4. RTP clock jumps: a monotonic per-stream clock, a status message -------------------------
def test_stream_clock_rebases_backward_and_forward_jumps() -> None:
    from stream_server.core.frames import StreamClock

    clock = StreamClock(10.0, max_jump=5.0)
    assert [clock(t, now=t) for t in (100.0, 100.1, 100.2)] == pytest.approx([0.0, 0.1, 0.2])
    assert clock.jumps == 0
    # Back to 0: the clock goes on one frame later, never back.
    assert clock(0.0, now=100.3) == pytest.approx(0.3)
    assert clock(0.1, now=100.4) == pytest.approx(0.4)
    assert clock.jumps == 1
    # A legitimate pause (media and wall clock advance together) is not a jump.
    assert clock(20.1, now=120.4) == pytest.approx(20.4)
    assert clock.jumps == 1
    # A jump of hours in media time with 0.1 s of wall time: re-based on the wall clock.
    assert clock(50000.0, now=120.5) == pytest.approx(20.5)
    assert clock.jumps == 2
    # A tiny step back (reordering) is held, not a jump.
    assert clock(49999.99, now=120.6) == pytest.approx(20.5)
    assert clock.jumps == 2
    # Without max_jump (files), forward gaps are kept; backward steps are still re-based.
    files = StreamClock(10.0)
    assert [files(t) for t in (0.0, 60.0, 1.0)] == pytest.approx([0.0, 60.0, 60.1])
    assert files.jumps == 1


def test_looping_sender_keeps_being_scored_and_is_told(tiny_bundle: Path) -> None:
    """aiortc's receiver reads an RTP timestamp that goes back as a 32-bit wrap, so each loop
    arrives as a jump of about +47,722 s; other sources see it go back. Either way the stream
    clock re-bases: scores keep their rate, `t` stays near the wall time and never goes back,
    and a `reconnected` status message says why."""
    fps, loop = 10, 15  # the pts go back to 0 every 1.5 s
    with LiveServer(bundle=tiny_bundle) as srv:

        async def run() -> None:
            peer = ClientPeer(srv.url, face_frames(20, size=(320, 240)), fps=fps)
            peer.track = LoopingTrack(peer.track.frames, fps, loop)
            t0 = time.monotonic()
            await peer.connect()

            def reconnects() -> list[dict[str, object]]:
                return [m for m in peer.messages if m.get("type") == "reconnected"]

            def jumps() -> float:
                return scrape(srv.url, "deepfake_stream_clock_jumps_total", default=0.0)

            # Scores in the first loop, then until three more jumps have happened.
            assert await wait_for(lambda: len(reconnects()) >= 1, within=15.0), peer.messages
            before = len(peer.scores())
            first_jump = len(peer.messages)
            assert await wait_for(lambda: len(reconnects()) >= 4, within=20.0), reconnects()
            elapsed = time.monotonic() - t0
            after = [m for m in peer.messages[first_jump:] if m.get("type") == "score"]
            await peer.close()
            # Three whole loops (4.5 s of video at 5 analysed fps: ~22 frames) were scored after
            # the first jump, as the first loop was.
            per_loop = len(after) / 3
            expected = loop * srv.service.fps / fps
            assert before >= 0.6 * expected, (before, expected)
            assert per_loop >= 0.6 * expected, (per_loop, expected)
            ts = [float(m["t"]) for m in peer.scores()]  # type: ignore[arg-type]
            assert ts == sorted(ts), ts  # stream time never goes back
            assert ts[-1] <= elapsed + 1.0, (ts[-1], elapsed)  # and never runs off
            detail = str(reconnects()[0]["detail"])
            assert "source clock jumped" in detail and "re-based" in detail, detail
            assert jumps() >= 4

        asyncio.run(run())


# -- 8. The token never lands in a log line -----------------------------------------------------
class ServeProcess:
    """`python -m stream_server` as a user runs it, on a loopback port, stdout and stderr
    (uvicorn's access log and everything else) captured."""

    def __init__(self, bundle: Path, *args: str) -> None:
        import os
        import subprocess
        import sys

        from tests.conftest import ROOT, free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DEEPFAKE_BUNDLE": str(bundle), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_server", "--port", str(self.port), *args],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.output = ""

    def __enter__(self) -> ServeProcess:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return self
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"deepfake-serve did not start:\n{self.output}") from None
                time.sleep(0.2)

    def stop(self) -> str:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.output, _ = self.proc.communicate(timeout=15)
        except Exception:
            self.proc.kill()
            self.output, _ = self.proc.communicate()
        return self.output

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_token_in_the_query_string_never_reaches_the_log(tiny_bundle: Path) -> None:
    secret = "S3cretTokenValue-0123456789"
    with ServeProcess(tiny_bundle, "--token", secret, "--log-level", "debug") as srv:
        c = httpx.Client(base_url=srv.url, timeout=10)
        assert c.get(f"/v1/cameras?token={secret}").status_code == 200
        assert c.get(f"/v1/cameras?%74oken={secret}").status_code == 200  # decoded by the guard
        assert c.get(f"/v1/cameras?x=1&token={secret}x").status_code == 401
        assert c.get(f"/?token={secret}").status_code in (200, 404)
        assert c.get(f"/healthz?Token={secret}&other=kept").status_code == 200
        r = c.post(f"/offer?token={secret}", content=b"{", headers={"content-type": "text/x"})
        assert r.status_code == 415
        c.close()
    out = srv.output
    assert "/v1/cameras?token=[redacted]" in out, out[-3000:]  # the access log is on
    assert "other=kept" in out
    assert secret not in out, [line for line in out.splitlines() if secret in line]


# -- 13. Remote ICE candidates are capped ---------------------------------------------------------
def inflate_candidates(sdp: str, n: int, port0: int = 20000) -> str:
    """`sdp` with `n` made-up host candidates (loopback ports nobody listens on, all of lower
    priority than the real ones) inserted before the first media section's own candidates."""
    lines = sdp.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("a=candidate:"))
    fake = [
        f"a=candidate:fake{i} 1 udp {1000 + i} 127.0.0.1 {port0 + i} typ host" for i in range(n)
    ]
    return "\r\n".join(lines[:at] + fake + lines[at:])


def remote_candidates(pc: object) -> list[object]:
    """The remote candidates the server's peer connection kept (aioice's list)."""
    seen: dict[int, object] = {}
    for t in pc.getTransceivers():  # type: ignore[attr-defined]
        ice = t.receiver.transport.transport
        seen[id(ice)] = ice
    sctp = pc.sctp  # type: ignore[attr-defined]
    if sctp is not None:
        ice = sctp.transport.transport
        seen[id(ice)] = ice
    return [c for ice in seen.values() for c in ice._connection.remote_candidates]


def test_offer_with_800_candidates_keeps_the_best_32_and_connects(tiny_bundle: Path) -> None:
    import json

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from stream_server.shell.webrtc import cap_candidates

    with LiveServer(bundle=tiny_bundle) as srv:
        assert srv.service.settings.max_remote_candidates == 32

        async def run() -> None:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTrack(FramesTrack(face_frames(20, size=(320, 240)), fps=10))
            channel = pc.createDataChannel("scores")
            messages: list[dict[str, object]] = []
            channel.on("message", lambda data: messages.append(json.loads(data)))
            await pc.setLocalDescription(await pc.createOffer())
            sdp = inflate_candidates(pc.localDescription.sdp, 800)
            assert sdp.count("a=candidate:") >= 801 and len(sdp) < 64 * 1024
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                r = await c.post("/offer", json={"sdp": sdp, "type": "offer"})
            assert r.status_code == 200, r.text
            owner = srv.service.owners[r.json()["stream"]]
            kept = remote_candidates(owner.pc)  # type: ignore[attr-defined]
            ports = {c.port for c in kept}  # type: ignore[attr-defined]
            assert 0 < len(ports) <= 32, len(ports)
            # The real (highest-priority) candidate survived although it came after 800 others:
            # the peer connects and is scored.
            await pc.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))
            assert await wait_for(
                lambda: any(m.get("type") == "score" for m in messages), within=15.0
            ), messages
            await pc.close()

        asyncio.run(run())
    # The cap itself: distinct candidates, the best by priority, every section the same set.
    two = "\n".join(
        [
            "m=video",
            "a=candidate:a 1 udp 5 10.0.0.1 1 typ host",
            "a=candidate:b 1 udp 9 10.0.0.2 2 typ host",
            "a=candidate:c 1 udp 7 10.0.0.3 3 typ host",
            "m=application",
            "a=candidate:a 1 udp 5 10.0.0.1 1 typ host",
            "a=candidate:b 1 udp 9 10.0.0.2 2 typ host",
        ]
    )
    capped, dropped = cap_candidates(two, 2)
    assert dropped == 1 and "10.0.0.1" not in capped
    assert capped.count("10.0.0.2") == 2 and capped.count("10.0.0.3") == 1
    assert cap_candidates(two, 3) == (two, 0)


# -- 17. The trailing-slash redirect does not reflect the Host header --------------------------
def test_trailing_slash_redirect_is_relative_whatever_the_host_header(
    live_server: LiveServer,
) -> None:
    with httpx.Client(base_url=live_server.url, timeout=10, follow_redirects=False) as c:
        evil = {"host": "evil.example.com"}
        r = c.get("/healthz/", headers=evil)
        assert r.status_code in (307, 308), r.text
        assert r.headers["location"] == "/healthz", r.headers
        r = c.get("/static?x=1", headers=evil)
        assert r.status_code in (307, 308) and r.headers["location"] == "/static/?x=1"
        # A doubled leading slash never becomes a protocol-relative URL.
        r = c.get("//evil.example.com/", headers=evil)
        assert "evil.example.com" not in r.headers.get("location", ""), r.headers
        r = c.get("/nothing-here/", headers=evil)
        assert r.status_code == 404 and "location" not in r.headers
        assert c.get("/healthz/", follow_redirects=True).json()["status"] == "ok"


# -- 17. A pixel limit checked before decoding; errors in words ---------------------------------
def huge_png(path: Path, width: int, height: int) -> Path:
    """A black RGB PNG of width x height written row by row (never held in memory): 16000 x
    16000 is 768 MB decoded but about 750 KB on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    z = zlib.compressobj(6)
    row = b"\0" * (1 + 3 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", idat))
        f.write(chunk(b"IEND", b""))
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_frame_pixel_limit_is_checked_before_decoding(tiny_bundle: Path, tmp_path: Path) -> None:
    from bench.media import write_video

    png = huge_png(tmp_path / "huge.png", 16000, 16000)
    assert png.stat().st_size < 2_000_000
    big = write_video(tmp_path / "big.mp4", face_frames(6, size=(1280, 960)), fps=10)
    ok = write_video(tmp_path / "ok.mp4", face_frames(10, size=(640, 480)), fps=10)
    with ServeProcess(tiny_bundle, "--max-frame-pixels", "1000000") as srv:

        def upload(path: Path) -> httpx.Response:
            with path.open("rb") as f:
                return httpx.post(
                    srv.url + "/v1/analyze", files={"file": (path.name, f)}, timeout=120
                )

        assert upload(ok).status_code == 200  # the server has decoded a normal clip
        before = peak_rss_mb(srv.proc.pid)
        # The header names the size: refused before any frame is decoded.
        r = upload(big)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == (
            "big.mp4: frames are 1280x960 (1.2 megapixels); the limit is 1.0 megapixels per frame"
        )
        # A PNG's size is only known by decoding it: the decoder refuses it, never allocating
        # the 768 MB frame (it used to cost ~830 MB of RSS).
        r = upload(png)
        assert r.status_code == 413, r.text
        assert "limit of 1.0 megapixels per frame" in r.json()["error"], r.text
        grew = peak_rss_mb(srv.proc.pid) - before
        assert grew < 150, f"peak RSS grew by {grew:.0f} MB"
        assert httpx.get(srv.url + "/healthz", timeout=10).json()["status"] == "ok"


def test_upload_errors_are_in_words(live_server: LiveServer, tmp_path: Path) -> None:
    import re

    from bench.media import write_video

    clip = write_video(tmp_path / "clip.mp4", face_frames(20, size=(160, 120)), fps=10)
    data = clip.read_bytes()
    cases = {
        "truncated.mp4": data[: len(data) // 3],
        "noise.mp4": np.random.default_rng(1).integers(0, 256, 40_000, np.uint8).tobytes(),
        "text.mp4": b"not a video at all\n" * 200,
        "tail.mp4": data[len(data) // 2 :],
    }
    with av.open(str(tmp_path / "voice.wav"), "w") as out:  # audio, no video stream
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for p in s.encode(frame):
            out.mux(p)
    cases["voice.wav"] = (tmp_path / "voice.wav").read_bytes()
    for name, body in cases.items():
        r = httpx.post(live_server.url + "/v1/analyze", files={"file": (name, body)}, timeout=60)
        msg = r.json().get("error", "") if r.status_code != 200 else ""
        assert r.status_code in (200, 422), (name, r.status_code, r.text)
        if r.status_code == 422:
            assert msg.startswith(name + " "), msg
            assert not re.search(r"[A-Z][A-Za-z]*Error\b", msg), msg  # no exception names
    voice = httpx.post(
        live_server.url + "/v1/analyze", files={"file": ("voice.wav", cases["voice.wav"])}
    )
    assert voice.status_code == 422 and voice.json()["error"] == "voice.wav has no video stream"
