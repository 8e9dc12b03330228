"""Running on a Ray cluster (the `cluster` extra): connecting, what each node offers, and the
per-node `streams` resource that places live streams.

Ray is imported only here and in the modules that use it (`cluster_scan`, `cluster_cameras`),
and only when `--ray-address` is given: the single-process service never needs it.

A node offers stream slots by starting with a custom resource, sized by its own `--max-streams`:
`ray start --address HEAD:6379 --resources '{"streams": N}'` (`node_resources(N)`). Every
camera actor asks for one slot, so Ray's scheduler places it on a node with a free slot, and
restarts it on another such node when its node dies.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

STREAMS = "streams"  # the custom resource: one unit per live stream a node takes
NAMESPACE = "deepfake-live"


class ClusterError(Exception):
    """Ray is missing or the cluster cannot be reached; one line saying why."""


def node_resources(max_streams: int) -> dict[str, float]:
    """The custom resources a node started for streams carries."""
    return {STREAMS: float(max_streams)}


def ray_start_args(address: str, max_streams: int) -> list[str]:
    """The `ray start` command line that joins a node to `address` with `max_streams` slots."""
    return [
        "ray",
        "start",
        "--address",
        address,
        "--resources",
        json.dumps(node_resources(max_streams)),
    ]


def ray_module() -> Any:
    """`ray`, imported now (typed loosely: Ray ships partial annotations)."""
    return importlib.import_module("ray")


def connect(address: str) -> Any:
    """`ray.init` on an existing cluster (an address, or `auto`); returns the `ray` module."""
    try:
        ray = ray_module()
    except ImportError:
        raise ClusterError(
            "--ray-address needs Ray: pip install 'deepfake-live[cluster]'"
        ) from None
    if ray.is_initialized():
        return ray
    if address != "auto":
        reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return ray


def reachable(address: str, timeout: float = 5.0) -> None:
    """Fails at once when nothing listens at HOST:PORT (ray.init would retry for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r} is not HOST:PORT or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {reason.lower()} (is `ray start` "
            "running there?)"
        ) from None


def nodes() -> list[dict[str, Any]]:
    """The cluster's live nodes: id, address, its stream slots and CPUs (total)."""
    ray = ray_module()
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        out.append(
            {
                "node": n["NodeID"],
                "address": n.get("NodeManagerAddress", ""),
                "streams": int(res.get(STREAMS, 0)),
                "cpus": float(res.get("CPU", 0)),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """`deepfake-node`: join this machine to a cluster with its own stream budget, that is
    `ray start --address ADDRESS --resources '{"streams": N}'` and any further `ray start`
    options given after `--` (for example `--block`, `--num-cpus 4`)."""
    import argparse
    import os
    import shutil
    import sys
    from pathlib import Path

    from stream_server.core.version import version_string

    p = argparse.ArgumentParser(prog="deepfake-node", description=main.__doc__)
    p.add_argument("--version", action="version", version=version_string("deepfake-node"))
    p.add_argument("--address", required=True, help="the head's HOST:PORT")
    p.add_argument(
        "--max-streams",
        type=int,
        required=True,
        help="streams (cameras, webcam sessions) this node takes: its 'streams' slots",
    )
    p.add_argument("ray_args", nargs="*", help="more `ray start` options (after --)")
    args = p.parse_args(argv)
    if args.max_streams < 0:
        p.error("--max-streams must be 0 or more")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    if not Path(ray_cli).exists():
        ray_cli = shutil.which("ray") or ""
    if not ray_cli:
        print(
            "deepfake-node: error: Ray is not installed: pip install 'deepfake-live[cluster]'",
            file=sys.stderr,
        )
        return 2
    cmd = [ray_cli, *ray_start_args(args.address, args.max_streams)[1:], *args.ray_args]
    print("deepfake-node: " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execv(ray_cli, cmd)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
