"""`python -m bench`: stage costs, the prototype baseline, and capacity; writes
bench/results/bench-<time>.json, bench/results/latest.json, latest.md and latest.png.
`python -m bench cluster`: the same service on a local Ray cluster against one process
(bench/cluster.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiortc  # noqa: F401  isort: skip  (libsrtp must load before TensorFlow ever does)

from bench import capacity, stages
from bench.common import machine
from stream_server.core.bundle import DEFAULT_BUNDLE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster"]:  # `python -m bench cluster`: the service on a local Ray cluster
        from bench import cluster

        return cluster.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument(
        "--quick", action="store_true", help="a tiny run (seconds) to check the benchmarks work"
    )
    p.add_argument(
        "--levels",
        default="1,4,8,12,16,20,24",
        help="concurrent streams to try, senders as --senders says",
    )
    p.add_argument(
        "--senders",
        choices=["capped", "uncapped"],
        default="capped",
        help="capped: aiortc peers at the server's capture hints (GET /v1/config), as the page "
        "caps its sender; uncapped: 30 fps",
    )
    p.add_argument(
        "--uncapped-levels",
        default="12",
        help="stream counts to try with uncapped 30 fps senders as well ('' for none)",
    )
    p.add_argument(
        "--chromium-levels",
        default=None,
        help="stream counts to try with one real Chromium page among capped peers (default 12, "
        "none with --quick; '' for none; skipped when Chromium is not installed)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per capacity level")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument(
        "--ingest-workers",
        type=int,
        default=1,
        help="the server's --ingest-workers (webcam sessions in N worker processes); its CPU "
        "and RSS include the workers'",
    )
    p.add_argument(
        "--client-codec",
        choices=["h264", "vp8"],
        default="h264",
        help="h264: peers send a clip encoded once (little client CPU); vp8: peers encode live",
    )
    args = p.parse_args(argv)
    t0 = time.monotonic()
    levels = [1, 2] if args.quick else _ints(args.levels)
    uncapped = [1] if args.quick else _ints(args.uncapped_levels)
    default_browsers = "" if args.quick else "12"
    browsers = _ints(default_browsers if args.chromium_levels is None else args.chromium_levels)
    if browsers and not _have_chromium():
        print("[bench] Chromium not installed: no Chromium level", file=sys.stderr, flush=True)
        browsers = []
    seconds = 6.0 if args.quick else args.seconds
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
    }
    print("[bench] stages", file=sys.stderr, flush=True)
    result["stages"] = stages.run(args.bundle, args.quick)
    if not args.skip_baseline:
        print("[bench] baseline (Keras InceptionV3 predict per frame)", file=sys.stderr, flush=True)
        base = stages.baseline(args.quick)
        ours = result["stages"]["full_per_frame_path"]["median_ms"]
        result["baseline"] = {
            "keras_inception_v3_predict_per_frame": base,
            "project_full_per_frame_path_median_ms": ours,
            "speedup": round(base["median_ms"] / ours, 2),
        }
    print(f"[bench] capacity {levels}", file=sys.stderr, flush=True)
    result["capacity"] = capacity.run(
        args.bundle,
        levels,
        seconds,
        codec=args.client_codec,
        uncapped_levels=uncapped,
        chromium_levels=browsers,
        senders=args.senders,
        server_args=["--ingest-workers", str(args.ingest_workers)],
    )
    result["capacity"]["ingest_workers"] = args.ingest_workers
    result["seconds"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = "quick" if args.quick else "latest"
    (args.out / f"bench-{stamp}{'-quick' if args.quick else ''}.json").write_text(
        json.dumps(result, indent=2)
    )
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{tag}.md").write_text(summary(result))
    plot(result, args.out / f"{tag}.png")
    print(summary(result))
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _have_chromium() -> bool:
    import shutil

    return shutil.which("chromium") is not None or Path("/usr/bin/chromium").exists()


def capacity_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| streams | senders | sent fps | server p50 ms | server p95 ms | client p95 ms | "
        "analysed fps/stream | drops | server CPU (cores) | CPU ms per stream-s "
        "(ingest / analysis / other) | senders' CPU | server RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        split = row.get("cpu_ms_per_stream_second_split", {})
        lines.append(
            f"| {row['streams']} | {row.get('senders', '')} | {row.get('sender_fps', '')} | "
            f"{row['latency_p50_ms']} | {row['latency_p95_ms']} | {row['client_latency_p95_ms']} | "
            f"{row['analysed_fps_per_stream']} | {row['drop_fraction']:.1%} | "
            f"{row['server_cpu_cores']} | {row.get('cpu_ms_per_stream_second', '')} "
            f"({split.get('ingest', '')} / {split.get('analysis', '')} / {split.get('other', '')}) | "
            f"{row.get('senders_cpu_cores', '')} | {row['server_rss_mb']} |"
        )
    return lines


def summary(r: dict[str, Any]) -> str:
    s, m = r["stages"], r["machine"]
    enc = s["encoder"]
    lines = [
        f"# Benchmark ({'quick' if r['quick'] else 'full'}) {r['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {json.dumps(m['versions'])}",
        f"Model: {s['model']}",
        "",
        "| stage | median ms | p95 ms |",
        "| --- | --- | --- |",
        f"| decode 640x480 VP8 | {s['decode_640x480']['vp8']['median_ms']} | {s['decode_640x480']['vp8']['p95_ms']} |",
        f"| decode 640x480 H.264 | {s['decode_640x480']['h264']['median_ms']} | {s['decode_640x480']['h264']['p95_ms']} |",
        f"| face detection 640x480, full frame | {s['face_detection_640x480']['median_ms']} | {s['face_detection_640x480']['p95_ms']} |",
    ]
    if "face_detection_roi_640x480" in s:
        roi = s["face_detection_roi_640x480"]
        lines.append(
            f"| face detection around a tracked face (roi) | {roi['median_ms']} | {roi['p95_ms']} |"
        )
    for prec, row in enc.items():
        for b, v in row.items():
            lines.append(
                f"| encoder {prec} {b.replace('_', ' ')} ({v['per_crop_ms']} ms/crop) | {v['median_ms']} | {v['p95_ms']} |"
            )
    lines += [
        f"| head batch 1 | {s['head']['batch_1']['median_ms']} | {s['head']['batch_1']['p95_ms']} |",
        f"| head batch 8 | {s['head']['batch_8']['median_ms']} | {s['head']['batch_8']['p95_ms']} |",
        f"| full per-frame path (detect/track + crop + encode + head) | {s['full_per_frame_path']['median_ms']} | {s['full_per_frame_path']['p95_ms']} |",
        "",
        f"Engine vs onnxruntime alone: {s['engine_vs_onnxruntime']['engine_ms_per_crop']} ms/crop through the engine "
        f"(8 streams) vs {s['engine_vs_onnxruntime']['onnxruntime_best_ms_per_crop']} ms/crop at the best batch "
        f"(ratio {s['engine_vs_onnxruntime']['ratio']}).",
    ]
    if "baseline" in r:
        b = r["baseline"]
        lines.append(
            f"Baseline (Keras InceptionV3 `predict` per frame): {b['keras_inception_v3_predict_per_frame']['median_ms']} ms/frame; "
            f"this project's full per-frame path: {b['project_full_per_frame_path_median_ms']} ms: **{b['speedup']}x faster**."
        )
    c = r["capacity"]
    lines += ["", *capacity_table(c["levels"])]
    for kind in ("uncapped", "chromium"):
        if kind in c:
            lines += ["", *capacity_table(c[kind]["levels"])]
    for row in c.get("chromium", {}).get("levels", []):
        ch = row.get("chromium", {})
        lines.append(
            f"Chromium among {row['streams']} streams: encoding {json.dumps(ch.get('encoding'))}, "
            f"sent {json.dumps(ch.get('sent'))}, {ch.get('scores')} scores"
            + (f", error {ch['error']}" if ch.get("error") else "")
            + "."
        )
    lines += [
        "",
        f"Largest stream count within budget (p95 <= 250 ms, drops <= 5%, >= 4.75 analysed fps per stream): **{c['max_streams_within_budget']}** "
        f"by server-side latency, **{c.get('max_streams_within_budget_client_side', 'n/a')}** by client-side latency "
        f"({c.get('senders', 'uncapped')} senders; {c.get('max_streams_within_budget_1pct_drops', 'n/a')} with drops <= 1 %)"
        + (
            f"; uncapped 30 fps senders: {c['uncapped']['max_streams_within_budget']} of {[x['streams'] for x in c['uncapped']['levels']]}."
            if "uncapped" in c
            else "."
        ),
        f"Capture hints (GET /v1/config): {json.dumps(c.get('capture_hints'))}.",
        f"CPU split: {c.get('cpu_split', 'n/a')}.",
        f"Latency: {c['latency']}.",
        f"Cores: {c['core_sharing']}.",
        f"Total benchmark time: {r['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["capacity"]["levels"]
    n = [x["streams"] for x in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(n, [x["latency_p50_ms"] or 0 for x in rows], "o-", label="p50 latency")
    ax.plot(n, [x["latency_p95_ms"] or 0 for x in rows], "s-", label="p95 latency")
    ax.plot(n, [x["client_latency_p95_ms"] or 0 for x in rows], "^:", label="client-side p95")
    more = r["capacity"].get("uncapped", {}).get("levels", [])
    if more:
        ax.plot(
            [x["streams"] for x in more],
            [x["latency_p95_ms"] or 0 for x in more],
            "kx",
            label="p95, uncapped 30 fps",
        )
    ax.set_yscale("log")
    ax.axhline(250, ls="--", c="grey", lw=1)
    ax.set(xlabel="concurrent 640x480 streams", ylabel="frame-to-score latency (ms)")
    ax2 = ax.twinx()
    ax2.bar(
        n,
        [100 * x["drop_fraction"] for x in rows],
        alpha=0.25,
        color="red",
        width=0.6,
        label="drops %",
    )
    ax2.set_ylabel("dropped frames (%)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
