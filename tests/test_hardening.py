"""Bad input against a live server: every case a 4xx with a one-line reason, and the server keeps
serving. Plus access control, the offer rate limit, fuzzing and a short connect/disconnect soak."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from bench.media import face_frames
from tests.conftest import LiveServer
from tests.rtc_client import ClientPeer
from tests.timing import poll

GOOD_SDP_HEAD = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
J = {"content-type": "application/json"}

# (method, path, body bytes or JSON object, headers, expected status, reason fragment)
CASES: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    ("POST", "/offer", b"hello", {"content-type": "text/plain"}, 415, "application/json"),
    ("POST", "/offer", b"<x/>", {"content-type": "application/xml"}, 415, "application/json"),
    (
        "POST",
        "/offer",
        b"a=1",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "application/json",
    ),
    ("POST", "/offer", b"{}", {}, 415, "application/json"),
    ("POST", "/offer", b"", J, 400, "not valid JSON"),
    ("POST", "/offer", b"{", J, 400, "not valid JSON"),
    ("POST", "/offer", b"{'sdp': 1}", J, 400, "not valid JSON"),
    ("POST", "/offer", b"\xff\xfe\xfd", J, 400, "not UTF-8"),
    ("POST", "/offer", b"null", J, 400, "JSON object"),
    ("POST", "/offer", b"[]", J, 400, "JSON object"),
    ("POST", "/offer", b"42", J, 400, "JSON object"),
    ("POST", "/offer", b'"v=0"', J, 400, "JSON object"),
    ("POST", "/offer", b"true", J, 400, "JSON object"),
    ("POST", "/offer", {}, J, 400, 'type must be "offer"'),
    ("POST", "/offer", {"sdp": "v=0"}, J, 400, 'type must be "offer"'),
    ("POST", "/offer", {"sdp": "v=0", "type": "answer"}, J, 400, 'type must be "offer"'),
    ("POST", "/offer", {"sdp": "v=0", "type": "pranswer"}, J, 400, 'type must be "offer"'),
    ("POST", "/offer", {"sdp": "v=0", "type": None}, J, 400, 'type must be "offer"'),
    ("POST", "/offer", {"sdp": "v=0", "type": 5}, J, 400, 'type must be "offer"'),
    ("POST", "/offer", {"type": "offer"}, J, 400, "sdp must be"),
    ("POST", "/offer", {"sdp": None, "type": "offer"}, J, 400, "sdp must be"),
    ("POST", "/offer", {"sdp": 12, "type": "offer"}, J, 400, "sdp must be"),
    ("POST", "/offer", {"sdp": ["v=0"], "type": "offer"}, J, 400, "sdp must be"),
    ("POST", "/offer", {"sdp": {"v": 0}, "type": "offer"}, J, 400, "sdp must be"),
    ("POST", "/offer", {"sdp": "   ", "type": "offer"}, J, 400, "sdp must be"),
    ("POST", "/offer", {"sdp": "hello", "type": "offer"}, J, 400, "not a session description"),
    (
        "POST",
        "/offer",
        {"sdp": "m=video 9 x", "type": "offer"},
        J,
        400,
        "not a session description",
    ),
    ("POST", "/offer", {"sdp": GOOD_SDP_HEAD, "type": "offer"}, J, 400, "no video"),
    (
        "POST",
        "/offer",
        {"sdp": GOOD_SDP_HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"},
        J,
        400,
        "no video",
    ),
    (
        "POST",
        "/offer",
        {
            "sdp": GOOD_SDP_HEAD + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
            "type": "offer",
        },
        J,
        400,
        "no video",
    ),
    (
        "POST",
        "/offer",
        {"sdp": GOOD_SDP_HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"},
        J,
        400,
        "malformed offer",
    ),
    (
        "POST",
        "/offer",
        {
            "sdp": GOOD_SDP_HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n",
            "type": "offer",
        },
        J,
        400,
        "malformed offer",
    ),
    (
        "POST",
        "/offer",
        {"sdp": GOOD_SDP_HEAD + "m=video x y z\r\n", "type": "offer"},
        J,
        400,
        "malformed offer",
    ),
    (
        "POST",
        "/offer",
        {
            "sdp": GOOD_SDP_HEAD
            + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-256 zz\r\na=ice-ufrag:a\r\na=ice-pwd:b\r\n",
            "type": "offer",
        },
        J,
        400,
        "malformed offer",
    ),
    (
        "POST",
        "/offer",
        {"sdp": "v=0\r\n" + "a=x\r\n" * 20000 + "m=video 9 x\r\n", "type": "offer"},
        J,
        413,
        "larger than",
    ),
    (
        "POST",
        "/offer",
        {"sdp": "v=0\r\nm=video " + "9" * 70000, "type": "offer"},
        J,
        413,
        "larger than",
    ),
    (
        "POST",
        "/offer",
        {"sdp": "v=0\r\nm=video 9 x\r\n", "type": "offer", "camera": "nope"},
        J,
        404,
        "no camera",
    ),
    (
        "POST",
        "/offer",
        {"sdp": "v=0\r\nm=video 9 x\r\n", "type": "offer", "camera": 7},
        J,
        404,
        "no camera",
    ),
    ("POST", "/offer", b"x" * (2 * 1024 * 1024), J, 413, "larger than"),
    (
        "POST",
        "/v1/cameras",
        b"url=rtsp://x",
        {"content-type": "text/plain"},
        415,
        "application/json",
    ),
    ("POST", "/v1/cameras", b"{", J, 400, "not valid JSON"),
    ("POST", "/v1/cameras", [], J, 400, "JSON object"),
    ("POST", "/v1/cameras", {}, J, 400, "non-empty string"),
    ("POST", "/v1/cameras", {"url": None}, J, 400, "non-empty string"),
    ("POST", "/v1/cameras", {"url": ["rtsp://a/b"]}, J, 400, "non-empty string"),
    ("POST", "/v1/cameras", {"url": "file:///etc/passwd"}, J, 400, "only rtsp://"),
    ("POST", "/v1/cameras", {"url": "https://example.com/x"}, J, 400, "only rtsp://"),
    ("POST", "/v1/cameras", {"url": "concat:a|b"}, J, 400, "only rtsp://"),
    ("POST", "/v1/cameras", {"url": "subfile:,start,0,end,9,:x"}, J, 400, "only rtsp://"),
    ("POST", "/v1/cameras", {"url": "pipe:0"}, J, 400, "only rtsp://"),
    ("POST", "/v1/cameras", {"url": "RTSP:/x"}, J, 400, "must look like"),
    ("POST", "/v1/cameras", {"url": "rtsp://a/b\nx"}, J, 400, "control characters"),
    ("POST", "/v1/cameras", {"url": "rtsp://a/" + "b" * 3000}, J, 400, "longer than"),
    ("POST", "/v1/cameras", {"url": "rtsp://127.0.0.1/x", "name": 5}, J, 400, "name must be"),
    (
        "POST",
        "/v1/cameras",
        {"url": "rtsp://127.0.0.1/x", "name": "n" * 101},
        J,
        400,
        "name must be",
    ),
    ("POST", "/v1/cameras", {"url": "rtsp://127.0.0.1/x", "name": ""}, J, 400, "name must be"),
    ("GET", "/v1/cameras/does-not-exist", None, {}, 404, "no camera"),
    ("DELETE", "/v1/cameras/does-not-exist", None, {}, 404, "no camera"),
    ("GET", "/v1/cameras/does-not-exist/events", None, {}, 404, "no camera"),
    ("POST", "/v1/analyze", b"raw", {"content-type": "video/mp4"}, 415, "multipart/form-data"),
    ("POST", "/v1/analyze", b"x", {"content-type": "multipart/form-data; boundary=zz"}, 400, ""),
    ("GET", "/nope", None, {}, 404, "Not Found"),
    ("GET", "/v1", None, {}, 404, "Not Found"),
    ("GET", "/offer", None, {}, 405, "Method Not Allowed"),
    ("PUT", "/healthz", None, {}, 405, "Method Not Allowed"),
    ("DELETE", "/v1/analyze", None, {}, 405, "Method Not Allowed"),
    ("PATCH", "/v1/cameras", None, {}, 405, "Method Not Allowed"),
    ("GET", "/static/../pyproject.toml", None, {}, 404, ""),
]


def _send(
    client: httpx.Client, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if body is None:
        return client.request(method, path, headers=headers)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.request(method, path, content=content, headers=headers)


def test_bad_input_corpus(tiny_bundle: Path) -> None:
    assert len(CASES) >= 50
    with (
        # The name cases use a loopback camera URL: allowed, so that the name is what is refused
        # (cameras are public-only by default). No case registers a camera.
        LiveServer(
            bundle=tiny_bundle,
            offer_burst=500,
            offer_rate_per_minute=60000,
            camera_allow=("127.0.0.1",),
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        failures = []
        for method, path, body, headers, status, reason in CASES:
            r = _send(c, method, path, body, headers)
            ok = r.status_code == status
            if ok and reason:
                try:
                    msg = r.json()["error"]
                except (ValueError, KeyError):
                    msg = r.text
                ok = reason in msg and "\n" not in msg
            if not ok:
                failures.append((method, path, str(body)[:60], status, r.status_code, r.text[:120]))
        assert not failures, failures
        h = c.get("/healthz").json()
        assert h["status"] == "ok" and h["streams"] == 0
        # Huge headers are refused by the HTTP layer, and the server keeps serving.
        r = c.get("/healthz", headers={"x-big": "a" * 100_000})
        assert r.status_code == 431 and "headers are larger" in r.json()["error"]

        # A real client still connects after all that.
        async def run() -> list[dict[str, Any]]:
            peer = ClientPeer(srv.url, face_frames(30), fps=15)
            await peer.connect()
            s = await peer.wait_scores(3, within=10)
            await peer.close()
            return s

        assert asyncio.run(run())


ROOT = Path(__file__).resolve().parent.parent
# Request targets sent byte for byte (no client-side normalisation), each aiming outside the
# web client's folder: dot segments, percent-encoded dots and slashes, double encoding,
# backslashes, absolute paths and a path through a real file.
TRAVERSALS = [
    "/static/../pyproject.toml",
    "/static/./../pyproject.toml",
    "/static/../../../../../../etc/passwd",
    "/static/%2e%2e/pyproject.toml",
    "/static/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/static/.%2e/pyproject.toml",
    "/static/..%2fpyproject.toml",
    "/static/..%2Fstream_server%2Fapi.py",
    "/static/%2e%2e%2fpyproject.toml",
    "/static/%252e%252e/pyproject.toml",
    "/static/%252e%252e%252fpyproject.toml",
    "/static/..%5cpyproject.toml",
    "/static/..\\pyproject.toml",
    "/static/....//pyproject.toml",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/%2F..%2F..%2Fpyproject.toml",
    "/static/index.html/../../pyproject.toml",
    "/static/index.html/..%2f..%2fpyproject.toml",
    "/static/..;/pyproject.toml",
    "/static/%c0%ae%c0%ae/pyproject.toml",
    "/static/%00/../pyproject.toml",
    "/static/../client_web/../pyproject.toml",
    "/static/" + "../" * 40 + "etc/passwd",
    "/static/../README.md",
    "/static/../tests/conftest.py",
    "//static/../pyproject.toml",
    "/%2e%2e/pyproject.toml",
    "/../pyproject.toml",
]


def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as given over a plain socket; (status, body); status 0 when the
    server closes without answering."""
    req = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").encode(
        "latin-1"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return 0, b""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_raw_traversal_paths_serve_nothing_outside_the_web_client(
    live_server: LiveServer,
) -> None:
    web = live_server.service.settings.static_dir.resolve()
    served = {p.read_bytes() for p in web.rglob("*") if p.is_file()}
    outside = [
        (ROOT / name).read_bytes()
        for name in (
            "pyproject.toml",
            "README.md",
            "stream_server/shell/api.py",
            "tests/conftest.py",
        )
    ]
    if Path("/etc/passwd").is_file():
        outside.append(Path("/etc/passwd").read_bytes())
    # The raw requests do reach the static mount: a real file there is served byte for byte.
    status, body = _raw_get(live_server.port, "/static/app.js")
    assert status == 200 and body == (web / "app.js").read_bytes()
    leaks = []
    for target in TRAVERSALS:
        status, body = _raw_get(live_server.port, target)
        leaked = status == 200 and body not in served
        leaked |= any(len(secret) > 64 and secret[:64] in body for secret in outside)
        if leaked or status >= 500:
            leaks.append((target, status, body[:80]))
    assert not leaks, leaks
    assert httpx.get(live_server.url + "/healthz").status_code == 200


TOKEN = "s3cret-token-0123456789"


def test_bearer_token_protects_offer_and_api_but_not_health(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, token=TOKEN, metrics_public=False) as srv:
        u = srv.url
        assert httpx.get(u + "/healthz").status_code == 200
        assert httpx.get(u + "/").status_code == 200
        for method, path in (
            ("POST", "/offer"),
            ("GET", "/v1/cameras"),
            ("POST", "/v1/analyze"),
            ("GET", "/metrics"),
            ("GET", "/v1/cameras/x/events"),
        ):
            r = httpx.request(method, u + path)
            assert r.status_code == 401 and r.json()["error"] == "missing or wrong bearer token"
            assert r.headers["www-authenticate"] == "Bearer"
        bad = {"authorization": "Bearer wrong-token-0123456789"}
        assert httpx.get(u + "/v1/cameras", headers=bad).status_code == 401
        assert (
            httpx.get(u + "/v1/cameras", headers={"authorization": f"Basic {TOKEN}"}).status_code
            == 401
        )
        good = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(u + "/v1/cameras", headers=good).json() == {"cameras": []}
        assert httpx.get(u + "/metrics", headers=good).status_code == 200
        assert httpx.get(u + f"/v1/cameras?token={TOKEN}").status_code == 200

        async def run() -> list[dict[str, Any]]:
            peer = ClientPeer(u, face_frames(30), fps=15)
            peer.headers = good
            await peer.connect()
            s = await peer.wait_scores(2, within=10)
            await peer.close()
            return s

        assert asyncio.run(run())


def test_offer_rate_limit_per_client(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, offer_burst=3, offer_rate_per_minute=6) as srv:
        codes = [
            httpx.post(srv.url + "/offer", json={"sdp": "x", "type": "offer"}).status_code
            for _ in range(5)
        ]
        assert codes[:3] == [400, 400, 400]
        r = httpx.post(srv.url + "/offer", json={"sdp": "x", "type": "offer"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many offers" in r.json()["error"]
        assert httpx.get(srv.url + "/healthz").status_code == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=200),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(["sdp", "type", "camera", "x"]), inner, max_size=4)
        ),
        max_leaves=10,
    )
)
def test_fuzz_offer_validation_only_raises_offer_errors(body: Any) -> None:
    from stream_server.shell.webrtc import OfferError, check_offer

    try:
        desc = check_offer(body, 65536)
    except OfferError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert desc.type == "offer" and desc.sdp.lstrip().startswith("v=0")


def _client_offer() -> str:
    """A real aiortc client's offer (video track and `scores` channel), as a browser sends."""
    from aiortc import RTCPeerConnection, VideoStreamTrack

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTrack(VideoStreamTrack())
        pc.createDataChannel("scores")
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


@pytest.fixture(scope="module")
def fuzz_server(tiny_bundle: Path) -> Iterator[tuple[LiveServer, list[str]]]:
    with LiveServer(bundle=tiny_bundle, offer_burst=10_000, offer_rate_per_minute=600_000) as srv:
        yield srv, _client_offer().split("\r\n")


ASCII_LINE = st.text(alphabet=st.characters(codec="ascii"), max_size=80)
SDP_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["drop", "duplicate", "replace", "insert", "truncate", "append"]),
        st.integers(0, 10_000),
        ASCII_LINE,
    ),
    max_size=6,
)


def _edit_sdp(lines: list[str], edits: list[tuple[str, int, str]]) -> str:
    out = list(lines)
    for op, pos, text in edits:
        i = pos % max(1, len(out))
        if op == "drop" and out:
            del out[i]
        elif op == "duplicate" and out:
            out.insert(i, out[i])
        elif op == "replace" and out:
            out[i] = text
        elif op == "insert":
            out.insert(i, text)
        elif op == "truncate" and out:
            out[i] = out[i][: pos % (len(out[i]) + 1)]
        else:
            out.append(text)
    return "\r\n".join(out)


def _aiortc_fails_to_answer(sdp: str) -> bool:
    """Whether aiortc accepts `sdp` as a remote offer and then raises in createAnswer or
    setLocalDescription: the steps of `PeerSession.answer` after `set_remote_offer`, on a bare
    peer. `make_answer` turns those exceptions into an OfferError too (they were 500s)."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    async def run() -> bool:
        pc = RTCPeerConnection()
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            except Exception:
                return False  # set_remote_offer makes this an OfferError
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception:
                return True
            return False
        finally:
            with contextlib.suppress(Exception):
                await pc.close()

    return asyncio.run(run())


def _without(lines: list[str], prefix: str) -> str:
    i = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    return "\r\n".join(lines[:i] + lines[i + 1 :])


@pytest.mark.parametrize("drop", ["a=sendrecv", "a=mid:0", "m=application"])
def test_offer_aiortc_cannot_answer_gets_400_not_500(
    fuzz_server: tuple[LiveServer, list[str]], drop: str
) -> None:
    srv, lines = fuzz_server
    sdp = _without(lines, drop)
    assert _aiortc_fails_to_answer(sdp)
    r = httpx.post(srv.url + "/offer", json={"sdp": sdp, "type": "offer"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"].startswith("malformed offer: "), r.text


# What check_offer and set_remote_offer (stream_server/shell/webrtc.py) say: every OfferError message.
OFFER_ERRORS = ("sdp is not a session description", "offer has no video track", "malformed offer: ")


@pytest.mark.timeout(300)
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@example(edits=[], tail=None)
@given(edits=SDP_EDITS, tail=st.none() | ASCII_LINE.map(lambda t: t * 5))
def test_fuzz_sdp_through_offer_handling_gives_offer_error_or_answer(
    fuzz_server: tuple[LiveServer, list[str]],
    edits: list[tuple[str, int, str]],
    tail: str | None,
) -> None:
    """A real client's offer with lines dropped, duplicated, replaced, inserted or cut (or the
    bare video m-line with a random tail) through POST /offer: `check_offer`, `PeerSession.answer`
    and `set_remote_offer`. Either a 400 carrying an OfferError's one-line message (never a 500,
    never another exception), or a 200 with a valid answer for a registered stream."""
    from aiortc.sdp import SessionDescription

    srv, lines = fuzz_server
    if tail is None:
        sdp = _edit_sdp(lines, edits)
    else:
        sdp = GOOD_SDP_HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + tail
    r = httpx.post(srv.url + "/offer", json={"sdp": sdp, "type": "offer"}, timeout=30)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])
    event(f"HTTP {r.status_code}")
    body = r.json()
    if r.status_code == 400:
        msg = body["error"]
        assert msg.startswith(OFFER_ERRORS) and "\n" not in msg, msg
        assert msg.removeprefix("malformed offer: ").strip(), msg
        assert edits or tail is not None, f"the unedited client offer was refused: {msg}"
        return
    assert body["type"] == "answer" and body["model"] == "tiny-test@1"
    answer = SessionDescription.parse(body["sdp"])
    assert any(m.kind == "video" for m in answer.media), body["sdp"]
    assert answer.media[0].dtls is not None and answer.media[0].dtls.fingerprints
    assert answer.media[0].ice.usernameFragment and answer.media[0].ice.password
    owner = srv.service.owners[body["stream"]]
    assert srv.service.loop is not None
    asyncio.run_coroutine_threadsafe(owner.close(), srv.service.loop).result(10)
    assert body["stream"] not in srv.service.streams


@pytest.mark.parametrize("how", ["dropped", "cut"])
def test_an_offer_section_without_candidates_is_the_offers_fault(
    fuzz_server: tuple[LiveServer, list[str]], how: str
) -> None:
    """An offer sent before ICE gathering finished (its video section lists no candidate, or
    only a cut one; the data channel's is intact): aiortc answers with no candidate, and
    the server, which has addresses, says it is the offer's fault (400), not its own (the 500 of
    an answer that has none because the server has no address). Found by the fuzz above."""
    srv, lines = fuzz_server
    first_m = next(i for i, line in enumerate(lines) if line.startswith("m="))
    second_m = next(i for i, line in enumerate(lines) if i > first_m and line.startswith("m="))
    assert any(line.startswith("a=candidate:") for line in lines[first_m:second_m])
    edited = []
    for i, line in enumerate(lines):
        if first_m < i < second_m and line.startswith("a=candidate:"):
            if how == "dropped":
                continue
            line = line[: line.rindex(" typ ") + 6]  # "... typ h": no known candidate type
        edited.append(line)
    r = httpx.post(
        srv.url + "/offer", json={"sdp": "\r\n".join(edited), "type": "offer"}, timeout=30
    )
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert "lists no usable ICE candidate" in r.json()["error"]
    assert "gathering" in r.json()["error"]
    # The unedited offer still gets an answer with the server's candidates.
    ok = httpx.post(srv.url + "/offer", json={"sdp": "\r\n".join(lines), "type": "offer"})
    assert ok.status_code == 200 and "a=candidate:" in ok.json()["sdp"]
    owner = srv.service.owners[ok.json()["stream"]]
    assert srv.service.loop is not None
    asyncio.run_coroutine_threadsafe(owner.close(), srv.service.loop).result(10)


def test_fuzz_left_the_server_serving(fuzz_server: tuple[LiveServer, list[str]]) -> None:
    srv, _ = fuzz_server
    h = httpx.get(srv.url + "/healthz").json()
    assert h["status"] == "ok" and h["streams"] == 0


@settings(max_examples=200, deadline=None)
@given(
    patch=st.dictionaries(
        st.sampled_from(
            [
                "format",
                "window",
                "feature_dim",
                "analysis_fps",
                "threshold",
                "encoder",
                "head",
                "detector",
                "crop",
                "files",
                "name",
                "version",
                "backbone",
                "warmup_frames",
            ]
        ),
        st.none()
        | st.booleans()
        | st.integers(-5, 10**6)
        | st.floats(allow_nan=True)
        | st.text(max_size=20)
        | st.lists(st.integers(), max_size=3)
        | st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
        max_size=4,
    )
)
def test_fuzz_manifest_loader_only_raises_bundle_errors(
    tiny_bundle: Path, patch: dict[str, Any]
) -> None:
    from stream_server.core.bundle import BundleError, parse_manifest

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    m.update(patch)
    try:
        b = parse_manifest(tiny_bundle, m)
    except BundleError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert b.window >= 1 and 0 < b.threshold < 1 and 0 < b.analysis_fps <= 60


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_short_soak_leaves_no_streams_tasks_threads_or_fds(tiny_bundle: Path) -> None:
    """30 connect/disconnect cycles of real peers (the 300-cycle version is `python -m bench.soak`)."""
    with LiveServer(bundle=tiny_bundle, offer_burst=500, offer_rate_per_minute=60000) as srv:
        _soak(srv)


def _soak(live_server: LiveServer) -> None:
    async def cycle() -> None:
        peer = ClientPeer(live_server.url, face_frames(10), fps=15)
        await peer.connect()
        # Each cycle really streamed: at least one score came back.
        assert await peer.wait_scores(1, within=10)
        await peer.close()

    def settle(threads_at_most: int = 10**6, fds_at_most: int = 10**6) -> tuple[int, int, int]:
        """Poll (not sleep) until no stream is left and threads and fds are within bounds, or
        10 s (times the test time scale) have passed; the counts then."""

        def counts() -> tuple[int, int, int]:
            return (
                httpx.get(live_server.url + "/healthz").json()["streams"],
                threading.active_count(),
                _fds(os.getpid()),
            )

        return poll(
            counts,
            10,
            every=0.1,
            until=lambda c: c[0] == 0 and c[1] <= threads_at_most and c[2] <= fds_at_most,
        )

    for _ in range(3):
        asyncio.run(cycle())
    streams0, threads0, fds0 = settle()
    for _ in range(30):
        asyncio.run(cycle())
    streams1, threads1, fds1 = settle(threads0 + 1, fds0 + 4)
    assert streams0 == streams1 == 0
    assert threads1 <= threads0 + 1
    assert fds1 <= fds0 + 4
    assert not live_server.service.streams and not live_server.service.owners
