"""`python -m bench cluster`: the service on a local 3-node Ray cluster (ray.cluster_utils: a head
with no CPU, two workers with one CPU and 4 `streams` slots each, all on 127.0.0.1) against the
single process, on the same machine:

- webcam score latency (aiortc peers sending a pre-encoded H.264 clip; the same client as the
  capacity benchmark): p50/p95 of decoded frame -> score sent (server side) and of the frame's
  capture schedule -> score received (client side), and the added cost per analysed frame
  (cluster p95 minus single-process p95);
- archive scan throughput: `deepfake-scan` of the same clips, locally and with --ray-address
  (files per second, wall clock of the whole command, start-up included).

Writes bench/results/cluster-<time>.json, cluster-latest.json (cluster-quick.json with --quick)
and the .md beside it. A cluster of one machine shows the overhead of the cluster, not a
speed-up: every node shares the same cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.capacity import free_port, run_level, start_server
from bench.common import machine
from bench.media import face_frames, write_video
from stream_server.core.bundle import DEFAULT_BUNDLE

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20


def local_cluster() -> Any:
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 100 * MB, "include_dashboard": False}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", **small},
    )
    for _ in range(2):
        cluster.add_node(
            num_cpus=1, node_ip_address="127.0.0.1", resources={"streams": 4.0}, **small
        )
    cluster.wait_for_nodes()
    return cluster


def webcam_latency(bundle: Path, streams: int, seconds: float, extra: list[str]) -> dict[str, Any]:
    port = free_port()
    server = start_server(bundle, port, extra)
    try:
        return run_level(f"http://127.0.0.1:{port}", server.pid, streams, seconds, fps=15)
    finally:
        server.terminate()
        server.wait(30)


def scan_seconds(bundle: Path, folder: Path, extra: list[str]) -> tuple[float, int]:
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_server.shell.scan_cli",
            "--bundle",
            str(bundle),
            "--json",
            "--quiet",
            *extra,
            str(folder),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    took = time.monotonic() - t0
    if r.returncode not in (0, 1):
        raise RuntimeError(f"deepfake-scan failed ({r.returncode}): {r.stderr[-2000:]}")
    return took, len(json.loads(r.stdout)["results"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__)
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--quick", action="store_true", help="a tiny run to check the benchmark works")
    p.add_argument("--streams", type=int, default=2, help="concurrent webcam sessions")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of webcam streaming")
    p.add_argument("--files", type=int, default=8, help="clips to scan")
    args = p.parse_args(argv)
    seconds = 8.0 if args.quick else args.seconds
    files = 2 if args.quick else args.files
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        # Other work on the machine moves the tails: the 1-minute load average, start and end.
        "load_average_1m": [round(os.getloadavg()[0], 2)],
        "cluster": "ray.cluster_utils.Cluster on this machine: a head (no CPU) and 2 workers "
        "(1 CPU, 4 'streams' slots each), 127.0.0.1, sharing this machine's cores",
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    frames = face_frames(50, (320, 240))
    for i in range(files):
        write_video(folder / f"clip{i}.mp4", frames[i % 5 :] + frames[: i % 5], fps=10)
    print("[bench] single process: webcam latency, scan", file=sys.stderr, flush=True)
    single = webcam_latency(args.bundle, args.streams, seconds, [])
    local_s, n = scan_seconds(args.bundle, folder, [])
    print("[bench] starting the local Ray cluster", file=sys.stderr, flush=True)
    cluster = local_cluster()
    try:
        print("[bench] cluster: webcam latency, scan", file=sys.stderr, flush=True)
        remote = webcam_latency(
            args.bundle, args.streams, seconds, ["--ray-address", cluster.address]
        )
        own = webcam_latency(
            args.bundle,
            args.streams,
            seconds,
            ["--ray-address", cluster.address, "--ray-shared-engine", "false"],
        )
        cluster_s, _ = scan_seconds(args.bundle, folder, ["--ray-address", cluster.address])
    finally:
        cluster.shutdown()

    def added(key: str, other: dict[str, Any]) -> float | None:
        a, b = single.get(key), other.get(key)
        return None if a is None or b is None else round(b - a, 1)

    result["webcam"] = {
        "streams": args.streams,
        "seconds": seconds,
        "single_process": single,
        "cluster": remote,
        "cluster_own_engines": own,
        "added_p50_ms": added("latency_p50_ms", remote),
        "added_p95_ms": added("latency_p95_ms", remote),
        "added_client_p50_ms": added("client_latency_p50_ms", remote),
        "added_client_p95_ms": added("client_latency_p95_ms", remote),
        "own_engines_added_p50_ms": added("latency_p50_ms", own),
        "own_engines_added_p95_ms": added("latency_p95_ms", own),
        "own_engines_added_client_p95_ms": added("client_latency_p95_ms", own),
        "modes": "cluster: each node's streams send their crops to the node's one encoder "
        "(--ray-shared-engine true, the default); cluster_own_engines: each stream's actor runs "
        "its own encoder (--ray-shared-engine false). The 2 sessions are spread over the 2 "
        "workers, so here no two streams share an engine: the shared engine's cost is measured, "
        "not its batching",
        "goal_added_p95_ms": 20,
    }
    result["scan"] = {
        "files": n,
        "local_seconds": round(local_s, 2),
        "cluster_seconds": round(cluster_s, 2),
        "local_files_per_s": round(n / local_s, 3),
        "cluster_files_per_s": round(n / cluster_s, 3),
        "note": "wall clock of the whole deepfake-scan command, start-up included (the cluster "
        "scan connects to Ray and starts one actor per worker, each loading the bundle)",
    }
    result["load_average_1m"].append(round(os.getloadavg()[0], 2))
    result["seconds"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = "cluster-quick" if args.quick else "cluster-latest"
    text = json.dumps(result, indent=2)
    (args.out / f"cluster-{stamp}{'-quick' if args.quick else ''}.json").write_text(text)
    (args.out / f"{tag}.json").write_text(text)
    (args.out / f"{tag}.md").write_text(summary(result))
    print(summary(result))
    return 0


def summary(r: dict[str, Any]) -> str:
    w, s, m = r["webcam"], r["scan"], r["machine"]
    one, many, own = w["single_process"], w["cluster"], w["cluster_own_engines"]
    return "\n".join(
        [
            f"# Cluster benchmark ({'quick' if r['quick'] else 'full'}) {r['date']}",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, 1-minute load average "
            f"{r['load_average_1m'][0]} at the start and {r['load_average_1m'][-1]} at the end "
            f"(other work shares the machine). {r['cluster']}.",
            "",
            f"Webcam sessions: {w['streams']} aiortc peers for {w['seconds']:g} s each.",
            "",
            "| | single process | cluster, node engine | added | cluster, own engines | added |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| server p50 (frame -> score sent) | {one['latency_p50_ms']} ms | "
            f"{many['latency_p50_ms']} ms | {w['added_p50_ms']} ms | "
            f"{own['latency_p50_ms']} ms | {w['own_engines_added_p50_ms']} ms |",
            f"| server p95 | {one['latency_p95_ms']} ms | {many['latency_p95_ms']} ms | "
            f"{w['added_p95_ms']} ms | {own['latency_p95_ms']} ms | "
            f"{w['own_engines_added_p95_ms']} ms |",
            f"| client p95 (capture -> score received) | {one['client_latency_p95_ms']} ms | "
            f"{many['client_latency_p95_ms']} ms | {w['added_client_p95_ms']} ms | "
            f"{own['client_latency_p95_ms']} ms | {w['own_engines_added_client_p95_ms']} ms |",
            f"| analysed fps per stream | {one['analysed_fps_per_stream']} | "
            f"{many['analysed_fps_per_stream']} | | {own['analysed_fps_per_stream']} | |",
            "",
            w["modes"] + ".",
            "",
            f"Goal: under {w['goal_added_p95_ms']} ms added at p95.",
            "",
            f"Scan of {s['files']} clips: local {s['local_files_per_s']} files/s "
            f"({s['local_seconds']} s), cluster {s['cluster_files_per_s']} files/s "
            f"({s['cluster_seconds']} s); {s['note']}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
