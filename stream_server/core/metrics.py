"""Prometheus metrics, one registry per service instance (tests run several side by side)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString


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

    def render(self, others: Sequence[str] = ()) -> bytes:
        """This registry in the text exposition format; with `others` (the same format, from
        other processes of this service: ingest workers), every sample summed with the samples
        of the same name and labels in them."""
        own = generate_latest(self.registry)
        return merge_exposition([own.decode("utf-8"), *others]) if others else own


def _go_float(value: float) -> str:
    """A sample value as prometheus_client writes it (+Inf, NaN, 1.0, 1e+06)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _escape(value: str, quote: bool) -> str:
    value = value.replace("\\", "\\\\").replace("\n", "\\n")
    return value.replace('"', '\\"') if quote else value


# Families whose samples only ever grow in a live process (what a restarted process must not
# take back from a sum: see `monotonic_part`).
MONOTONIC_KINDS = ("counter", "histogram", "summary")


def merge_exposition(texts: Sequence[str], kinds: Sequence[str] | None = None) -> bytes:
    """Prometheus text expositions added up: families in order of first appearance, samples of
    the same name and labels summed (counters, gauges, histogram buckets, sums and counts all
    add across processes). `_created` samples (when a counter was created) are left out: a sum
    of timestamps means nothing. With `kinds`, only families of those types are kept."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name.endswith("_created"):  # the text format writes them as gauges
                continue
            if kinds is not None and fam.type not in kinds:
                continue
            _, _, samples = families.setdefault(fam.name, (fam.type, fam.documentation, {}))
            for sample in fam.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    lines = []
    for family, (kind, doc, samples) in families.items():
        # a counter's family is named with its `_total`, as prometheus_client writes it (its
        # parser, which reads this output again, finds the samples of the family only so)
        name = f"{family}_total" if kind == "counter" else family
        lines.append(f"# HELP {name} {_escape(doc, quote=False)}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            inner = ",".join(f'{k}="{_escape(v, quote=True)}"' for k, v in labels)
            number = _go_float(value)
            lines.append(
                f"{sample_name}{{{inner}}} {number}" if inner else f"{sample_name} {number}"
            )
    return ("\n".join(lines) + "\n").encode("utf-8")


def monotonic_part(text: str) -> str:
    """The counters and histograms of an exposition (no gauges): what a process that has
    exited had counted, kept so that sums over processes never go down when one restarts."""
    return merge_exposition([text], kinds=MONOTONIC_KINDS).decode("utf-8")
