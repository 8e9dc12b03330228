"""The checked-in test bundle (tests/data/tiny_bundle/, made by scripts/make_test_bundle.py).

It holds a tiny random-weight encoder and head with their manifest; the face detectors are the
default bundle's, copied in beside them by `tiny_bundle`, so serving tests need neither
TensorFlow nor an export at test time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stream_server.core.bundle import DEFAULT_BUNDLE, read_manifest, write_manifest
from stream_server.core.manifest import Manifest

TINY = Path(__file__).resolve().parent / "data" / "tiny_bundle"


def face_stage_files(m: Manifest) -> list[str]:
    names = [m.detector.file]
    if m.roi_detector is not None:
        names.append(m.roi_detector.detector.file)
    return names


def with_default_face_stage(bundle_dir: Path) -> Path:
    """Put the default bundle's face detectors into `bundle_dir` and name them (with their
    calibration) in its manifest, in place of its own."""
    default = read_manifest(DEFAULT_BUNDLE)
    for name in face_stage_files(read_manifest(bundle_dir)):
        (bundle_dir / name).unlink(missing_ok=True)
    for name in face_stage_files(default):
        shutil.copy2(DEFAULT_BUNDLE / name, bundle_dir / name)
    m = read_manifest(bundle_dir)
    write_manifest(
        bundle_dir, m.with_(detector=default.detector, roi_detector=default.roi_detector)
    )
    return bundle_dir


def tiny_bundle(out: Path) -> Path:
    """A complete copy of the test bundle in `out`: the checked-in files and the face stage."""
    out.mkdir(parents=True, exist_ok=True)
    for f in TINY.iterdir():
        shutil.copy2(f, out / f.name)
    return with_default_face_stage(out)


def low_threshold(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The tiny bundle with threshold 0.01: every face scores 'fake', so alerts fire."""
    bundle = tmp_path / "low-threshold"
    shutil.copytree(tiny_bundle, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["threshold"] = 0.01
    write_manifest(bundle, m)
    return bundle
