"""`deepfake-scan --ray-address`: the file list as a Ray Data dataset, scanned by a pool of
actors (one per node by default, spread over the nodes), each holding one `Scanner` (bundle,
sessions, face stage and engine) loaded once in its constructor. Results come back with their
index in the file list, so the output order is the local scan's whatever node finished first.

Every node reads the files and the bundle by path: they must be at the same paths on every node
(a shared or synced file system), as they are on a cluster of one machine.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stream_server.core.scan import ScanError, ScanLimits, Scanner


class ScanWorker:
    """A Ray Data callable class: constructed once per actor, then called with batches of
    file paths."""

    def __init__(
        self, bundle: str, providers: str, precision: str, limits: ScanLimits, threads: int
    ) -> None:
        from stream_server.shell.cluster import ray_module

        self.node = ray_module().get_runtime_context().get_node_id()
        self.scanner = Scanner(
            Path(bundle), providers=providers, precision=precision, limits=limits, threads=threads
        )
        self.scanner.__enter__()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for path in batch["path"]:
            try:
                r = self.scanner.scan(Path(str(path))).to_dict()
            except ScanError as exc:
                r = {"path": str(path), "error": str(exc)}
            out.append(json.dumps(r))
        return {
            "i": np.asarray(batch["i"]),
            "result": np.asarray(out, dtype=object),
            "node": np.asarray([self.node] * len(out), dtype=object),
        }

    def __del__(self) -> None:
        scanner = getattr(self, "scanner", None)
        if scanner is not None:
            scanner.__exit__(None, None, None)


def scan_on_cluster(
    address: str,
    files: list[Path],
    bundle: Path,
    *,
    providers: str = "auto",
    precision: str = "auto",
    limits: ScanLimits | None = None,
    workers: int | None = None,
    threads: int = 0,
    quiet: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Scan `files` across the cluster at `address`: the results in the order of `files` (as
    `ScanResult.to_dict`, or `{"path", "error"}`), and how many files each node scanned."""
    from stream_server.shell.cluster import ClusterError, connect, nodes

    ray = connect(address)
    importlib.import_module("ray.data")

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    # Start scanning once the whole pool is up, so files spread over every node's actor.
    ctx.wait_for_min_actors_s = 120
    if workers is None:
        workers = max(1, sum(1 for n in nodes() if n["cpus"] >= 1))
    ds = ray.data.from_items([{"i": i, "path": str(f)} for i, f in enumerate(files)])
    ds = ds.map_batches(
        ScanWorker,
        batch_size=1,
        fn_constructor_kwargs={
            "bundle": str(bundle),
            "providers": providers,
            "precision": precision,
            "limits": limits or ScanLimits(),
            "threads": threads,
        },
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=1,
        scheduling_strategy="SPREAD",
    )
    try:
        rows = ds.take_all()
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"the cluster scan failed: {first}") from None
    rows.sort(key=lambda r: int(r["i"]))
    if [int(r["i"]) for r in rows] != list(range(len(files))):
        raise ClusterError("the cluster scan lost files")  # never expected; said, not hidden
    per_node = Counter(str(r["node"]) for r in rows)
    if not quiet:
        print(
            f"scanned {len(rows)} files on {len(per_node)} node(s) with {workers} worker(s)",
            file=sys.stderr,
        )
    return [json.loads(r["result"]) for r in rows], dict(per_node)
