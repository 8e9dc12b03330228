"""The verdict rule, pinned: `label == ("fake" if p_fake >= threshold else "real")` on every path.

The tiny test model has random weights, so its p_fake says nothing; bundles derived from it with a
threshold near 0 and near 1 force each label in turn, and the scan CLI, `Scanner`, the upload API
and a live WebRTC peer must all follow the rule (a flipped comparison fails every test here)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.media import face_frames, faceless_frames, write_video
from stream_server.core.bundle import MANIFEST, load_bundle, write_manifest
from tests.conftest import LiveServer
from tests.rtc_client import ClientPeer
from tests.rtsp import write_camera_clip
from tests.timing import ms, scaled

ROOT = Path(__file__).resolve().parent.parent
# Thresholds that force each label for any p_fake the tiny model gives (checked in each test).
FORCING = {"fake": 1e-6, "real": 1 - 1e-6}


def rule(p_fake: float, threshold: float) -> str:
    return "fake" if p_fake >= threshold else "real"


def with_threshold(src: Path, dst: Path, threshold: float) -> Path:
    """A copy of bundle `src` whose manifest says `threshold` (file hashes rewritten)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["threshold"] = threshold
    write_manifest(dst, manifest)
    assert load_bundle(dst).threshold == threshold
    return dst


@pytest.fixture(scope="module", params=sorted(FORCING))
def forced(
    request: pytest.FixtureRequest, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, float, Path]:
    """(the label the threshold forces, the threshold, the derived bundle)."""
    want: str = request.param
    thr = FORCING[want]
    out = tmp_path_factory.mktemp("forced") / f"tiny-{want}"
    return want, thr, with_threshold(tiny_bundle, out, thr)


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("verdict_clips") / "face.mp4",
        face_frames(45, size=(480, 360)),
        fps=15,
    )  # 3 s


@pytest.fixture(scope="module")
def room_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("verdict_rooms") / "room.mp4",
        faceless_frames(30, size=(320, 240)),
        fps=15,
    )


@pytest.fixture(scope="module")
def forced_server(forced: tuple[str, float, Path]) -> Iterator[LiveServer]:
    # Loopback cameras (the test's RTSP server) must be allowed explicitly.
    with LiveServer(bundle=forced[2], camera_allow=("127.0.0.1",)) as srv:
        yield srv


def scan_cli(bundle: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_server.shell.scan_cli", "--bundle", str(bundle), "--quiet"]
        + ["--json", *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def check_timeline(timeline: list[dict[str, Any]], want: str) -> None:
    """Every frame past warm-up carries the forced label, so each second's majority is it (or
    warming_up for the first second)."""
    labels = [s["label"] for s in timeline]
    assert set(labels) <= {want, "warming_up"} and labels[-1] == want, labels


def test_scan_cli_and_scanner_follow_the_rule_and_exit_codes(
    forced: tuple[str, float, Path], face_clip: Path, room_clip: Path
) -> None:
    from stream_server.core.scan import Scanner

    want, thr, bundle = forced
    r = scan_cli(bundle, face_clip, room_clip)
    assert r.returncode == (1 if want == "fake" else 0), (r.returncode, r.stderr[-2000:])
    doc = json.loads(r.stdout)
    assert doc["threshold"] == thr
    face, room = doc["results"]
    assert room["verdict"] == "no_face" and room["p_fake"] is None
    assert face["verdict"] == rule(face["p_fake"], thr) == want, (face["p_fake"], thr)
    check_timeline(face["timeline"], want)

    with Scanner(bundle) as scanner:
        assert scanner.bundle.threshold == thr
        res = scanner.scan(face_clip)
    assert res.p_fake is not None
    assert res.verdict == rule(res.p_fake, thr) == want
    assert res.p_fake == pytest.approx(face["p_fake"], abs=1e-5)


def test_upload_follows_the_rule(
    forced: tuple[str, float, Path], forced_server: LiveServer, face_clip: Path
) -> None:
    want, thr, _ = forced
    with face_clip.open("rb") as f:
        resp = httpx.post(
            forced_server.url + "/v1/analyze",
            files={"file": ("face.mp4", f, "video/mp4")},
            timeout=120,
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["verdict"] == rule(body["p_fake"], thr) == want, (body["p_fake"], thr)
    check_timeline(body["timeline"], want)
    assert httpx.get(forced_server.url + "/healthz").json()["threshold"] == thr


def test_live_webrtc_scores_follow_the_rule_once_warm(
    forced: tuple[str, float, Path], forced_server: LiveServer
) -> None:
    want, thr, _ = forced

    async def run() -> ClientPeer:
        peer = ClientPeer(forced_server.url, face_frames(60), fps=15)
        await peer.connect()
        deadline = asyncio.get_running_loop().time() + scaled(60)
        # Until at least 5 warm verdicts have arrived (warm-up is 5 analysed frames).
        while sum(m["label"] in ("real", "fake") for m in peer.scores()) < 5:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await peer.wait_scores(len(peer.scores()) + 1, within=min(left, 5.0))
        await peer.close()
        return peer

    peer = asyncio.run(run())
    assert peer.answer["threshold"] == thr
    scores = peer.scores()
    warm = [m for m in scores if m["label"] in ("real", "fake")]
    assert len(warm) >= 5, [m["label"] for m in scores]
    for m in scores:
        assert m["label"] != "no_face", m
        if m["label"] == "warming_up":
            assert all(f["label"] == "warming_up" for f in m["faces"]), m
            continue
        assert m["label"] == rule(m["p_fake"], thr) == want, (m["p_fake"], thr)
        for f in m["faces"]:
            if f["label"] != "warming_up":
                assert f["label"] == rule(f["p_fake"], thr) == want, f


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s of a face at 15 fps, H.264 without B-frames (as IP cameras stream)."""
    return write_camera_clip(tmp_path_factory.mktemp("verdict_cam") / "cam.mp4", loops=2)


def check_scores(scores: list[dict[str, Any]], want: str, thr: float) -> None:
    """At least 5 warm verdicts, each (and each warm face) following the rule."""
    warm = [m for m in scores if m["label"] in ("real", "fake")]
    assert len(warm) >= 5, [m["label"] for m in scores]
    for m in scores:
        assert m["label"] in ("warming_up", "real", "fake"), m
        if m["label"] == "warming_up":
            continue
        assert m["label"] == rule(m["p_fake"], thr) == want, (m["p_fake"], thr)
        for f in m["faces"]:
            if f["label"] != "warming_up":
                assert f["label"] == rule(f["p_fake"], thr) == want, f


@pytest.mark.rtsp
def test_camera_scores_follow_the_rule_once_warm(
    forced: tuple[str, float, Path], forced_server: LiveServer, camera_clip: Path
) -> None:
    from tests.conftest import free_port
    from tests.rtsp import RtspServer
    from tests.test_rtsp import Feed

    want, thr, _ = forced
    with RtspServer(camera_clip, free_port()) as rtsp:
        r = httpx.post(forced_server.url + "/v1/cameras", json={"url": rtsp.url, "name": "door"})
        assert r.status_code == 201, r.text
        cam = r.json()["id"]
        feed = Feed(f"{forced_server.url}/v1/cameras/{cam}/events")
        try:
            # The camera connected, and 5 warm scores arrived (warm-up is 5 analysed frames).
            assert feed.wait(lambda e: e[0] == "connected", 20), feed.events
            warm = lambda e: e[0] == "score" and e[1]["label"] in ("real", "fake")  # noqa: E731
            deadline = time.monotonic() + scaled(40)
            while sum(map(warm, feed.events)) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            feed.close()
            assert httpx.delete(f"{forced_server.url}/v1/cameras/{cam}").status_code == 204
    scores = [e[1] for e in feed.events if e[0] == "score"]
    assert {m["stream"] for m in scores} == {cam}
    check_scores(scores, want, thr)


@pytest.mark.browser
def test_page_shows_the_verdict_the_rule_gives(
    forced: tuple[str, float, Path], forced_server: LiveServer, tmp_path: Path
) -> None:
    """The web page's verdict is the server's, and the server's follows the rule."""
    from tests.browser import chromium, write_y4m

    want, thr, _ = forced
    shown = {"fake": "Likely fake", "real": "Real"}[want]
    clip = write_y4m(tmp_path / "face.y4m", face_frames(60, size=(640, 480)))
    served: list[dict[str, Any]] = []
    with chromium(clip) as ctx:
        page = ctx.new_page()
        page.goto(forced_server.url + "/")
        page.get_by_role("button", name="Start camera").click()
        deadline = time.monotonic() + scaled(30)
        while not forced_server.service.streams and time.monotonic() < deadline:
            time.sleep(0.02)
        (stream,) = forced_server.service.streams.values()
        stream.taps.append(lambda rgb, result, msg: served.append(msg.to_dict()))
        page.wait_for_function(
            "['real','fake'].includes(document.querySelector('#verdict').dataset.label)",
            timeout=ms(60),
        )
        labels = set()
        for _ in range(5):  # the shown verdict stays the rule's while scores keep coming
            n = len(served)
            deadline = time.monotonic() + scaled(10)
            while len(served) == n and time.monotonic() < deadline:
                time.sleep(0.02)
            labels.add(page.locator("#verdict-label").inner_text())
        assert labels == {shown}, labels
        assert page.locator("#verdict").get_attribute("data-label") == want
        page.get_by_role("button", name="Stop").click()
    check_scores(served, want, thr)
