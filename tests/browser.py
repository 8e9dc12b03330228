"""Debian's Chromium driven by Playwright (never `playwright install`), with a fake camera that
plays a y4m clip the test writes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.browser import chromium_switches
from bench.media import write_video
from tests.rtsp import write_camera_clip

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "screenshots"


def require_chromium() -> str:
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium is not installed; .ci/run must install it (apt-get install chromium)"
            )
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return path


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    """A raw y4m clip, which Chromium's fake camera plays (--use-file-for-fake-video-capture)."""
    return write_video(path, frames, fps, codec="rawvideo", format="yuv4mpegpipe")  # type: ignore[no-any-return]


@contextmanager
def chromium(
    video: Path | None,
    grant_camera: bool = True,
    camera_fps: int | None = None,
    extra_args: tuple[str, ...] = (),
    ignore_https_errors: bool = False,
) -> Iterator[Any]:
    """`camera_fps`: the fake camera's frame rate when no clip is given (Chromium's default is
    20 fps); `extra_args`: more Chromium switches; `ignore_https_errors`: accept any
    certificate (a self-signed one)."""
    from playwright.sync_api import sync_playwright

    exe = require_chromium()
    args = chromium_switches(video, grant_camera, camera_fps)
    args.extend(extra_args)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args, headless=True)
        try:
            context = browser.new_context(
                permissions=["camera"] if grant_camera else [],
                ignore_https_errors=ignore_https_errors,
                viewport={"width": 1100, "height": 800},
            )
            yield context
        finally:
            browser.close()


@contextmanager
def page_watching_a_camera(bundle: Path, tmp_path: Path, name: str) -> Iterator[Any]:
    """The page's Cameras view watching a real RTSP camera called `name` (a 320x240 face clip
    served by GStreamer), registered on a LiveServer that allows its loopback address."""
    import httpx

    from tests.conftest import LiveServer, free_port
    from tests.rtsp import RtspServer

    clip = write_camera_clip(tmp_path / "cam.mp4", loops=4)
    with (
        RtspServer(clip, free_port()) as cam,
        LiveServer(bundle=bundle, camera_allow=("127.0.0.1",)) as srv,
        chromium(None) as ctx,
    ):
        r = httpx.post(srv.url + "/v1/cameras", json={"url": cam.url, "name": name})
        assert r.status_code == 201, r.text
        page = ctx.new_page()
        page.goto(srv.url + "/#cameras")
        page.get_by_role("button", name=f"Watch {name}").click()
        yield page


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
