"""Per-camera series in /metrics (issue 17): labelled with the camera's stable id, only for the
cameras registered now (bounded by --max-cameras), a rename keeps the series, a removed camera's
series go. Real uvicorn, real GStreamer RTSP cameras, loopback only."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.bundles import low_threshold
from tests.conftest import LiveServer, free_port
from tests.rtsp import RtspServer, write_camera_clip
from tests.timing import poll

pytestmark = pytest.mark.rtsp

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(srv: LiveServer) -> Samples:
    """Every deepfake_camera_* sample of /metrics, keyed by (name, sorted labels)."""
    r = httpx.get(srv.url + "/metrics")
    assert r.status_code == 200
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name.startswith("deepfake_camera_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def of(found: Samples, metric: str, camera: str, **labels: str) -> float | None:
    return found.get((metric, tuple(sorted({"camera": camera, **labels}.items()))))


def cameras_in(found: Samples) -> set[str]:
    return {dict(labels)["camera"] for _, labels in found}


def test_metrics_carry_per_camera_labels_bounded_by_the_registered_cameras(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    clip = write_camera_clip(tmp_path / "cam.mp4", loops=6)
    bundle = low_threshold(tiny_bundle, tmp_path)  # every face is 'fake': alerts fire
    with (
        RtspServer(clip, free_port(), "/a") as cam_a,
        RtspServer(clip, free_port(), "/b") as cam_b,
        LiveServer(bundle=bundle, camera_allow=("127.0.0.1",), max_cameras=2) as srv,
    ):
        assert cameras_in(samples(srv)) == set()  # no camera, no per-camera series
        for url, name, extra in (
            (cam_a.url, "Front door", {"alert_seconds": 0.5}),
            (cam_b.url, "Garage", {"id": "garage"}),
        ):
            r = httpx.post(srv.url + "/v1/cameras", json={"url": url, "name": name, **extra})
            assert r.status_code == 201, r.text
        # The bound: a third camera is refused, so no third label set can appear.
        r = httpx.post(srv.url + "/v1/cameras", json={"url": cam_a.url + "x", "name": "Third"})
        assert r.status_code == 503 and "camera limit" in r.json()["error"]

        def live_and_alerted(found: Samples) -> bool:
            return (
                all(
                    of(found, "deepfake_camera_status", c, status="live") == 1
                    and (of(found, "deepfake_camera_frames_total", c) or 0) > 10
                    for c in ("front-door", "garage")
                )
                and (of(found, "deepfake_camera_alerts_total", "front-door") or 0) >= 1
            )

        found = poll(lambda: samples(srv), 30, every=0.3, until=live_and_alerted)
        assert live_and_alerted(found), found
        assert cameras_in(found) == {"front-door", "garage"}
        assert of(found, "deepfake_camera_info", "front-door", name="Front door", source="api") == 1
        assert of(found, "deepfake_camera_status", "front-door", status="lost") == 0
        assert (of(found, "deepfake_camera_fps", "garage") or 0) > 0
        assert of(found, "deepfake_camera_viewers", "garage") == 0
        p = of(found, "deepfake_camera_p_fake", "garage")
        assert p is not None and 0 <= p <= 1
        # The counter agrees with the alerts the API lists for the camera.
        kept = httpx.get(srv.url + "/v1/alerts", params={"camera": "front-door"}).json()["alerts"]
        counted = of(samples(srv), "deepfake_camera_alerts_total", "front-door") or 0
        assert len(kept) <= counted <= len(kept) + 1  # one may land between the two reads
        frames_before = of(found, "deepfake_camera_frames_total", "garage") or 0
        # The frame counter keeps counting (a counter, read at each scrape).
        assert (
            poll(
                lambda: of(samples(srv), "deepfake_camera_frames_total", "garage") or 0,
                10,
                until=lambda v: v > frames_before,
            )
            > frames_before
        )

        # A rename changes the info series only: the id labels the rest.
        r = httpx.patch(srv.url + "/v1/cameras/garage", json={"name": "Car port"})
        assert r.status_code == 200
        found = samples(srv)
        assert of(found, "deepfake_camera_info", "garage", name="Car port", source="api") == 1
        assert of(found, "deepfake_camera_info", "garage", name="Garage", source="api") is None

        # A removed camera's series go at once.
        assert httpx.delete(srv.url + "/v1/cameras/front-door").status_code == 204
        found = samples(srv)
        assert cameras_in(found) == {"garage"}
        assert of(found, "deepfake_camera_alerts_total", "front-door") is None
