"""`deepfake-export`: a trained Keras model directory -> a verified ONNX model bundle.

`export/` may import `models.saving` (the model directory format); `models/` never imports
`export/`: `deepfake-train` runs this command (`build`, `face-stage`) as a separate process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from stream_server.core.manifest import DEFAULT_ANALYSIS_FPS, DEFAULT_MARGIN, DEFAULT_THRESHOLD

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepfake-export",
        description="Export a Keras CNN-GRU (the directory deepfake-train writes) to an ONNX model "
        "bundle, or re-verify a bundle.",
    )
    from stream_server.core.version import version_string

    # `deepfake-export --version` is the program's; `build --version V` names the bundle's.
    p.add_argument("--version", action="version", version=version_string("deepfake-export"))
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="Keras model directory -> bundle (checked for parity)")
    b.add_argument(
        "model_dir", type=Path, help="directory with config.json, encoder.keras, head.keras"
    )
    b.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    b.add_argument("--name", default="deepfake-cnn-gru")
    b.add_argument("--version", default="0.0.0")
    b.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="also write a static INT8 encoder (used by default when its drift is small)",
    )
    b.add_argument(
        "--int8-fallback",
        action="store_true",
        help="with --quantize int8: when the INT8 encoder drifts too far, export fp32 only",
    )
    b.add_argument(
        "--int8-only",
        action="store_true",
        help="with --quantize int8: ship the INT8 encoder alone, without the fp32 one "
        "(half the size; --precision fp32 is then refused). With --int8-fallback and INT8 "
        "refused, the bundle is fp32 only as before",
    )
    b.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help=".npy of uint8 face crops (N, size, size, 3) for INT8 calibration "
        "(default: crops of scikit-image's astronaut photo)",
    )
    b.add_argument("--detector", choices=["full_range", "short_range"], default="full_range")
    b.add_argument(
        "--no-roi-detector",
        dest="roi_detector",
        action="store_false",
        help="leave out the tracked-face detector (every analysed frame is searched in full)",
    )
    b.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    b.add_argument(
        "--analysis-fps",
        type=float,
        default=DEFAULT_ANALYSIS_FPS,
        help="analysed frames per second written into the bundle (the server may override it)",
    )
    b.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="face crop margin (fraction of the box)",
    )
    b.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    f = sub.add_parser(
        "face-stage",
        help="convert the face detectors alone (what training crops faces with) into a folder: "
        "the ONNX files, section.json and roi_section.json (manifest sections)",
    )
    f.add_argument("out", type=Path)
    f.add_argument("--detector", choices=["full_range", "short_range"], default="full_range")
    v = sub.add_parser("validate", help="re-verify a bundle: hashes, shapes, a test run")
    v.add_argument("bundle", type=Path)
    v.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from export.convert import ExportError
    from stream_server.core.bundle import BundleError

    try:
        if args.command == "validate":
            from export.validate import validate_bundle

            print(json.dumps(validate_bundle(args.bundle, args.precision), indent=2))
            return 0
        if args.command == "face-stage":
            from export.detector import write_face_stage

            write_face_stage(args.out, args.detector)
            return 0
        missing = [
            n
            for n in ("config.json", "encoder.keras", "head.keras")
            if not (args.model_dir / n).is_file()
        ]
        if missing:  # checked before TensorFlow loads (and logs) anything
            raise FileNotFoundError(
                f"{args.model_dir} is not a model directory: {missing[0]} is missing"
            )
        import numpy as np

        from export.bundle_export import ExportConfig, export_bundle
        from export.quantize import DriftError
        from models.saving import load_model_dir

        model = load_model_dir(args.model_dir)
        calib = np.load(args.calibration) if args.calibration else None
        config = ExportConfig(
            name=args.name,
            version=args.version,
            quantize=args.quantize,
            detector=args.detector,
            roi_detector=args.roi_detector,
            threshold=args.threshold,
            analysis_fps=args.analysis_fps,
            margin=args.margin,
            force=args.force,
            int8_only=args.int8_only,
        )
        try:
            export_bundle(model, args.out, config, calibration_crops=calib)
        except DriftError as exc:
            if not args.int8_fallback:
                raise
            print(f"deepfake-export: INT8 refused ({exc}); exporting fp32 only", file=sys.stderr)
            export_bundle(model, args.out, replace(config, quantize=None, int8_only=False))
        return 0
    except (ExportError, BundleError, FileNotFoundError, ValueError) as exc:
        print(f"deepfake-export: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
