"""The page's Cameras view manages cameras through the HTTP API (issue 17): in a real Chromium,
against a real server on loopback and a real GStreamer RTSP camera, a user adds a camera, watches
it until scores show, stops, renames it, reads its history (the last hour's chart and its alerts)
and removes it; the API agrees at each step. Failures show the API's own reason."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.browser import chromium, screenshot
from tests.bundles import low_threshold
from tests.conftest import LiveServer, free_port
from tests.rtsp import RtspServer, write_camera_clip
from tests.timing import ms, poll

pytestmark = [pytest.mark.browser, pytest.mark.rtsp]

SCORED = (
    "['real','fake','warming_up'].includes(document.querySelector('#camera-verdict').dataset.label)"
)


def test_add_watch_rename_history_and_remove_a_camera_from_the_page(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    clip = write_camera_clip(tmp_path / "cam.mp4", loops=6)
    # Threshold 0.01: every face scores above it, so the camera raises an alert to list.
    bundle = low_threshold(tiny_bundle, tmp_path)
    with (
        RtspServer(clip, free_port()) as cam,
        LiveServer(bundle=bundle, camera_allow=("127.0.0.1",)) as srv,
        chromium(None) as ctx,
    ):
        page = ctx.new_page()
        page.goto(srv.url + "/#cameras")
        # The note is written before the list is drawn again: wait for the list, too.
        page.locator("#camera-list").get_by_text("No cameras are registered").wait_for(
            timeout=ms(10)
        )
        # The stage (player and verdict) stays hidden until a camera is watched.
        assert not page.locator("#camera-stage").is_visible()

        # Add: name, rtsp:// URL, an id of the user's choosing and a short alert hold.
        page.get_by_label("Name", exact=True).fill("Back yard")
        page.get_by_label("RTSP URL").fill(cam.url)
        page.get_by_label("Id (optional)").fill("yard")
        page.get_by_label("Alert after, s (optional)").fill("0.5")
        page.get_by_role("button", name="Add camera").click()
        page.locator("#cameras-note").get_by_text("Added Back yard (id yard).").wait_for(
            timeout=ms(10)
        )
        listed = httpx.get(srv.url + "/v1/cameras").json()["cameras"]
        assert [(c["id"], c["name"], c["alert_seconds"]) for c in listed] == [
            ("yard", "Back yard", 0.5)
        ]
        assert page.get_by_label("Name", exact=True).input_value() == ""  # the form is cleared

        # Another camera with the same id: the API's 409 reason is shown, nothing is added.
        page.get_by_label("Name", exact=True).fill("Another")
        page.get_by_label("RTSP URL").fill(f"rtsp://127.0.0.1:{free_port()}/other")
        page.get_by_label("Id (optional)").fill("yard")
        page.get_by_role("button", name="Add camera").click()
        error = page.locator("#cameras-error")
        error.wait_for(timeout=ms(10))
        assert "could not be added" in error.inner_text()
        assert "camera id 'yard' is taken" in error.inner_text()
        assert len(httpx.get(srv.url + "/v1/cameras").json()["cameras"]) == 1
        page.get_by_label("Id (optional)").fill("")
        page.get_by_label("RTSP URL").fill("http://example.com/cam")
        page.get_by_role("button", name="Add camera").click()
        page.wait_for_function(
            "document.querySelector('#cameras-error').textContent.includes("
            "'only rtsp:// and rtsps:// camera URLs are accepted, not http: URLs')",
            timeout=ms(10),
        )
        assert len(httpx.get(srv.url + "/v1/cameras").json()["cameras"]) == 1
        assert page.get_by_label("RTSP URL").input_value() == "http://example.com/cam"  # kept

        # Watch until scores show, with live stats.
        page.get_by_role("button", name="Watch Back yard").click()
        page.wait_for_function(SCORED, timeout=ms(20))
        page.wait_for_function(
            "document.querySelector('#camera-video').videoWidth === 320", timeout=ms(10)
        )
        page.wait_for_function(
            "document.querySelector('#camera-stat-fps').textContent.includes('frames/s')",
            timeout=ms(10),
        )
        assert httpx.get(srv.url + "/v1/cameras/yard").json()["viewers"] == 1

        # Stop: the stage goes, its stats are reset, the server drops the viewer.
        page.get_by_role("button", name="Stop watching").click()
        assert not page.locator("#camera-stage").is_visible()
        assert page.locator("#camera-stat-fps").inner_text() == "–"
        assert page.locator("#camera-stat-latency").inner_text() == "–"
        page.wait_for_function(
            "document.querySelector('#camera-list').textContent.includes('fake')", timeout=ms(10)
        )

        # Rename inline.
        page.get_by_role("button", name="Rename Back yard").click()
        page.get_by_label("New name for Back yard").fill("Garden")
        page.get_by_role("button", name="Save the name of Back yard").click()
        page.get_by_role("button", name="Watch Garden").wait_for(timeout=ms(10))
        assert httpx.get(srv.url + "/v1/cameras/yard").json()["name"] == "Garden"

        # History: the last hour's chart has the minute being counted, and the alert is listed
        # (the camera kept scoring, watched or not).
        api = poll(
            lambda: httpx.get(srv.url + "/v1/alerts", params={"camera": "yard"}).json()["alerts"],
            20,
            every=0.2,
        )
        assert api, "the camera raised no alert"
        page.get_by_role("button", name="History of Garden").click()
        details = page.locator("#camera-details")
        details.wait_for(timeout=ms(10))
        assert page.locator("#camera-details-title").inner_text() == "History: Garden"
        page.wait_for_function(
            "Number(document.querySelector('#camera-alerts').dataset.count) >= 1", timeout=ms(10)
        )
        history = page.locator("#camera-history")
        assert int(history.get_attribute("data-minutes") or 0) >= 1
        assert page.locator("#camera-history circle.minute").count() >= 1
        assert page.locator("#camera-history path.mean").count() == 1
        assert page.locator("#camera-history line.threshold").count() == 1
        assert int(history.get_attribute("data-alerts") or 0) >= 1
        assert page.locator("#camera-history line.alert").count() >= 1
        assert "fake" in page.locator("#camera-alerts li").first.inner_text()
        assert page.locator("#camera-alerts li").count() == len(api)
        box = history.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 40
        screenshot(page, "camera-history")

        # Remove, confirming inline; the API no longer has it and the page says so.
        page.get_by_role("button", name="Remove Garden").click()
        page.get_by_role("button", name="Confirm removing Garden").click()
        page.locator("#cameras-note").get_by_text("Removed Garden.").wait_for(timeout=ms(10))
        assert "No cameras are registered" in page.locator("#camera-list").inner_text()
        assert not details.is_visible()
        assert httpx.get(srv.url + "/v1/cameras").json()["cameras"] == []
        assert httpx.get(srv.url + "/v1/cameras/yard").status_code == 404


def test_cameras_view_on_a_phone_by_keyboard_explains_refusals_and_keeps_file_cameras(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """On a phone-sized page, driven by the keyboard: a camera from --cameras-file is listed
    but cannot be renamed or removed; one added with Enter fills the --max-cameras limit, and
    the next is refused with the server's reason (not "try again"); a camera with no scores
    yet shows an empty chart and no alerts; nothing scrolls sideways."""
    closed = f"rtsp://127.0.0.1:{free_port()}/none"
    cams = tmp_path / "cameras.toml"
    cams.write_text(f'[[cameras]]\nname = "Lobby"\nurl = "{closed}"\n')
    with (
        LiveServer(
            bundle=tiny_bundle,
            camera_allow=("127.0.0.1",),
            max_cameras=2,
            cameras_file=cams,
            camera_backoff_max=1.0,
        ) as srv,
        chromium(None) as ctx,
    ):
        page = ctx.new_page()
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(srv.url + "/#cameras")
        page.get_by_role("button", name="Watch Lobby").wait_for(timeout=ms(10))
        assert page.get_by_role("button", name="Rename Lobby").is_disabled()
        assert page.get_by_role("button", name="Remove Lobby").is_disabled()

        name = page.get_by_label("Name", exact=True)
        name.focus()
        page.keyboard.type("Side gate")
        page.keyboard.press("Tab")
        page.keyboard.type(f"rtsp://127.0.0.1:{free_port()}/gate")
        page.keyboard.press("Enter")
        page.locator("#cameras-note").get_by_text("Added Side gate (id side-gate).").wait_for(
            timeout=ms(10)
        )
        ids = [c["id"] for c in httpx.get(srv.url + "/v1/cameras").json()["cameras"]]
        assert sorted(ids) == ["lobby", "side-gate"]

        name.fill("Third")
        page.get_by_label("RTSP URL").fill(f"rtsp://127.0.0.1:{free_port()}/third")
        page.get_by_label("RTSP URL").press("Enter")
        error = page.locator("#cameras-error")
        error.wait_for(timeout=ms(10))
        assert error.inner_text() == (
            "The camera could not be added: camera limit reached (2 cameras)."
        )
        assert len(httpx.get(srv.url + "/v1/cameras").json()["cameras"]) == 2

        # The history of a camera that never connected: an empty chart, no alerts.
        history = page.get_by_role("button", name="History of Lobby")
        history.focus()
        page.keyboard.press("Enter")
        page.wait_for_function(
            "Number(document.querySelector('#camera-details').dataset.loaded) >= 1",
            timeout=ms(10),
        )
        assert page.locator("#camera-history").get_attribute("data-minutes") == "0"
        assert "No scores" in (page.locator("#camera-history").get_attribute("aria-label") or "")
        assert page.get_by_text("No alerts in the last 24 hours.").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, "cameras-phone")

        # Remove by keyboard.
        page.get_by_role("button", name="Remove Side gate").focus()
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Confirm removing Side gate").focus()
        page.keyboard.press("Enter")
        page.locator("#cameras-note").get_by_text("Removed Side gate.").wait_for(timeout=ms(10))
        ids = [c["id"] for c in httpx.get(srv.url + "/v1/cameras").json()["cameras"]]
        assert ids == ["lobby"]


def test_a_watched_camera_comes_back_by_itself_when_the_server_restarts(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """The server behind a watched camera stops (a restart, a deploy): the page says the
    connection was lost and that it is reconnecting, keeps trying while nothing answers, and
    shows the camera live again, scored, once the server is back on the same address; the
    user does nothing."""
    clip = write_camera_clip(tmp_path / "cam.mp4", loops=10)
    port = free_port()
    served = {
        "port": port,
        "bundle": tiny_bundle,
        "camera_allow": ("127.0.0.1",),
        "data_dir": tmp_path / "state",  # the camera is kept across the restart
    }
    error = "document.querySelector('#cameras-error')"
    with RtspServer(clip, free_port()) as cam, chromium(None) as ctx:
        page = ctx.new_page()
        with LiveServer(**served) as srv:  # type: ignore[arg-type]
            r = httpx.post(srv.url + "/v1/cameras", json={"url": cam.url, "name": "Front door"})
            assert r.status_code == 201, r.text
            page.goto(srv.url + "/#cameras")
            page.get_by_role("button", name="Watch Front door").click()
            page.wait_for_function(SCORED, timeout=ms(20))
            assert not page.locator("#cameras-error").is_visible()
        # the server is gone: the page explains and keeps trying
        page.wait_for_function(
            f"{error}.textContent.includes('Reconnecting to Front door')", timeout=ms(45)
        )
        assert page.locator("#camera-stage").is_visible()
        page.wait_for_function(  # an attempt while nothing answers is one more retry, not the end
            f"{error}.textContent.includes('could not be watched')", timeout=ms(30)
        )
        assert "Reconnecting" in page.locator("#cameras-error").inner_text()
        with LiveServer(**served) as srv:  # type: ignore[arg-type]
            viewers = poll(
                lambda: httpx.get(srv.url + "/v1/cameras").json()["cameras"][0]["viewers"],
                60,
                every=0.5,
                until=lambda n: n == 1,
            )
            assert viewers == 1
            page.wait_for_function(SCORED, timeout=ms(30))
            page.wait_for_function(
                "document.querySelector('#camera-stat-fps').textContent.includes('frames/s')",
                timeout=ms(20),
            )
            page.wait_for_function(f"{error}.hidden", timeout=ms(10))
