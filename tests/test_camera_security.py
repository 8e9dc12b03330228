"""Hostile and misaddressed RTSP cameras (issue 14, items 7, 9-12, 14, 16 and 17), against real
components on loopback: the service in-process (or as `deepfake-serve`), FFmpeg through PyAV,
and RTSP servers written here (a small asyncio TCP server per behaviour) or GStreamer's."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from stream_server.shell import camera_url
from stream_server.shell.cameras import UNREACHABLE
from stream_server.shell.rtsp_relay import HostileReply, ReplyGuard
from tests.conftest import LiveServer, free_port
from tests.rtsp import RtspServer
from tests.test_rtsp import Feed, camera_clip, register  # noqa: F401  (camera_clip: a fixture)

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ("127.0.0.1/32",)
QUICK = {"camera_stall_seconds": 1.0, "camera_backoff_max": 1.0}

VIDEO_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n"
    "a=control:track1\r\n"
)
AUDIO_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=mic\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:track1\r\n"
)


class FakeRtsp:
    """A tiny RTSP server on loopback, in its own thread, that behaves as `mode` says:

    - `silent`: accepts and reads, never answers (a camera stuck connecting);
    - `http`: answers like a web server, then closes (an open port that is no camera);
    - `huge`: answers the first request with a 1.5 GB Content-Length and streams junk;
    - `redirect`: answers 302 with a Location on `redirect_to`;
    - `audio`: describes a session with an audio stream only;
    - `no_frames`: describes H.264 video, accepts SETUP and PLAY, then sends nothing.
    Every request head received is kept in `requests`; `sent` counts the bytes sent."""

    def __init__(
        self,
        mode: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.mode, self.host, self.tls = mode, host, tls
        self.port = port or free_port()
        self.requests: list[str] = []
        self.connections = 0
        self.sent = 0
        self.redirect_to = ""
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeRtsp:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, self.host, self.port, ssl=self.tls)
        )
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self.loop)
            for t in tasks:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

    async def _send(self, w: asyncio.StreamWriter, data: bytes) -> None:
        w.write(data)
        await w.drain()
        self.sent += len(data)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await r.readuntil(b"\r\n\r\n")).decode("latin-1")
                self.requests.append(head)
                method = head.split(" ", 1)[0]
                m = re.search(r"CSeq:\s*(\d+)", head)
                cseq = f"CSeq: {m.group(1) if m else 0}\r\n"
                if self.mode == "silent":
                    continue
                if self.mode == "http":
                    await self._send(w, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                if self.mode == "huge":
                    await self._send(
                        w, f"RTSP/1.0 200 OK\r\n{cseq}Content-Length: 1500000000\r\n\r\n".encode()
                    )
                    junk = b"j" * (1 << 20)
                    while self.sent < 400 << 20:  # at most 400 MB, as fast as it is read
                        await self._send(w, junk)
                    return
                if self.mode == "redirect":
                    await self._send(
                        w,
                        f"RTSP/1.0 302 Moved\r\n{cseq}Location: {self.redirect_to}\r\n\r\n".encode(),
                    )
                    continue
                await self._answer(w, method, cseq)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            w.close()

    async def _answer(self, w: asyncio.StreamWriter, method: str, cseq: str) -> None:
        ok = f"RTSP/1.0 200 OK\r\n{cseq}"
        if method == "OPTIONS":
            reply = ok + "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n"
        elif method == "DESCRIBE":
            sdp = AUDIO_SDP if self.mode == "audio" else VIDEO_SDP
            base = f"rtsp://{self.host}:{self.port}/cam/"
            reply = (
                ok + f"Content-Base: {base}\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
            )
        elif method == "SETUP":
            reply = ok + "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 1234\r\n\r\n"
        else:
            reply = ok + "Session: 1234\r\n\r\n"
        await self._send(w, reply.encode())


class Listener:
    """A TCP port that only counts who connects (must stay at zero when refused)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def wait_until(cond: Callable[[], Any], within: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    return cond()


def camera(srv: LiveServer, cam_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{srv.url}/v1/cameras/{cam_id}").json())


def error_of(srv: LiveServer, cam_id: str, within: float = 15) -> str:
    """The camera's error once it has one."""
    view = wait_until(lambda: (v := camera(srv, cam_id))["error"] and v, within)
    assert view, camera(srv, cam_id)
    return str(view["error"])


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- items 12 and 7: the address policy, on every connect -------------------------------------


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("169.254.169.254", "link-local"),
        ("[fe80::1]", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("10.1.2.3", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.1", "non-public"),
        ("240.0.0.1", "reserved"),
        ("2130706433", "unusual spelling"),
        ("0x7f000001", "unusual spelling"),
        ("0177.0.0.1", "unusual spelling"),
        ("127.1", "unusual spelling"),
        ("[fe80::1%25lo]", "zone"),
    ],
)
def test_default_policy_refuses_internal_addresses(
    live_server: LiveServer, host: str, why: str
) -> None:
    r = register(live_server, f"rtsp://{host}:8554/cam")
    assert r.status_code == 400, r.text
    assert why in r.json()["error"]
    assert httpx.get(live_server.url + "/v1/cameras").json() == {"cameras": []}


def test_allowing_a_network_admits_it_and_only_it(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, camera_allow=("127.0.0.0/8", "169.254.0.0/16")) as srv:
        assert register(srv, "rtsp://127.0.0.1:8554/cam").status_code == 201
        assert register(srv, "rtsp://169.254.169.254/latest").status_code == 201
        r = register(srv, "rtsp://10.0.0.1/cam")
        assert r.status_code == 400 and "not in the allow-list" in r.json()["error"]


def test_public_address_is_allowed_by_default(live_server: LiveServer) -> None:
    assert register(live_server, "rtsp://93.184.216.34:554/cam").status_code == 201


def test_dns_rebinding_is_caught_on_reconnect(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name allowed (and contacted) at first moves to another address: the next reconnect
    resolves it again, refuses it, and never contacts the new address."""
    answers = {"cam.rebind.test": "127.0.0.1"}
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        if host not in answers:
            raise socket.gaierror("no such name")
        return [answers[host]]

    monkeypatch.setattr(camera_url, "resolver", resolver)
    with (
        FakeRtsp("http") as good,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        rebound = Listener("127.0.0.2", good.port)
        try:
            r = register(srv, f"rtsp://cam.rebind.test:{good.port}/cam")
            assert r.status_code == 201, r.text
            cam = r.json()["id"]
            assert wait_until(lambda: good.connections >= 1, 10), "the camera was never contacted"
            assert error_of(srv, cam) == UNREACHABLE  # it answered as a web server would
            answers["cam.rebind.test"] = "127.0.0.2"
            n = len(lookups)
            msg = wait_until(lambda: "127.0.0.2" in (camera(srv, cam)["error"] or ""), 10)
            assert msg, camera(srv, cam)
            assert camera(srv, cam)["error"] == (
                "camera host cam.rebind.test (127.0.0.2) is not in the allow-list"
            )
            # More reconnects, each resolving again: none may reach the new address.
            assert wait_until(lambda: len(lookups) >= n + 3, 15), lookups
            assert rebound.accepted == 0
        finally:
            rebound.close()


def test_name_that_resolves_to_metadata_address_is_refused_at_connect(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(camera_url, "resolver", lambda host, port: ["169.254.169.254"])
    with LiveServer(bundle=tiny_bundle, **QUICK) as srv:
        r = register(srv, "rtsp://metadata.rebind.test/latest")
        assert r.status_code == 201  # names are checked when connecting, every time
        err = error_of(srv, r.json()["id"])
        assert "resolves to 169.254.169.254" in err and "link-local" in err


def test_camera_errors_do_not_tell_open_ports_from_closed_ones(tiny_bundle: Path) -> None:
    closed = free_port()
    with (
        FakeRtsp("silent") as silent,
        FakeRtsp("http") as web,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        ids = [
            register(srv, f"rtsp://127.0.0.1:{port}/cam", f"cam{port}").json()["id"]
            for port in (closed, silent.port, web.port)
        ]
        errors = {error_of(srv, i) for i in ids}
        assert errors == {UNREACHABLE}, errors
        assert silent.connections >= 1 and web.connections >= 1


# -- items 9 and 11: one budget; one registration per camera ----------------------------------


async def offer_sdp(direction: str) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction=direction)
    pc.createDataChannel("scores")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def test_viewers_cameras_and_peers_share_one_stream_budget(tiny_bundle: Path) -> None:
    with (
        FakeRtsp("silent") as cam_server,
        LiveServer(
            bundle=tiny_bundle,
            camera_allow=LOOPBACK,
            max_streams=2,
            peer_setup_seconds=2.0,
            **QUICK,
        ) as srv,
    ):
        cam = register(srv, f"rtsp://127.0.0.1:{cam_server.port}/cam").json()

        async def run() -> None:
            pcs = []
            async with httpx.AsyncClient(base_url=srv.url) as c:
                pc, sdp = await offer_sdp("recvonly")
                pcs.append(pc)
                r = await c.post("/offer", json={"sdp": sdp, "type": "offer", "camera": cam["id"]})
                assert r.status_code == 200, r.text  # camera + viewer: 2 of 2
                health = (await c.get("/healthz")).json()
                assert (health["streams"], health["viewers"]) == (1, 1)
                for body in ({"camera": cam["id"]}, {}):  # another viewer, a sending peer
                    pc, sdp = await offer_sdp("recvonly" if body else "sendrecv")
                    pcs.append(pc)
                    r = await c.post("/offer", json={"sdp": sdp, "type": "offer", **body})
                    assert r.status_code == 503 and "stream limit" in r.json()["error"], r.text
                r = await c.post(
                    "/v1/cameras",
                    json={"url": f"rtsp://127.0.0.1:{free_port()}/other", "name": "x"},
                )
                assert r.status_code == 503, r.text
                # The viewer never connects: its setup deadline frees the slot for a peer.
                for _ in range(100):
                    if not (await c.get("/healthz")).json()["viewers"]:
                        break
                    await asyncio.sleep(0.1)
                assert (await c.get("/healthz")).json()["viewers"] == 0
                pc, sdp = await offer_sdp("sendrecv")
                pcs.append(pc)
                r = await c.post("/offer", json={"sdp": sdp, "type": "offer"})
                assert r.status_code == 200, r.text
            for pc in pcs:
                await pc.close()

        asyncio.run(run())


def test_the_same_camera_cannot_be_registered_twice(tiny_bundle: Path) -> None:
    port = free_port()
    with LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv:
        first = register(srv, f"rtsp://admin:one@127.0.0.1:{port}/cam?channel=1&password=a")
        assert first.status_code == 201, first.text
        for same in (
            f"rtsp://127.0.0.1:{port}/cam?channel=1",
            f"rtsp://viewer:two@127.0.0.1:{port}/cam?channel=1&password=b",
            f"RtSp://127.0.0.1:{port}/cam?channel=1",
        ):
            r = register(srv, same)
            assert r.status_code == 409, (same, r.text)
            assert first.json()["id"] in r.json()["error"]
        assert register(srv, "rtsp://127.0.0.1/cam").status_code == 201
        assert register(srv, "rtsp://127.0.0.1:554/cam").status_code == 409  # the default port
        assert register(srv, f"rtsp://127.0.0.1:{port}/cam?channel=2").status_code == 201
        assert len(httpx.get(srv.url + "/v1/cameras").json()["cameras"]) == 3


# -- item 14: credentials in the query string ------------------------------------------------


def test_query_string_credentials_are_redacted_everywhere(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        FakeRtsp("silent") as cam_server,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        url = (
            f"rtsp://127.0.0.1:{cam_server.port}/cam?user=admin&password=hunter2"
            "&channel=1&token=tok3n&pwd=pw9&api_key=k3y"
        )
        r = register(srv, url)  # no name: the default name is the redacted URL
        assert r.status_code == 201, r.text
        cam = r.json()
        assert cam["url"] == (
            f"rtsp://127.0.0.1:{cam_server.port}/cam?user=***&password=***"
            "&channel=1&token=***&pwd=***&api_key=***"
        )
        feed = Feed(f"{srv.url}/v1/cameras/{cam['id']}/events")
        try:
            assert wait_until(lambda: feed.raw, 5)
            error_of(srv, cam["id"])
        finally:
            feed.close()
        shown = [
            r.text,
            httpx.get(srv.url + "/v1/cameras").text,
            httpx.get(f"{srv.url}/v1/cameras/{cam['id']}").text,
            feed.raw,
            caplog.text,
        ]
        for text in shown:
            for secret in ("admin", "hunter2", "tok3n", "pw9", "k3y"):
                assert secret not in text, (secret, text[:500])
        # The camera itself still gets them.
        assert cam_server.requests and "password=hunter2" in cam_server.requests[0]


# -- item 10: hostile replies -----------------------------------------------------------------


def test_huge_content_length_is_cut_off_with_bounded_memory(tiny_bundle: Path) -> None:
    with (
        FakeRtsp("huge") as hostile,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        before = rss_mb()
        cam = register(srv, f"rtsp://127.0.0.1:{hostile.port}/cam").json()
        peak = before
        deadline = time.monotonic() + 4  # the first attempt and a few reconnects
        while time.monotonic() < deadline or hostile.connections < 2:
            peak = max(peak, rss_mb())  # FFmpeg frees its buffer after failing: watch the peak
            time.sleep(0.02)
            assert time.monotonic() < deadline + 10, "the camera did not reconnect"
        err = error_of(srv, cam["id"])
        assert err.startswith("camera refused: reply body of 1500000000 bytes"), err
        grown = peak - before
        assert grown < 60, f"RSS grew by {grown:.0f} MB"  # was ~430 MB for 400 MB sent
        assert hostile.sent < hostile.connections * (16 << 20)  # cut off early each time
        assert httpx.get(srv.url + "/healthz").json()["status"] == "ok"


def test_redirect_to_another_address_is_not_followed(tiny_bundle: Path) -> None:
    with (
        FakeRtsp("redirect") as hostile,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        target = Listener("127.0.0.2", hostile.port)
        hostile.redirect_to = f"rtsp://127.0.0.2:{hostile.port}/cam"
        try:
            cam = register(srv, f"rtsp://127.0.0.1:{hostile.port}/cam").json()
            err = error_of(srv, cam["id"])
            assert "redirects elsewhere (302)" in err, err
            assert wait_until(lambda: hostile.connections >= 3, 15)  # redirected 3 times
            assert target.accepted == 0
        finally:
            target.close()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"RTSP/1.0 200 OK\r\nContent-Length: 70000\r\n\r\n", "reply body of 70000"),
        (b"RTSP/1.0 200 OK\r\ncontent-length:   +99999999\r\n\r\n", "reply body of 99999999"),
        (
            b"RTSP/1.0 200 OK\r\n$\x00\x00\x10" + b"x" * 16 + b"Content-Length: 100000\r\n\r\n",
            "reply body of 100000",
        ),
        (b"RTSP/1.0 200 OK\r\nX-Pad: " + b"a" * 20000, "head larger than"),
        (b"$\x00\x00\x04abcd", "malformed interleaved packet"),
        (b"RTSP/1.0 301 Moved\r\nLocation: rtsp://10.0.0.1/\r\n\r\n", "redirects"),
        (b"$\x00\x00\x08abcdefghXRTSP/1.0 303 See\r\n\r\n", "redirects"),  # first byte eaten
        (b"RTSP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nm=audio 0", "no video stream"),
    ],
)
def test_reply_guard_reads_like_ffmpeg_and_refuses(data: bytes, error: str) -> None:
    guard = ReplyGuard()
    with pytest.raises(HostileReply, match=re.escape(error)):
        for i in range(0, len(data), 7):  # in pieces, as TCP may deliver it
            guard.feed(data[i : i + 7])
        guard.feed(b"\r\n")


def test_reply_guard_passes_ordinary_replies() -> None:
    guard = ReplyGuard()
    sdp = VIDEO_SDP.encode()
    guard.feed(b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: %d\r\n\r\n" % len(sdp) + sdp)
    guard.feed(b"$\x00\x05\xdc" + b"r" * 1500 + b"RTSP/1.0 200 OK\r\nCSeq: 5\r\n\r\n")
    # strtol into a C int, as FFmpeg: 2^32 + 1 is 1 byte, 2^31 is negative (no body at all)
    guard.feed(b"RTSP/1.0 200 OK\r\nContent-Length: 4294967297\r\n\r\nx")
    guard.feed(b"RTSP/1.0 200 OK\r\nContent-Length: 2147483648\r\n\r\n")
    assert guard.described and guard.need == 0 and not guard.line


# -- item 17: scheme case, missing video, no frames ------------------------------------------


def test_rtsps_goes_through_the_relay_over_tls(tiny_bundle: Path, tmp_path: Path) -> None:
    """An rtsps:// camera: the relay speaks TLS to it and still reads its replies (here: a
    session without video, refused by name, so the TLS exchange really happened)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=cam.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with (
        FakeRtsp("audio", tls=ctx) as cam_server,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        cam = register(srv, f"rtsps://127.0.0.1:{cam_server.port}/cam").json()
        assert error_of(srv, cam["id"]) == "camera refused: camera offers no video stream"
        assert cam_server.requests and cam_server.requests[0].startswith("OPTIONS ")


@pytest.mark.rtsp
def test_scheme_case_is_normalised_and_the_camera_works(
    tiny_bundle: Path,
    camera_clip: Path,  # noqa: F811
) -> None:
    with (
        RtspServer(camera_clip, free_port()) as rtsp,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        r = register(srv, rtsp.url.replace("rtsp://", "RtSp://"))
        assert r.status_code == 201, r.text
        cam = r.json()
        assert cam["url"] == rtsp.url
        feed = Feed(f"{srv.url}/v1/cameras/{cam['id']}/events")
        try:
            assert feed.wait(lambda e: e[0] == "score", 15), camera(srv, cam["id"])
        finally:
            feed.close()


def test_cameras_without_video_or_frames_say_so_plainly(tiny_bundle: Path) -> None:
    with (
        FakeRtsp("audio") as audio,
        FakeRtsp("no_frames") as mute,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, **QUICK) as srv,
    ):
        a = register(srv, f"rtsp://127.0.0.1:{audio.port}/cam", "mic").json()["id"]
        m = register(srv, f"rtsp://127.0.0.1:{mute.port}/cam", "mute").json()["id"]
        assert error_of(srv, a) == "camera refused: camera offers no video stream"
        assert re.fullmatch(r"(camera sent no video within|no frames for) 1 s", error_of(srv, m))
        assert any(q.startswith("PLAY") for q in mute.requests), mute.requests


# -- item 16: shutdown with a camera stuck connecting ----------------------------------------


def test_sigterm_with_a_camera_stuck_connecting_exits_0_within_5_s(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    with FakeRtsp("silent") as stuck:
        cams = tmp_path / "cams.json"
        cams.write_text(json.dumps([{"url": f"rtsp://127.0.0.1:{stuck.port}/cam", "name": "s"}]))
        port = free_port()
        env = {
            **os.environ,
            "DEEPFAKE_BUNDLE": str(tiny_bundle),
            "DEEPFAKE_CAMERA_ALLOW": "127.0.0.1/32",
            "DEEPFAKE_CAMERA_STALL_SECONDS": "60",  # FFmpeg alone would wait this long
        }
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream_server",
                "--port",
                str(port),
                "--cameras-file",
                str(cams),
            ],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            assert wait_until(lambda: stuck.requests or p.poll() is not None, 60, 0.1)
            assert p.poll() is None, p.communicate()[1][-2000:]
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=15)
            took = time.monotonic() - t0
            assert p.returncode == 0, (p.returncode, err[-2000:])
            assert took < 5, took
            assert "Traceback" not in err, err[-3000:]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_deleting_a_camera_stuck_connecting_ends_its_thread_at_once(tiny_bundle: Path) -> None:
    """FFmpeg alone would sit in its read for the whole stall time (60 s here): cutting the
    relay ends it at once."""
    with (
        FakeRtsp("silent") as stuck,
        LiveServer(bundle=tiny_bundle, camera_allow=LOOPBACK, camera_stall_seconds=60.0) as srv,
    ):
        cam = register(srv, f"rtsp://127.0.0.1:{stuck.port}/cam").json()
        assert wait_until(lambda: stuck.requests, 10)  # FFmpeg sent OPTIONS, gets no answer
        reader = [t for t in threading.enumerate() if t.name == f"rtsp-{cam['id']}"]
        assert len(reader) == 1
        t0 = time.monotonic()
        assert httpx.delete(f"{srv.url}/v1/cameras/{cam['id']}", timeout=30).status_code == 204
        assert wait_until(lambda: not reader[0].is_alive(), 2.5), "the camera thread is stuck"
        assert time.monotonic() - t0 < 2.5
        assert httpx.get(srv.url + "/healthz").json()["streams"] == 0


@pytest.fixture(autouse=True)
def _no_leaked_relays() -> Iterator[None]:
    yield
    assert wait_until(
        lambda: not [t for t in threading.enumerate() if t.name == "rtsp-relay"], 10
    ), "relay threads left running"


def test_camera_frames_over_the_pixel_limit_are_refused_before_decoding(
    tiny_bundle: Path,
    camera_clip: Path,  # noqa: F811
) -> None:
    with (
        RtspServer(camera_clip, free_port()) as rtsp,
        LiveServer(
            bundle=tiny_bundle, camera_allow=LOOPBACK, max_frame_pixels=64 * 64, **QUICK
        ) as srv,
    ):
        cam = register(srv, rtsp.url).json()["id"]
        why = error_of(srv, cam)
        assert re.fullmatch(r"camera frames are \d+x\d+ \(.*\); the limit is .* per frame", why), (
            why
        )
