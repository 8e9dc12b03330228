"""Make the checked-in test bundle, tests/data/tiny_bundle/ (encoder, head and manifest, ~75 KB).

    .venv/bin/python scripts/make_test_bundle.py [--out tests/data/tiny_bundle] [--seed 0]

Needs the train and export extras (TensorFlow, tf2onnx); the tests that use the bundle do not.
A tiny random-weight CNN-GRU (`tiny_cnn` backbone, 64 px crops, window 20, the shape tests have
always used) is exported with the project's own export code (`export.bundle_export.export_bundle`:
conversion, Keras/ONNX parity, manifest, hashes), named `tiny-test@1`. Only the encoder, the
head and the manifest are kept: the face detectors (2.5 MB of real BlazeFace weights) are the ones
`models/default_bundle` already ships, and `tests.bundles.tiny_bundle` puts a copy of them
beside the kept files, taking their manifest entries from the default bundle's manifest, so the
assembled directory is a complete bundle that `load_bundle` verifies file by file.

Run it again only when the bundle format or the model's shape changes; commit what it writes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiortc  # noqa: E402,F401  isort: skip  (libsrtp must load before TensorFlow does)

KEPT = ("encoder.onnx", "head.onnx", "manifest.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/make_test_bundle.py", description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "tiny_bundle")
    p.add_argument("--seed", type=int, default=0, help="random seed of the model's weights")
    args = p.parse_args(argv)

    import keras

    from export.bundle_export import ExportConfig, export_bundle
    from models.config import ModelConfig
    from models.saving import load_model_dir, new_model, save_model_dir
    from tests.bundles import with_default_face_stage

    keras.utils.set_random_seed(args.seed)
    cfg = ModelConfig(backbone="tiny_cnn", input_size=64, weights=None, window=20)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_dir(new_model(cfg), Path(tmp) / "model")
        config = ExportConfig(name="tiny-test", version="1")
        bundle = export_bundle(load_model_dir(model_dir), Path(tmp) / "bundle", config)
        # The default bundle's detectors (and their fitted calibration) instead of the fresh
        # conversion: the same BlazeFace graphs, already in the repository.
        with_default_face_stage(bundle)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copy2(bundle / name, args.out / name)
    size = sum((args.out / n).stat().st_size for n in KEPT)
    print(f"wrote {args.out} ({size / 1024:.0f} KB: {', '.join(KEPT)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
