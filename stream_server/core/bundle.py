"""The model bundle contract: `manifest.json` plus the ONNX files it names.

The manifest's schema is `stream_server.core.manifest.Manifest`. The export command writes bundles with
`write_manifest`; the server, `deepfake-export validate` and the evaluation read them with
`load_bundle`, which refuses any bundle whose files, hashes or declared shapes disagree with the
manifest (`BundleError`, one-line reason).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_server.core.manifest import (
    FORMAT,
    MANIFEST,
    BundleError,
    CropSpec,
    DetectorSpec,
    FileEntry,
    HeadSpec,
    Manifest,
    RoiSpec,
)

# The bundle the package ships (package data of `models`); every command's --bundle default.
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default_bundle"

# The manifest's own types (CropSpec, DetectorSpec, ...) are imported from
# stream_server.core.manifest, their one home; BundleError and the format names are re-exported
# because every reader of a bundle meets them here.
__all__ = [
    "DEFAULT_BUNDLE",
    "FORMAT",
    "MANIFEST",
    "Bundle",
    "BundleError",
    "EncoderSpec",
    "load_bundle",
    "parse_detector",
    "parse_manifest",
    "parse_roi",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]


@dataclass(frozen=True)
class EncoderSpec:
    """The encoder the server runs: the manifest's default or the chosen precision's file."""

    file: str
    input_name: str
    output_name: str
    input_size: int
    precision: str  # "fp32" | "int8"
    # Why `precision` differs from the manifest's default, when it does ("auto" on a CPU whose
    # INT8 kernels saturate: see `int8_exact_here`); None when it is the manifest's choice.
    note: str | None = None


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder, its manifest, and the encoder chosen for the precision
    asked for; everything else is read from the manifest."""

    path: Path
    encoder: EncoderSpec
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def backbone(self) -> str:
        return self.manifest.backbone

    @property
    def feature_dim(self) -> int:
        return self.manifest.feature_dim

    @property
    def window(self) -> int:
        return self.manifest.window

    @property
    def analysis_fps(self) -> float:
        return self.manifest.analysis_fps

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    @property
    def warmup_frames(self) -> int:
        return self.manifest.warmup

    @property
    def head(self) -> HeadSpec:
        return self.manifest.head

    @property
    def detector(self) -> DetectorSpec:
        return self.manifest.detector

    @property
    def crop(self) -> CropSpec:
        return self.manifest.crop

    @property
    def roi(self) -> RoiSpec | None:
        return self.manifest.roi_detector

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    def file(self, name: str) -> Path:
        return self.path / name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(bundle_dir: Path, manifest: Manifest | dict[str, Any]) -> Path:
    """Fill in `format` and the per-file sha256/bytes, then write manifest.json.

    A dict is read with `Manifest.from_dict` first (so what is written is always a valid schema).
    """
    if isinstance(manifest, dict):
        manifest = Manifest.from_dict({**manifest, "format": FORMAT})
    files = {}
    for name in sorted(manifest.referenced_files()):
        p = bundle_dir / name
        files[name] = FileEntry(sha256_file(p), p.stat().st_size)
    out = manifest.with_(format=FORMAT, files=files).to_dict()
    Manifest.from_dict(out)  # what is written is what the reader accepts
    path = bundle_dir / MANIFEST
    path.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(bundle_dir: Path) -> Manifest:
    """The bundle's manifest.json as a `Manifest` (no file checks: see `load_bundle`)."""
    mpath = Path(bundle_dir) / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"model bundle {bundle_dir} has no {MANIFEST}")
    try:
        raw = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON: {exc}") from None
    return Manifest.from_dict(raw)


def parse_detector(det: Any, where: str = "detector.") -> DetectorSpec:
    """The manifest's `detector` section (BlazeFace ONNX and how to decode its anchors)."""
    return DetectorSpec.from_dict(det, where)


def parse_roi(sec: Any) -> RoiSpec:
    """The optional `roi_detector` section: a detector section plus the region and box mapping."""
    return RoiSpec.from_dict(sec)


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpuinfo_has_vnni(cpuinfo: str) -> bool | None:
    """Whether /proc/cpuinfo text names a VNNI (or AMX) instruction set; None without flags."""
    flags = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    if not flags:
        return None
    return bool(set(flags.split(":", 1)[-1].split()) & VNNI_FLAGS)


@functools.cache
def int8_exact_here() -> bool:
    """False on an x86-64 CPU without VNNI (AVX512-VNNI, AVX-VNNI or AMX), where onnxruntime's
    u8s8 convolution kernels (uint8 activations x int8 weights, how the export quantizes) add
    pairs of products in 16 bits and saturate: the INT8 encoder then drifts far from fp32
    (measured on a 2-core AVX2 EPYC with the default bundle 0.8.0: min cosine 0.35, held-out
    AUC 0.762 against 0.805). True elsewhere (VNNI, ARM, or flags that cannot be read)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return cpuinfo_has_vnni(text) is not False


def _bundle(path: Path, m: Manifest, precision: str) -> Bundle:
    enc = m.encoder
    enc_file, enc_precision = enc.file, enc.precision
    note = None
    if precision == "auto" and enc_precision == "int8" and not int8_exact_here():
        if "fp32" in enc.alternatives:
            enc_file, enc_precision = enc.alternatives["fp32"], "fp32"
            note = "fp32: this CPU has no VNNI, and its INT8 kernels saturate (--precision int8 forces it)"
        else:
            note = "int8 on a CPU without VNNI: scores may drift from the model card (no fp32 file)"
    if precision != "auto" and precision != enc_precision:
        if precision not in enc.alternatives:
            raise BundleError(f"bundle has no {precision} encoder (has {enc_precision})")
        enc_file, enc_precision = enc.alternatives[precision], precision
    encoder = EncoderSpec(
        file=enc_file,
        input_name=enc.input.name,
        output_name=enc.output,
        input_size=enc.input.size,
        precision=enc_precision,
        note=note,
    )
    return Bundle(path=path, encoder=encoder, manifest=m)


def parse_manifest(path: Path, manifest: Any, precision: str = "auto") -> Bundle:
    """Turn manifest JSON into a `Bundle`; raises `BundleError` on anything missing or malformed."""
    return _bundle(path, Manifest.from_dict(manifest), precision)


def load_bundle(path: str | Path, precision: str = "auto", verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle directory: manifest, every named file present, sha256 equal.

    The ONNX graphs' real input/output shapes are checked against the manifest by
    `stream_server.core.runtime.open_sessions` when the sessions are created.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"model bundle {root} is not a directory")
    m = read_manifest(root)
    bundle = _bundle(root, m, precision)
    for name in sorted(m.referenced_files()):
        entry = m.files.get(name)
        if entry is None:
            raise BundleError(f"manifest files has no sha256 for {name}")
        fp = root / name
        if not fp.is_file():
            raise BundleError(f"bundle file {name} named by the manifest is missing")
        if verify_hashes and sha256_file(fp) != entry.sha256:
            raise BundleError(f"bundle file {name} does not match its sha256 in the manifest")
    return bundle
