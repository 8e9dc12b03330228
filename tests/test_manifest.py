"""The manifest schema: `stream_server.core.manifest` (typed dataclasses) and `docs/manifest.schema.json`
agree, a freshly exported bundle's manifest validates, and to_dict/from_dict round-trip.

jsonschema is not a dependency: `validate` below checks the subset of JSON Schema the schema file
uses (and refuses any keyword outside it, so the schema cannot silently grow past the checker).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from stream_server.core.bundle import BundleError, load_bundle, read_manifest, write_manifest
from stream_server.core.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
DEFAULT_BUNDLE = ROOT / "models" / "default_bundle"

KNOWN = {
    "$schema", "$id", "$defs", "$ref", "title", "description", "type", "required", "properties",
    "additionalProperties", "items", "minItems", "minLength", "const", "enum", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern",
}  # fmt: skip
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Errors of `value` against `schema` (the JSON Schema subset in KNOWN); [] when it is valid."""
    unknown = set(schema) - KNOWN
    assert not unknown, f"{path}: schema keywords {unknown} are outside the checker's subset"
    if "$ref" in schema:
        node: Any = SCHEMA
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return validate(value, node, path)
    errors: list[str] = []
    if "type" in schema:
        typ = TYPES[schema["type"]]
        if not isinstance(value, typ) or isinstance(value, bool) and schema["type"] != "boolean":
            return [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key, ok in (
            ("minimum", lambda b: value >= b),
            ("maximum", lambda b: value <= b),
            ("exclusiveMinimum", lambda b: value > b),
            ("exclusiveMaximum", lambda b: value < b),
        ):
            if key in schema and not ok(schema[key]):
                errors.append(f"{path}: {value} violates {key} {schema[key]}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], f"{path}.{k}")
            elif extra is False:
                errors.append(f"{path}: unexpected property {k!r}")
            elif isinstance(extra, dict):
                errors += validate(v, extra, f"{path}.{k}")
    return errors


def test_the_checker_catches_what_the_schema_forbids() -> None:
    raw = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    assert validate(raw, SCHEMA) == []
    broken = json.loads(json.dumps(raw))
    broken["window"] = "twenty"
    broken["threshold"] = 1.5
    broken["encoder"]["input"]["layout"] = "NCHW"
    broken["detector"]["anchors"]["strides"] = []
    broken["surprise"] = 1
    del broken["head"]["mask"]
    errors = " | ".join(validate(broken, SCHEMA))
    for part in ("$.window", "$.threshold", "layout", "strides", "surprise", "'mask'"):
        assert part in errors, (part, errors)


def _round_trips(raw: dict[str, Any]) -> Manifest:
    m = Manifest.from_dict(raw)
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.to_dict() == raw  # nothing the export writes is lost or renamed on the way through
    return m


def test_fresh_export_validates_and_round_trips(tiny_bundle: Path) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    assert validate(raw, SCHEMA) == []
    m = _round_trips(raw)
    assert m.roi_detector is not None and m.files.keys() == m.referenced_files()
    assert load_bundle(tiny_bundle).manifest == m


def test_checked_in_default_bundle_validates_and_round_trips() -> None:
    raw = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    assert validate(raw, SCHEMA) == []
    m = _round_trips(raw)
    assert m.encoder.precision == "int8" and m.encoder.alternatives == {"fp32": "encoder.onnx"}


def test_schema_names_exactly_the_dataclass_fields(tiny_bundle: Path) -> None:
    """Every key `to_dict` can write is in the schema and every schema property is written by
    some manifest: the default bundle has every optional section and field but the GRU sizes
    (its head is a frame mean), which the tiny test bundle's GRU head has."""
    m = read_manifest(DEFAULT_BUNDLE)
    written = m.to_dict()
    assert m.roi_detector is not None and m.encoder.quantization is not None
    gru = read_manifest(tiny_bundle).to_dict()["head"]
    written["head"] = {**gru, **written["head"]}
    assert "gru_units" in gru and "kind" in written["head"]

    def keys(d: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        if "$ref" in schema:
            schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
        props = schema.get("properties")
        if props is None:
            return
        assert set(d) == set(props), (path, set(d) ^ set(props))
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("quantization", "parity", "training", "files"):
                keys(v, props[k], f"{path}.{k}")

    keys(written, SCHEMA, "$")


def test_write_manifest_refuses_what_the_reader_refuses(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    raw = json.loads((b / "manifest.json").read_text())
    raw["analysis_fps"] = 61.0
    with pytest.raises(BundleError, match=r"analysis_fps 61.0 is outside \(0, 60\]"):
        write_manifest(b, raw)
    m = read_manifest(b)
    write_manifest(b, m.with_(threshold=0.25))
    assert load_bundle(b).threshold == 0.25


def test_auto_precision_serves_fp32_where_int8_kernels_saturate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--precision auto` takes the manifest's INT8 encoder only on a CPU whose INT8 kernels are
    exact (VNNI on x86-64): on an AVX2-only CPU onnxruntime's u8s8 kernels saturate and the
    default bundle's INT8 embeddings drift (min cosine 0.35 measured), so its fp32 file is served
    and the reason is given; `--precision int8` still forces INT8; a bundle without an fp32 file
    keeps INT8 and says scores may drift."""
    import stream_server.core.bundle as sb

    sample = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma {}\nbugs\t\t: none\n"
    assert sb.cpuinfo_has_vnni(sample.format("avx512f avx512_vnni")) is True
    assert sb.cpuinfo_has_vnni(sample.format("avx_vnni")) is True
    assert sb.cpuinfo_has_vnni(sample.format("")) is False
    assert sb.cpuinfo_has_vnni("processor: 0\n") is None

    monkeypatch.setattr(sb, "int8_exact_here", lambda: False)
    b = load_bundle(DEFAULT_BUNDLE)
    assert b.encoder.precision == "fp32" and b.encoder.file == "encoder.onnx"
    assert b.encoder.note and "no VNNI" in b.encoder.note
    forced = load_bundle(DEFAULT_BUNDLE, precision="int8")
    assert forced.encoder.file == "encoder_int8.onnx" and forced.encoder.note is None
    only = tmp_path / "int8-only"
    shutil.copytree(DEFAULT_BUNDLE, only)
    (only / "encoder.onnx").unlink()
    raw = json.loads((only / "manifest.json").read_text())
    del raw["encoder"]["alternatives"]
    write_manifest(only, raw)
    kept = load_bundle(only)
    assert kept.encoder.precision == "int8" and "may drift" in (kept.encoder.note or "")

    monkeypatch.setattr(sb, "int8_exact_here", lambda: True)
    b = load_bundle(DEFAULT_BUNDLE)
    assert b.encoder.file == "encoder_int8.onnx" and b.encoder.note is None
