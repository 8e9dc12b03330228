"""Using the service from another machine (issue 17, first slice): HTTPS (given or self-signed
certificate), ICE servers handed to the page, a host with only loopback, readiness endpoints,
--version, and the page's layout fixes. Real uvicorn, real Chromium, real aiortc; loopback only
(a non-localhost name is mapped to 127.0.0.1 inside Chromium)."""

from __future__ import annotations

import hashlib
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.media import face_frames
from stream_server.shell.setting_fields import SettingsError
from stream_server.shell.settings import Settings
from tests.browser import chromium, screenshot, write_y4m
from tests.conftest import LiveServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NAME = "camera.test"  # a name that is not localhost: the page is not a secure context over http


def chromium_named(video: Path | None) -> Any:
    """Chromium as tests/browser.py launches it, plus `camera.test` resolving to 127.0.0.1 and
    the self-signed certificate accepted."""
    return chromium(
        video,
        extra_args=(f"--host-resolver-rules=MAP {NAME} 127.0.0.1", "--ignore-certificate-errors"),
        ignore_https_errors=True,
    )


def cert_fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class Serve:
    """`python -m stream_server` (deepfake-serve) as a process, its stderr collected."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_server", "--port", str(self.port), *args],
            cwd=ROOT,
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, within: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + within
        while True:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            assert self.proc.poll() is None or time.monotonic() < deadline, self.lines
            assert time.monotonic() < deadline, f"no line matching {pattern!r}: {self.lines}"
            time.sleep(0.05)

    def wait_https(self, within: float = 60.0) -> None:
        """Until the HTTPS port answers /livez (the start line is printed before it listens)."""
        deadline = time.monotonic() + within
        while True:
            try:
                httpx.get(f"https://127.0.0.1:{self.port}/livez", verify=False, timeout=2)
                return
            except httpx.TransportError:
                assert self.proc.poll() is None, self.lines
                assert time.monotonic() < deadline, self.lines
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)


@contextmanager
def served(*args: str) -> Iterator[Serve]:
    s = Serve(*args)
    try:
        yield s
    finally:
        s.stop()


# -- HTTPS ----------------------------------------------------------------------------------


@pytest.mark.browser
def test_https_page_under_a_name_gets_scores_with_the_kept_self_signed_certificate(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """deepfake-serve --tls-self-signed on a loopback-only host (no --ice-addresses: it offers
    loopback because the host has nothing else): Chromium opens https://camera.test:PORT/,
    starts the fake webcam and gets scores; the fingerprint printed at start is the served
    certificate's; Stop resets the stats."""
    data = tmp_path / "data"
    clip = write_y4m(tmp_path / "face.y4m", face_frames(60, size=(640, 480)))
    with served("--bundle", str(tiny_bundle), "--tls-self-signed", "--data-dir", str(data)) as srv:
        printed = srv.wait_line(r"SHA-256 fingerprint ([0-9A-F:]{95})").group(1)
        srv.wait_line(rf"open https://127\.0\.0\.1:{srv.port}/ \(runs in the foreground")
        srv.wait_https()
        served_pem = ssl.get_server_certificate(("127.0.0.1", srv.port), timeout=10)
        assert cert_fingerprint(ssl.PEM_cert_to_DER_cert(served_pem)) == printed
        cert = data / "tls" / "self-signed-cert.pem"
        assert (data / "tls" / "self-signed-key.pem").stat().st_mode & 0o077 == 0
        # The certificate verifies for the loopback address it names (no insecure client).
        ready = httpx.get(f"https://127.0.0.1:{srv.port}/readyz", verify=str(cert), timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        with pytest.raises(httpx.TransportError):  # plain http on the TLS port: no page
            httpx.get(f"http://127.0.0.1:{srv.port}/livez", timeout=5).raise_for_status()
        with chromium_named(clip) as ctx:
            page = ctx.new_page()
            page.goto(f"https://{NAME}:{srv.port}/")
            assert page.evaluate("window.isSecureContext") is True
            assert page.locator("#live-error").is_hidden()
            page.get_by_role("button", name="Start camera").click()
            page.wait_for_function(
                "Number(document.querySelector('#timeline').dataset.points) >= 3", timeout=10000
            )
            page.wait_for_function(
                "document.querySelector('#status').textContent === 'live'", timeout=5000
            )
            assert page.locator("#stat-latency").inner_text().endswith("ms")
            assert page.locator("#stat-fps").inner_text().endswith("frames/s")
            screenshot(page, "https-camera-test")
            page.get_by_role("button", name="Stop").click()
            assert page.locator("#stat-latency").inner_text() == "–"
            assert page.locator("#stat-fps").inner_text() == "–"
            assert page.locator("#overlay").get_attribute("data-boxes") == "0"
    # A restart keeps the certificate: the same fingerprint is printed and served.
    with served(
        "--bundle", str(tiny_bundle), "--tls-self-signed", "--data-dir", str(data)
    ) as again:
        assert again.wait_line(r"SHA-256 fingerprint ([0-9A-F:]{95})").group(1) == printed
        assert not any("made a self-signed TLS certificate" in line for line in again.lines)


def test_given_certificate_and_bad_tls_flags(tmp_path: Path) -> None:
    """--tls-cert/--tls-key are loaded before the model (a bad pair fails fast, one line);
    the self-signed certificate names localhost, this host, loopback and the listen address,
    is kept, and is made again when the listen address is one it does not name."""
    import socket

    from cryptography import x509

    from stream_server.shell.tls import ensure_self_signed, fingerprint, tls_files

    cert, key = ensure_self_signed(tmp_path / "a", "192.0.2.7")
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    names = set(san.value.get_values_for_type(x509.DNSName))
    ips = {str(a) for a in san.value.get_values_for_type(x509.IPAddress)}
    assert {"localhost", socket.gethostname().lower()} <= names
    assert {"127.0.0.1", "::1", "192.0.2.7"} <= ips
    first = fingerprint(cert)
    assert ensure_self_signed(tmp_path / "a", "192.0.2.7") == (cert, key)
    assert fingerprint(cert) == first  # kept
    ensure_self_signed(tmp_path / "a", "192.0.2.8")
    assert fingerprint(cert) != first  # a new listen address: made again

    given = tls_files(Settings(tls_cert=cert, tls_key=key))
    assert given is not None and not given.self_signed and given.fingerprint == fingerprint(cert)
    other_cert, other_key = ensure_self_signed(tmp_path / "b", "127.0.0.1")
    for settings, error in [
        (Settings(tls_cert=cert), "--tls-cert and --tls-key go together"),
        (Settings(tls_key=key), "--tls-cert and --tls-key go together"),
        (Settings(tls_cert=cert, tls_key=other_key), "do not load together"),
        (Settings(tls_self_signed=True, tls_cert=cert, tls_key=key), "exclude each other"),
    ]:
        with pytest.raises(SettingsError, match=error):
            tls_files(settings)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_server",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(other_key),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepfake-serve: error: TLS certificate")


@pytest.mark.browser
def test_plain_http_under_a_name_says_the_webcam_needs_https(live_server: LiveServer) -> None:
    """Over plain http from a name that is not localhost the browser offers no camera: the
    page says so at once (and again on Start) instead of failing silently."""
    with chromium_named(None) as ctx:
        page = ctx.new_page()
        page.goto(f"http://{NAME}:{live_server.port}/")
        assert page.evaluate("window.isSecureContext") is False
        alert = page.locator("#live-error")
        alert.wait_for(state="visible", timeout=5000)
        text = alert.inner_text()
        assert "webcam needs a secure page" in text and "https://" in text
        assert "--tls-self-signed" in text
        page.get_by_role("button", name="Start camera").click()
        page.wait_for_function("document.querySelector('#start').disabled === false", timeout=5000)
        assert "webcam needs a secure page" in alert.inner_text()
        screenshot(page, "http-camera-test")
    assert httpx.get(live_server.url + "/healthz").json()["streams"] == 0


# -- ICE ------------------------------------------------------------------------------------

RECORD_RTC = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__rtc = [];
  window.RTCPeerConnection = function (config) {
    const pc = new Original(config);
    window.__rtc.push({ given: JSON.parse(JSON.stringify(config)), pc });
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""


@pytest.mark.browser
def test_config_hands_the_ice_servers_with_credentials_to_the_page(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """--ice-servers with a TURN user and credential: GET /v1/config returns them shaped like
    the browser's iceServers (a TURN URL without credentials is kept from the page), and the
    page's RTCPeerConnection is made with exactly them."""
    servers = (
        "stun:127.0.0.1:9",
        "turn:alice:s%40cret@127.0.0.1:9?transport=tcp",
        "turn:127.0.0.1:9?transport=udp",  # no credentials: browsers throw on it
    )
    want = [
        {"urls": ["stun:127.0.0.1:9"]},
        {"urls": ["turn:127.0.0.1:9?transport=tcp"], "username": "alice", "credential": "s@cret"},
    ]
    with LiveServer(bundle=tiny_bundle, ice_servers=servers) as srv:
        config = httpx.get(srv.url + "/v1/config").json()
        assert config["ice_servers"] == want
        assert config["model"] == "tiny-test@1" and config["threshold"] == 0.5
        assert config["analysis_fps"] == 5.0 and config["window"] == 20
        clip = write_y4m(tmp_path / "face.y4m", face_frames(15, size=(320, 240)))
        with chromium_named(clip) as ctx:
            page = ctx.new_page()
            page.add_init_script(RECORD_RTC)
            page.goto(srv.url + "/")
            page.get_by_role("button", name="Start camera").click()
            page.wait_for_function("window.__rtc.length >= 1", timeout=10000)
            given = page.evaluate("window.__rtc[0].given")
            assert given["iceServers"] == want
            used = page.evaluate("window.__rtc[0].pc.getConfiguration().iceServers")
            assert [s["urls"] for s in used] == [s["urls"] for s in want]
            assert used[1]["username"] == "alice" and used[1]["credential"] == "s@cret"
            page.get_by_role("button", name="Stop").click()


@pytest.mark.browser
def test_an_answer_without_ice_candidates_is_refused_and_the_page_says_why(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """--ice-addresses naming an address this host does not have: the answer would carry no
    candidate, so POST /offer answers 500 with the reason (logged as a warning) and the page
    shows it instead of waiting forever for scores."""
    import aioice.ice

    before = aioice.ice.get_host_addresses
    clip = write_y4m(tmp_path / "face.y4m", face_frames(15, size=(320, 240)))
    try:
        with Threaded(bundle=tiny_bundle, ice_addresses=("192.0.2.1",)) as srv:
            with chromium_named(clip) as ctx:
                page = ctx.new_page()
                page.goto(srv.url + "/")
                page.get_by_role("button", name="Start camera").click()
                alert = page.locator("#live-error")
                alert.wait_for(state="visible", timeout=15000)
                assert "no ICE candidate" in alert.inner_text()
                assert "--ice-addresses" in alert.inner_text()
                assert page.get_by_role("button", name="Start camera").is_enabled()
            health = httpx.get(srv.url + "/healthz").json()
            assert health["streams"] == 0 and health["status"] == "ok"
    finally:
        aioice.ice.get_host_addresses = before


def test_a_loopback_only_host_offers_loopback_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no --ice-addresses, aioice offers every address but loopback; on a host that has
    nothing else it would offer nothing, so loopback is offered (with a warning)."""
    import aioice.ice

    from stream_server.shell import webrtc

    before = aioice.ice.get_host_addresses
    try:
        webrtc._AIOICE_HOST_ADDRESSES, real = (lambda **_: []), webrtc._AIOICE_HOST_ADDRESSES
        with caplog.at_level("WARNING", logger="stream_server.shell.webrtc"):
            assert webrtc.configure_ice(Settings()) == ["127.0.0.1", "::1"]
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert "no network address but loopback" in caplog.text
        webrtc._AIOICE_HOST_ADDRESSES = lambda **_: ["192.0.2.5"]
        aioice.ice.get_host_addresses = before
        assert webrtc.configure_ice(Settings()) is None  # aioice's own lookup is kept
        assert aioice.ice.get_host_addresses is before
        assert webrtc.configure_ice(Settings(ice_addresses=("::1",))) == ["::1"]
        assert aioice.ice.get_host_addresses(True, True) == ["::1"]
    finally:
        webrtc._AIOICE_HOST_ADDRESSES = real
        aioice.ice.get_host_addresses = before


class Threaded:
    """The app under `build_server` (the uvicorn `deepfake-serve` runs) in a thread, with any
    Settings (LiveServer fixes --ice-addresses)."""

    def __init__(self, **overrides: Any) -> None:
        from stream_server.shell.api import create_app
        from stream_server.shell.server import build_server
        from stream_server.shell.service import Service

        self.port = free_port()
        settings = Settings(port=self.port, **overrides)
        self.service = Service(settings)
        self.server = build_server(
            create_app(self.service), settings, self.service.begin_shutdown, log_level="warning"
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Threaded:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


# -- operations -----------------------------------------------------------------------------


def test_livez_readyz_and_healthz_status_codes(tiny_bundle: Path) -> None:
    """/livez 200 while the process serves; /readyz and /healthz 503 before the engine runs
    and once shutdown begins, 200 in between; /healthz keeps its fields either way."""
    import asyncio

    from stream_server.shell.api import create_app
    from stream_server.shell.service import Service

    async def before_start() -> list[httpx.Response]:
        app = create_app(Service(Settings(bundle=tiny_bundle)))  # lifespan not run: not warm
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.get(p) for p in ("/livez", "/readyz", "/healthz")]

    live, ready, health = asyncio.run(before_start())
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    with LiveServer(bundle=tiny_bundle) as srv:
        codes = {p: httpx.get(srv.url + p).status_code for p in ("/livez", "/readyz", "/healthz")}
        assert codes == {"/livez": 200, "/readyz": 200, "/healthz": 200}
        ok = httpx.get(srv.url + "/healthz").json()
        assert ok["status"] == "ok"
        srv.service.begin_shutdown()
        assert httpx.get(srv.url + "/livez").status_code == 200
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503 and r.json() == {
            "status": "not_ready",
            "reason": "shutting down",
        }
        degraded = httpx.get(srv.url + "/healthz")
        assert degraded.status_code == 503 and degraded.json()["status"] == "degraded"
        assert set(degraded.json()) == set(ok) == set(health.json())


def test_webrtc_libraries_log_at_warning_unless_debug() -> None:
    import logging

    from stream_server.shell.server import build_server

    def app(*_: Any) -> None: ...

    try:
        for level, want in (("info", logging.WARNING), ("debug", logging.DEBUG)):
            build_server(app, Settings(log_level=level), lambda: None)
            for name in ("aioice", "aiortc", "aioice.ice", "aiortc.rtcpeerconnection"):
                assert logging.getLogger(name).getEffectiveLevel() == want, (level, name)
    finally:
        build_server(app, Settings(), lambda: None)


@pytest.mark.parametrize(
    "command", ["deepfake-serve", "deepfake-scan", "deepfake-export", "deepfake-train"]
)
def test_every_command_has_version(command: str) -> None:
    from importlib.metadata import version

    exe = Path(sys.executable).parent / command
    if not exe.exists():
        pytest.fail(f"{exe} is missing: pip install -e . installs the console scripts")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{command} {version('deepfake-live')}"


def test_roc_without_matplotlib_is_one_line_before_any_scan(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from stream_server.shell.scan_cli import main\n"
        f"sys.exit(main([{str(tmp_path)!r}, '--roc', {str(tmp_path / 'roc.png')!r}]))"
    )
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "deepfake-scan: error: --roc needs matplotlib (pip install matplotlib), which is not "
        "installed"
    ]
    assert time.monotonic() - t0 < 30 and not (tmp_path / "roc.png").exists()


# -- the page -------------------------------------------------------------------------------


@pytest.mark.browser
def test_cameras_view_without_cameras_shows_no_player_and_the_page_has_a_favicon(
    live_server: LiveServer,
) -> None:
    from tests.browser import chromium

    icon = httpx.get(live_server.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    with chromium(None) as ctx:
        page = ctx.new_page()
        page.goto(live_server.url + "/#cameras")
        page.get_by_text("No cameras are registered").wait_for(timeout=5000)
        assert page.locator("#camera-stage").is_hidden()
        assert page.locator("#camera-video").is_hidden()
        assert page.get_by_text("Not watching").is_hidden()
        assert page.get_by_role("button", name="Stop watching").is_hidden()
        assert page.locator("#cameras-error").is_hidden()
        href = page.evaluate("document.querySelector('link[rel=icon]').href")
        assert httpx.get(href).status_code == 200
        screenshot(page, "cameras-none")


@pytest.mark.browser
@pytest.mark.rtsp
def test_stop_watching_a_camera_clears_its_face_box(tiny_bundle: Path, tmp_path: Path) -> None:
    from tests.browser import page_watching_a_camera

    with page_watching_a_camera(tiny_bundle, tmp_path, "Porch") as page:
        page.wait_for_function(
            "Number(document.querySelector('#camera-overlay').dataset.boxes) >= 1",
            timeout=20000,
        )
        page.get_by_role("button", name="Stop watching").click()
        assert page.locator("#camera-stage").is_hidden()
        # No late score message draws the box again: it stays cleared for a second.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert page.locator("#camera-overlay").get_attribute("data-boxes") == "0"
            assert page.locator("#camera-verdict").get_attribute("data-label") == "idle"
            time.sleep(0.1)


def test_no_secret_of_an_ice_server_in_its_error() -> None:
    from stream_server.shell.ice import parse_ice_server

    with pytest.raises(SettingsError) as err:
        parse_ice_server("stun:alice:hunter2@127.0.0.1:3478")
    assert "hunter2" not in str(err.value)
