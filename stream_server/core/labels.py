"""Labels of a Kaggle DFDC-format folder (metadata.json: file name -> {"label": "REAL"|"FAKE",
...}), validated with one-line reasons. Training reads folders through this too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DatasetError(Exception):
    """A folder that is not in DFDC layout, or an unusable entry; one line saying why."""


def read_metadata(folder: Path) -> dict[str, dict[str, Any]]:
    """metadata.json of `folder`, every entry checked (label, plain file name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a directory")
    meta_path = folder / "metadata.json"
    if not meta_path.is_file():
        raise DatasetError(f"{folder} is not in DFDC layout: metadata.json is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not meta:
        raise DatasetError(f"{meta_path} must map video file names to entries")
    for name, entry in meta.items():
        if not isinstance(entry, dict):
            raise DatasetError(f"{meta_path}: entry for {name} is not an object")
        if entry.get("label") not in ("REAL", "FAKE"):
            raise DatasetError(
                f"{meta_path}: {name} has label {entry.get('label')!r}, expected REAL or FAKE"
            )
        if Path(name).name != name:
            raise DatasetError(f"{meta_path}: {name!r} is not a plain file name")
    return meta


def read_labels(folder: Path) -> dict[str, int]:
    """file name -> 1 (FAKE) or 0 (REAL)."""
    return {n: int(e["label"] == "FAKE") for n, e in read_metadata(folder).items()}
