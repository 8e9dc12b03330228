"""`deepfake-scan`: score video files offline with the same pipeline as live streams.

Exit status: 0 every file scanned and none fake; 1 at least one fake; 3 a file could not be
scanned; 2 bad usage or a bad bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream_server.core.bundle import DEFAULT_BUNDLE

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".y4m", ".ts"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepfake-scan",
        description="Score video files (or folders of them) for deepfaked faces. A folder with a "
        "DFDC metadata.json is also evaluated against its labels (AUC, log loss, accuracy, EER).",
    )
    from stream_server.core.version import version_string

    p.add_argument("--version", action="version", version=version_string("deepfake-scan"))
    p.add_argument("paths", nargs="+", type=Path, help="video files or folders")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle directory")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--providers", default="auto", help="onnxruntime providers (auto, cpu, cuda)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8"],
        default="auto",
        help="encoder precision: auto (the manifest's choice, but fp32 where the bundle has it "
        "on an x86 CPU without VNNI, whose INT8 kernels saturate)",
    )
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest video accepted")
    p.add_argument(
        "--roc",
        type=Path,
        help="with a labelled folder: write the ROC curve (PNG; needs matplotlib)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--ray-address",
        help="scan on a Ray cluster (an address or 'auto'; needs the cluster extra): files and "
        "bundle must be at the same paths on every node",
    )
    p.add_argument(
        "--ray-workers", type=int, help="scanning actors on the cluster (default: one per node)"
    )
    return p


def expand(paths: Sequence[Path]) -> tuple[list[Path], dict[str, int]]:
    """Files to scan, and labels from every DFDC-format folder given."""
    from stream_server.core.labels import read_labels

    files: list[Path] = []
    labels: dict[str, int] = {}
    for p in paths:
        if p.is_dir():
            if (p / "metadata.json").is_file():
                for name, y in read_labels(p).items():
                    if (p / name).is_file():
                        labels[str(p / name)] = y
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return files, labels


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.roc is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # say so before a long scan, not after
            print(
                "deepfake-scan: error: --roc needs matplotlib (pip install matplotlib), "
                "which is not installed",
                file=sys.stderr,
            )
            return 2
    from stream_server.core.bundle import BundleError
    from stream_server.core.evaluate import compute, plot_roc
    from stream_server.core.labels import DatasetError
    from stream_server.core.scan import ScanLimits, Scanner

    limits = ScanLimits(max_seconds=args.max_seconds)
    try:
        if args.ray_address is not None:
            from stream_server.core.bundle import load_bundle

            # Checked here; each node opens it itself.
            bundle = load_bundle(args.bundle, precision=args.precision)
        else:
            scanner = Scanner(
                args.bundle, providers=args.providers, precision=args.precision, limits=limits
            )
            if scanner.bundle.encoder.note:
                print(f"deepfake-scan: encoder {scanner.bundle.encoder.note}", file=sys.stderr)
        files, labels = expand(args.paths)
        if not files:
            raise FileNotFoundError("no video files found in the given paths")
    except (BundleError, DatasetError, FileNotFoundError) as exc:
        print(f"deepfake-scan: error: {exc}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    failed = 0
    cluster: dict[str, Any] | None = None
    if args.ray_address is not None:
        from stream_server.shell.cluster import ClusterError
        from stream_server.shell.cluster_scan import scan_on_cluster

        try:
            results, per_node = scan_on_cluster(
                args.ray_address,
                files,
                args.bundle,
                providers=args.providers,
                precision=args.precision,
                limits=limits,
                workers=args.ray_workers,
                quiet=args.quiet,
            )
        except ClusterError as exc:
            print(f"deepfake-scan: error: {exc}", file=sys.stderr)
            return 2
        cluster = {"address": args.ray_address, "files_per_node": per_node}
        for f, r in zip(files, results, strict=True):
            failed += "error" in r
            if str(f) in labels:
                r["label"] = "fake" if labels[str(f)] else "real"
            if not args.json:
                print(_line(r))
        threshold, model = bundle.threshold, bundle.model_id
    else:
        threshold, model = _scan_here(scanner, files, labels, args, results)
        failed = sum("error" in r for r in results)
    doc: dict[str, Any] = {"model": model, "threshold": threshold, "results": results}
    if cluster is not None:
        doc["cluster"] = cluster
    scored = [r for r in results if "label" in r and r.get("p_fake") is not None]
    if scored:
        y = [int(r["label"] == "fake") for r in scored]
        m = compute(y, [r["p_fake"] for r in scored], threshold)
        doc["metrics"] = {
            **m.to_dict(),
            "unscored": sum(1 for r in results if "label" in r) - len(scored),
        }
        if args.roc:
            plot_roc(y, [r["p_fake"] for r in scored], args.roc, "video level")
        if not args.json:
            print(
                f"metrics on {m.n} labelled videos ({m.positives} fake): AUC {m.auc:.4f}, "
                f"log loss {m.log_loss:.4f}, accuracy {m.accuracy:.4f}, EER {m.eer:.4f}"
            )
    if args.json:
        print(json.dumps(doc, indent=2))
    if failed:
        return 3
    return 1 if any(r.get("verdict") == "fake" for r in results) else 0


def _scan_here(
    scanner: Any,
    files: list[Path],
    labels: dict[str, int],
    args: argparse.Namespace,
    results: list[dict[str, Any]],
) -> tuple[float, str]:
    """The local scan: one file after another on this machine's engine."""
    from tqdm import tqdm

    from stream_server.core.scan import ScanError

    with scanner:
        for f in tqdm(files, desc="scanning", unit="video", file=sys.stderr, disable=args.quiet):
            try:
                r = scanner.scan(f).to_dict()
            except ScanError as exc:
                r = {"path": str(f), "error": str(exc)}
            if str(f) in labels:
                r["label"] = "fake" if labels[str(f)] else "real"
            results.append(r)
            if not args.json:
                tqdm.write(_line(r), file=sys.stdout)
        return scanner.bundle.threshold, scanner.bundle.model_id


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['path']}: ERROR {r['error']}"
    p = "-" if r["p_fake"] is None else f"{r['p_fake']:.3f}"
    label = f" (label {r['label']})" if "label" in r else ""
    return (
        f"{r['path']}: {r['verdict'].upper()} p_fake={p} faces={r['faces']} "
        f"{r['duration_s']:.1f}s{label}"
    )


if __name__ == "__main__":
    sys.exit(main())
