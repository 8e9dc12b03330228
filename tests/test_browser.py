"""The web client in a real Chromium with a fake camera, against a real server on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from bench.media import face_frames, faceless_frames
from tests.browser import chromium, page_watching_a_camera, screenshot, write_y4m
from tests.conftest import LiveServer
from tests.timing import ms, poll, scaled

pytestmark = pytest.mark.browser


def wait_streams(server: LiveServer, n: int, within: float = 10.0) -> int:
    def streams() -> int:
        return int(httpx.get(server.url + "/healthz").json()["streams"])

    return poll(streams, within, every=0.1, until=lambda s: s == n)


def test_webcam_check_shows_verdict_timeline_and_face_box(
    live_server: LiveServer, tmp_path: Path
) -> None:
    clip = write_y4m(tmp_path / "face.y4m", face_frames(60, size=(640, 480)))
    with chromium(clip) as ctx:
        page = ctx.new_page()
        page.goto(live_server.url + "/")
        assert page.get_by_role("heading", name="Deepfake live check").is_visible()
        assert page.locator("#verdict-label").inner_text() == "Not started"
        t0 = time.monotonic()
        page.get_by_role("button", name="Start camera").click()
        # A verdict (not a placeholder) within 5 s of starting (times the test time scale).
        page.wait_for_function(
            "['real','fake','warming_up'].includes(document.querySelector('#verdict').dataset.label)",
            timeout=ms(5),
        )
        assert time.monotonic() - t0 < scaled(5)
        # The timeline moves: it gains points. (Waits below are for things that must happen, not
        # promised speeds: they pass as soon as the page shows them.)
        page.wait_for_function(
            "Number(document.querySelector('#timeline').dataset.points) >= 3", timeout=ms(15)
        )
        first = int(page.locator("#timeline").get_attribute("data-points"))
        page.wait_for_function(
            f"Number(document.querySelector('#timeline').dataset.points) > {first}", timeout=ms(10)
        )
        page.wait_for_function(
            "Number(document.querySelector('#overlay').dataset.boxes) >= 1", timeout=ms(15)
        )
        page.wait_for_function(
            "document.querySelector('#verdict').dataset.label !== 'warming_up'", timeout=ms(20)
        )
        label = page.locator("#verdict-label").inner_text()
        assert label in ("Real", "Likely fake")
        assert "Fake probability" in page.locator("#verdict-prob").inner_text()
        assert page.locator("#stat-model").inner_text() == "tiny-test@1"
        assert page.locator("#stat-latency").inner_text().endswith("ms")
        assert page.locator("#status").inner_text() == "live"
        assert wait_streams(live_server, 1) == 1
        screenshot(page, "webcam-live")
        page.get_by_role("button", name="Stop").click()
        assert page.locator("#verdict-label").inner_text() == "Not started"
        assert wait_streams(live_server, 0) == 0


def test_faceless_camera_shows_no_face(live_server: LiveServer, tmp_path: Path) -> None:
    clip = write_y4m(tmp_path / "room.y4m", faceless_frames(30, size=(640, 480)))
    with chromium(clip) as ctx:
        page = ctx.new_page()
        page.goto(live_server.url + "/")
        page.get_by_role("button", name="Start camera").click()
        page.wait_for_function(
            "document.querySelector('#verdict').dataset.label === 'no_face'", timeout=ms(15)
        )
        assert page.locator("#verdict-label").inner_text() == "No face"
        assert page.locator("#overlay").get_attribute("data-boxes") == "0"
        screenshot(page, "webcam-no-face")


def test_denied_camera_permission_explains_itself(live_server: LiveServer) -> None:
    with chromium(None, grant_camera=False) as ctx:
        page = ctx.new_page()
        page.goto(live_server.url + "/")
        page.get_by_role("button", name="Start camera").click()
        alert = page.get_by_role("alert").first
        alert.wait_for(timeout=ms(15))
        assert "Camera permission was denied" in alert.inner_text()
        assert page.get_by_role("button", name="Start camera").is_enabled()
        screenshot(page, "webcam-denied")
    assert httpx.get(live_server.url + "/healthz").json()["streams"] == 0


def test_stream_limit_is_explained(tiny_bundle: Path, tmp_path: Path) -> None:
    clip = write_y4m(tmp_path / "face.y4m", face_frames(30, size=(640, 480)))
    with LiveServer(bundle=tiny_bundle, max_streams=1) as srv, chromium(clip) as ctx:
        first, second = ctx.new_page(), ctx.new_page()
        first.goto(srv.url + "/")
        first.get_by_role("button", name="Start camera").click()
        first.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=ms(15)
        )
        second.goto(srv.url + "/")
        second.get_by_role("button", name="Start camera").click()
        alert = second.get_by_role("alert").first
        alert.wait_for(timeout=ms(15))
        assert "stream limit reached" in alert.inner_text()
        screenshot(second, "webcam-limit")


def test_page_is_usable_by_keyboard_and_on_a_phone(live_server: LiveServer) -> None:
    with chromium(None) as ctx:
        page = ctx.new_page()
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(live_server.url + "/")
        # Tab reaches the view switcher and the camera controls.
        focused = []
        for _ in range(8):
            page.keyboard.press("Tab")
            focused.append(
                page.evaluate("document.activeElement.textContent || document.activeElement.id")
            )
        assert "Analyze a file" in focused and "Start camera" in focused
        page.get_by_role("button", name="Analyze a file").press("Enter")
        assert page.locator("#view-analyze").is_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing overflows sideways on a phone
        # No request leaves the server's origin (no CDN fonts or scripts).
        screenshot(page, "phone-analyze")


def test_page_loads_nothing_from_other_origins(live_server: LiveServer) -> None:
    with chromium(None) as ctx:
        page = ctx.new_page()
        urls: list[str] = []
        page.on("request", lambda r: urls.append(r.url))
        page.goto(live_server.url + "/")
        page.wait_for_load_state("networkidle")
        assert urls and all(u.startswith(live_server.url) for u in urls), urls


def test_analyze_a_file_view_shows_verdict_and_timeline(
    live_server: LiveServer, tmp_path: Path
) -> None:
    from bench.media import write_video

    clip = write_video(tmp_path / "interview.mp4", face_frames(45, size=(320, 240)), fps=15)
    with chromium(None) as ctx:
        page = ctx.new_page()
        page.goto(live_server.url + "/#analyze")
        page.set_input_files("#file-input", str(clip))
        page.wait_for_function("!document.querySelector('#analyze-result').hidden", timeout=ms(20))
        assert page.locator("#file-verdict").get_attribute("data-label") in ("real", "fake")
        assert "Fake probability" in page.locator("#file-verdict").inner_text()
        assert (
            "interview.mp4: 3.0 s, 15 frames analysed."
            == page.locator("#analyze-status").inner_text()
        )
        screenshot(page, "analyze-file")
        # A file that is not a video gets a plain message, not a verdict.
        notes = tmp_path / "notes.mp4"
        notes.write_text("not a video\n" * 50)
        page.set_input_files("#file-input", str(notes))
        alert = page.locator("#analyze-error")
        alert.wait_for(state="visible", timeout=ms(10))
        assert "is not a readable video" in alert.inner_text()


@pytest.mark.rtsp
def test_camera_monitor_view_plays_a_camera_with_scores(tiny_bundle: Path, tmp_path: Path) -> None:
    with page_watching_a_camera(tiny_bundle, tmp_path, "Front door") as page:
        page.wait_for_function(
            "['real','fake','warming_up'].includes(document.querySelector('#camera-verdict').dataset.label)",
            timeout=ms(15),
        )
        page.wait_for_function(
            "document.querySelector('#camera-video').videoWidth === 320", timeout=ms(10)
        )
        assert "Front door" in page.locator("#camera-list").inner_text()
        screenshot(page, "camera-monitor")


def test_page_opened_with_a_token_uses_it_and_without_one_explains(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """README: with --token, open the page as `/?token=...`. The page itself is served without
    the token; opened with it, the page sends it as a bearer token on `/offer` and the check
    runs; opened without it (a new tab: nothing saved), starting the camera explains what to do."""
    token = "page-token-0123456789abcdef"
    clip = write_y4m(tmp_path / "face.y4m", face_frames(30, size=(640, 480)))
    with LiveServer(bundle=tiny_bundle, token=token) as srv, chromium(clip) as ctx:
        offers: list[str | None] = []
        page = ctx.new_page()
        page.on(
            "request",
            lambda r: (
                offers.append(r.headers.get("authorization")) if r.url.endswith("/offer") else None
            ),
        )
        page.goto(f"{srv.url}/?token={token}")
        page.get_by_role("button", name="Start camera").click()
        page.wait_for_function(
            "['real','fake','warming_up'].includes(document.querySelector('#verdict').dataset.label)",
            timeout=ms(15),
        )
        assert page.locator("#status").inner_text() == "live"
        assert offers and all(a == f"Bearer {token}" for a in offers), offers
        assert wait_streams(srv, 1) == 1
        page.get_by_role("button", name="Stop").click()
        assert wait_streams(srv, 0) == 0
        other = ctx.new_page()
        other.goto(srv.url + "/")
        other.get_by_role("button", name="Start camera").click()
        alert = other.get_by_role("alert").first
        alert.wait_for(timeout=ms(15))
        assert "needs an access token" in alert.inner_text() and "?token=" in alert.inner_text()
        assert wait_streams(srv, 0) == 0


RECORD_PEERS = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (config) {
    const pc = new Original(config);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""


# Payload bytes the page's video sender says it sent (outbound-rtp bytesSent).
SENT_BYTES = """
(async () => {
  const stats = await window.__pcs[0].getStats();
  let bytes = 0;
  stats.forEach((s) => { if (s.type === "outbound-rtp" && s.kind === "video") bytes += s.bytesSent; });
  return bytes;
})()
"""


def counter(server: LiveServer, name: str) -> float:
    """A Prometheus counter's value from the server's /metrics."""
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(f"{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"{name}_total not in /metrics")


def server_bytes_received(server: LiveServer) -> int:
    """What the server's own aiortc peers have received, by their pc.getStats() (the transports'
    bytesReceived: SRTP/SRTCP and data channel datagrams, measured on the server)."""
    total = 0
    for owner in list(server.service.owners.values()):
        pc, tasks = getattr(owner, "pc", None), list(getattr(owner, "tasks", ()))
        if pc is None or not tasks:
            continue
        loop = tasks[0].get_loop()  # the server's event loop (uvicorn's thread)
        report = asyncio.run_coroutine_threadsafe(pc.getStats(), loop).result(5)
        total += sum(int(s.bytesReceived) for s in report.values() if s.type == "transport")
    return total


def test_page_sends_only_the_frames_the_analysis_needs(live_server: LiveServer) -> None:
    """Issue #18: GET /v1/config hands out capture hints (analysis fps x 2 for the sender, at
    most --sender-max-kbps, a modest 640x480 camera at a smooth 30 fps preview); the page asks the
    camera for them and caps its sender with RTCRtpSender.setParameters. Chromium's fake camera,
    set to 30 fps: the server receives about 10 frames/s (2 x the tiny model's 5) at no more than
    the bit-rate cap, analyses 5, and the preview stays at 30."""
    config = httpx.get(live_server.url + "/v1/config").json()
    assert config["capture"] == {
        "width": 640,
        "height": 480,
        "frame_rate": 30,
        "max_fps": 10.0,
        "max_kbps": 350,
    }
    with chromium(None, camera_fps=30) as ctx:  # no clip: the fake camera's own pattern
        page = ctx.new_page()
        page.add_init_script(RECORD_PEERS)
        page.goto(live_server.url + "/")
        # The cap rule for cameras that ignore the size asked for (either orientation).
        caps = page.evaluate(
            """import('/static/rtc.js').then((m) => [
                 m.senderCaps({width: 1920, height: 1080}, {width: 640, height: 480, max_fps: 10}),
                 m.senderCaps({width: 720, height: 1280}, {width: 640, height: 480, max_fps: 10}),
                 m.senderCaps({width: 640, height: 480}, {width: 640, height: 480, max_fps: 10}),
                 m.senderCaps({width: 640, height: 480}, {max_fps: 10, max_kbps: 350}),
                 m.senderCaps({width: 640, height: 480}, {max_fps: 10, max_kbps: 0}),
                 m.senderCaps({width: 640, height: 480}, undefined)])"""
        )
        assert caps == [
            {"maxFramerate": 10, "scaleResolutionDownBy": 3},
            {"maxFramerate": 10, "scaleResolutionDownBy": 2},
            {"maxFramerate": 10},
            {"maxFramerate": 10, "maxBitrate": 350_000},
            {"maxFramerate": 10},
            {},
        ]
        page.get_by_role("button", name="Start camera").click()
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=ms(15)
        )
        assert wait_streams(live_server, 1) == 1
        encoding = page.evaluate("window.__pcs[0].getSenders()[0].getParameters().encodings[0]")
        assert encoding["maxFramerate"] == 10
        assert encoding["maxBitrate"] == 350_000
        assert encoding.get("scaleResolutionDownBy", 1) == 1  # the camera gave 640x480
        preview = page.evaluate(
            "document.querySelector('#preview').srcObject.getVideoTracks()[0].getSettings()"
        )
        assert (preview["width"], preview["height"], preview["frameRate"]) == (640, 480, 30)
        time.sleep(2.0)  # past the first burst (and bandwidth probing) of the connection
        seconds = 5.0  # a measuring window, not a deadline
        s0 = page.evaluate(SENT_BYTES)
        t0 = time.monotonic()
        b0 = server_bytes_received(live_server)
        r0 = counter(live_server, "deepfake_frames_received")
        a0 = counter(live_server, "deepfake_frames_analysed")
        time.sleep(seconds)
        b1 = server_bytes_received(live_server)
        r1 = counter(live_server, "deepfake_frames_received")
        a1 = counter(live_server, "deepfake_frames_analysed")
        dt = time.monotonic() - t0
        s1 = page.evaluate(SENT_BYTES)
        received, analysed, kbps = (r1 - r0) / dt, (a1 - a0) / dt, 8 * (b1 - b0) / dt / 1000
        print(
            f"received {received:.1f} frames/s at {kbps:.0f} kbit/s (the page's outbound-rtp: "
            f"{8 * (s1 - s0) / dt / 1000:.0f} kbit/s of payload), analysed {analysed:.1f} frames/s"
        )
        # Uncapped this is ~30; the encoder may drop a few more under load, never send more.
        assert 5.0 <= received <= 12.5, received
        assert 3.5 <= analysed <= 5.5, analysed
        # At most the cap, with room for SRTP/RTCP/data-channel overhead and the encoder's
        # short overshoots around key frames (what the server measured, not what Chromium says).
        assert 0 < kbps <= 350 * 1.2, kbps
        page.get_by_role("button", name="Stop").click()
        assert wait_streams(live_server, 0) == 0


def test_page_caps_its_sender_bit_rate(tiny_bundle: Path, tmp_path: Path) -> None:
    """Issue #18: the page sets `maxBitrate` (--sender-max-kbps) on its sender, and the server's
    own aiortc peer receives no more than that. Chromium's bandwidth estimate starts at about
    300 kbit/s and only ramps up from there (uncapped, this face clip measured 280-350 kbit/s in
    the first 10 s and 1.3 Mbit/s after 25 s), so a 150 kbit/s cap binds from the first seconds;
    Chromium meets it by also sending a smaller picture, still at the capped frame rate, and
    the analysis rate holds."""
    clip = write_y4m(tmp_path / "face.y4m", face_frames(60, size=(640, 480)), fps=30)
    with LiveServer(bundle=tiny_bundle, sender_max_kbps=150) as srv, chromium(clip) as ctx:
        assert httpx.get(srv.url + "/v1/config").json()["capture"]["max_kbps"] == 150
        page = ctx.new_page()
        page.add_init_script(RECORD_PEERS)
        page.goto(srv.url + "/")
        page.get_by_role("button", name="Start camera").click()
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=ms(15)
        )
        assert wait_streams(srv, 1) == 1
        encoding = page.evaluate("window.__pcs[0].getSenders()[0].getParameters().encodings[0]")
        assert (encoding["maxBitrate"], encoding["maxFramerate"]) == (150_000, 10)
        time.sleep(3.0)  # past the first burst of the connection
        seconds = 5.0  # a measuring window, not a deadline
        t0 = time.monotonic()
        b0 = server_bytes_received(srv)
        a0 = counter(srv, "deepfake_frames_analysed")
        time.sleep(seconds)
        b1 = server_bytes_received(srv)
        a1 = counter(srv, "deepfake_frames_analysed")
        dt = time.monotonic() - t0
        kbps, analysed = 8 * (b1 - b0) / dt / 1000, (a1 - a0) / dt
        print(f"the server received {kbps:.0f} kbit/s, analysed {analysed:.1f} frames/s")
        # What the server measured, with room for SRTP/RTCP/data-channel overhead and the
        # encoder's short overshoots (measured: 137-147 kbit/s once settled).
        assert 0 < kbps <= 150 * 1.2, kbps
        assert 3.5 <= analysed <= 5.5, analysed
        page.get_by_role("button", name="Stop").click()
        assert wait_streams(srv, 0) == 0
