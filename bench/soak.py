"""Soak and overload against a real `deepfake-serve` process.

    python -m bench.soak [--cycles 300] [--overload-seconds 600] [--overload-streams 24] [--quick]

1. Soak: connect/disconnect cycles of real aiortc peers; server RSS, threads and open files are
   read from /proc after a warm-up and at the end (growth must stay under 5%).
2. Overload: more streams than the machine can analyse for a long time; frame-to-score latency per
   interval stays bounded because frames are dropped (and counted), not queued.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.capacity import free_port, proc_rss_mb, start_server
from bench.common import machine
from stream_server.core.bundle import DEFAULT_BUNDLE

ROOT = Path(__file__).resolve().parent.parent


def proc_counts(pid: int) -> dict[str, float]:
    threads = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("Threads:")
        )
    )
    return {
        "rss_mb": round(proc_rss_mb(pid), 1),
        "threads": threads,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


async def cycles(url: str, n: int) -> int:
    """`n` WebRTC sessions one after another: connect, wait for a first score (5 s), close."""
    from bench.client import FramesTrack, peer
    from bench.media import face_frames

    frames = face_frames(10, (320, 240))
    ok = 0
    for _ in range(n):
        r = await peer(url, FramesTrack(frames, 15), seconds=5.0, stop_after_scores=1)
        scores = r.get("scores", 0)
        ok += int(isinstance(scores, int) and scores >= 1)
    return ok


def settle(url: str) -> None:
    deadline = time.monotonic() + 15
    while httpx.get(url + "/healthz").json()["streams"] and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)


def soak(url: str, pid: int, n: int, warmup: int) -> dict[str, Any]:
    asyncio.run(cycles(url, warmup))
    settle(url)
    before = proc_counts(pid)
    t0 = time.monotonic()
    ok = asyncio.run(cycles(url, n))
    settle(url)
    after = proc_counts(pid)
    growth = (after["rss_mb"] - before["rss_mb"]) / before["rss_mb"]
    return {
        "cycles": n,
        "scored_cycles": ok,
        "seconds": round(time.monotonic() - t0, 1),
        "before": before,
        "after": after,
        "rss_growth": round(growth, 4),
        "within_5_percent": growth <= 0.05,
        "streams_after": httpx.get(url + "/healthz").json()["streams"],
    }


def overload(url: str, streams: int, seconds: float, fps: int) -> dict[str, Any]:
    import numpy as np

    out = Path(f"/tmp/overload-{os.getpid()}.json")
    procs = []
    per = 4
    for k in range(0, streams, per):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.client",
                    url,
                    str(min(per, streams - k)),
                    str(seconds),
                    str(fps),
                    f"{out}.{k}",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for p in procs:
        p.wait()
    runs: list[dict[str, Any]] = []
    for k in range(0, streams, per):
        f = Path(f"{out}.{k}")
        if f.exists():
            runs.extend(r for r in json.loads(f.read_text()) if "server_latencies_s" in r)
            f.unlink()
    scores = sum(r["scores"] for r in runs)
    dropped = sum(int(r["dropped"]) for r in runs)
    # Server-side latency (decoded frame -> score) in each quarter of every stream's run: if frames
    # queued anywhere, later quarters would be slower than earlier ones.
    quarters: list[list[float]] = [[], [], [], []]
    for r in runs:
        for q, chunk in enumerate(
            np.array_split(np.asarray(r["server_latencies_s"][5:]) * 1000, 4)
        ):
            quarters[q].extend(chunk.tolist())
    every = [x for q in quarters for x in q] or [0.0]
    return {
        "streams": streams,
        "source_fps": fps,
        "seconds": seconds,
        "connected": len(runs),
        "scores": scores,
        "dropped": dropped,
        "drop_fraction": round(dropped / max(1, dropped + scores), 4),
        "server_latency_p50_ms": round(float(np.percentile(every, 50)), 1),
        "server_latency_p95_ms": round(float(np.percentile(every, 95)), 1),
        "server_latency_p95_by_quarter_ms": [
            round(float(np.percentile(q, 95)), 1) for q in quarters if q
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--cycles", type=int, default=300)
    p.add_argument("--overload-seconds", type=float, default=600)
    p.add_argument("--overload-streams", type=int, default=16)
    p.add_argument("--overload-fps", type=int, default=10, help="source frame rate of each stream")
    p.add_argument("--quick", action="store_true", help="20 cycles and 10 s of overload")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.cycles, args.overload_seconds, args.overload_streams = 20, 10, 4
    port = free_port()
    server = start_server(args.bundle, port, [])
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"[soak] {args.cycles} connect/disconnect cycles", file=sys.stderr, flush=True)
        s = soak(url, server.pid, args.cycles, warmup=5 if args.quick else 20)
        print(
            f"[soak] RSS {s['before']['rss_mb']} -> {s['after']['rss_mb']} MB ({s['rss_growth']:.1%}), "
            f"threads {s['before']['threads']} -> {s['after']['threads']}, fds {s['before']['fds']} -> "
            f"{s['after']['fds']}",
            file=sys.stderr,
            flush=True,
        )
        print(
            f"[soak] overload: {args.overload_streams} streams for {args.overload_seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        o = overload(url, args.overload_streams, args.overload_seconds, args.overload_fps)
        print(
            f"[soak] overload p95 {o['server_latency_p95_ms']} ms (by quarter {o['server_latency_p95_by_quarter_ms']}), "
            f"drops {o['drop_fraction']:.1%}",
            file=sys.stderr,
            flush=True,
        )
        health = httpx.get(url + "/healthz").json()
    finally:
        server.terminate()
        server.wait(15)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "soak": s,
        "overload": o,
        "healthy_after": health["status"] == "ok",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "soak-quick.json" if args.quick else "soak-latest.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
