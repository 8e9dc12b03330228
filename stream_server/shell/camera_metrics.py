"""Per-camera series in /metrics, labelled with the camera's stable id.

Read from the camera registry when /metrics is scraped, so only the cameras registered now have
series (a removed camera's go at once) and their number is bounded by --max-cameras (at most
256). The name is a label of `deepfake_camera_info` only: a rename does not start new series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from stream_server.shell.cameras import CameraRegistry

STATUSES = ("connecting", "live", "lost", "error")


class CameraCollector(Collector):
    def __init__(self, registry: CameraRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "deepfake_camera_info",
            "A registered camera (value 1): its id, name and where it is declared (api, file)",
            labels=["camera", "name", "source"],
        )
        status = GaugeMetricFamily(
            "deepfake_camera_status",
            "1 for the camera's current status (connecting, live, lost, error), 0 for the others",
            labels=["camera", "status"],
        )
        frames = CounterMetricFamily(
            "deepfake_camera_frames", "Frames received from the camera", labels=["camera"]
        )
        dropped = CounterMetricFamily(
            "deepfake_camera_frames_dropped",
            "The camera's frames due for analysis replaced by a newer one",
            labels=["camera"],
        )
        reconnects = CounterMetricFamily(
            "deepfake_camera_reconnects",
            "Times the camera came back after a loss",
            labels=["camera"],
        )
        alerts = CounterMetricFamily(
            "deepfake_camera_alerts", "Alerts raised for the camera", labels=["camera"]
        )
        fps = GaugeMetricFamily(
            "deepfake_camera_fps", "Frames per second received, last 5 s", labels=["camera"]
        )
        viewers = GaugeMetricFamily(
            "deepfake_camera_viewers", "Live feeds and WebRTC viewers watching", labels=["camera"]
        )
        p_fake = GaugeMetricFamily(
            "deepfake_camera_p_fake",
            "The camera's latest fake probability (absent until a face is scored)",
            labels=["camera"],
        )
        raised = self.registry.alerts_raised
        for cam in list(self.registry.cameras.values()):
            view = cam.view()
            cid = cam.id
            info.add_metric([cid, cam.name, str(view["source"])], 1)
            for s in sorted({*STATUSES, str(view["status"])}):
                status.add_metric([cid, s], 1 if view["status"] == s else 0)
            frames.add_metric([cid], view["frames"])
            dropped.add_metric([cid], view["dropped"])
            reconnects.add_metric([cid], view["reconnects"])
            alerts.add_metric([cid], raised.get(cid, 0))
            fps.add_metric([cid], view["fps"])
            viewers.add_metric([cid], view["viewers"])
            last = view["last_score"]
            if last is not None and last.get("p_fake") is not None:
                p_fake.add_metric([cid], last["p_fake"])
        yield from (info, status, frames, dropped, reconnects, alerts, fps, viewers, p_fake)
