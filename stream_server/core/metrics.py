"""Prometheus metrics, one registry per service instance (tests run several side by side)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames_received = Counter(
            "deepfake_frames_received", "Frames received from sources", registry=r
        )
        self.frames_analysed = Counter("deepfake_frames_analysed", "Frames analysed", registry=r)
        self.frames_dropped = Counter(
            "deepfake_frames_dropped", "Frames due for analysis replaced by a newer one", registry=r
        )
        self.faces = Counter("deepfake_faces", "Face crops encoded", registry=r)
        self.inference_seconds = Histogram(
            "deepfake_inference_seconds",
            "Engine time per micro-batch (encoder + head)",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "deepfake_batch_size",
            "Face crops per encoder micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.score_latency = Histogram(
            "deepfake_score_latency_seconds",
            "Frame arrival to score message",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.active_streams = Gauge("deepfake_active_streams", "Streams being analysed", registry=r)
        self.peers_closed = Counter(
            "deepfake_peers_closed",
            "WebRTC peers closed by the server: setup_timeout (never connected in time) or "
            "media_timeout (connected but sent no video)",
            ["reason"],
            registry=r,
        )
        self.requests_refused = Counter(
            "deepfake_requests_refused",
            "Request bodies refused while being read: too_large, timeout, disconnected, shutdown",
            ["reason"],
            registry=r,
        )
        for reason in ("setup_timeout", "media_timeout"):
            self.peers_closed.labels(reason)
        for reason in ("too_large", "timeout", "disconnected", "shutdown"):
            self.requests_refused.labels(reason)
        self.clock_jumps = Counter(
            "deepfake_stream_clock_jumps",
            "Source timestamps that went back or leapt ahead of the wall clock; the stream "
            "clock was re-based",
            registry=r,
        )
        self.errors = Counter("deepfake_errors", "Analysis errors reported to clients", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
