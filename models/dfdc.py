"""Kaggle DFDC-format folders: metadata.json + mp4 files; identity groups; held-out splits.

metadata.json maps a file name to {"label": "REAL"|"FAKE", "original": <file or null>,
"split": ..., ...}. Several folders may be read together.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_server.core.labels import DatasetError, read_metadata

__all__ = ["DatasetError", "Dataset", "Video", "read_folder", "read_folders"]


@dataclass(frozen=True)
class Video:
    path: Path
    label: int  # 1 = FAKE, 0 = REAL
    original: str | None
    split: str | None
    generator: str | None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Dataset:
    videos: list[Video]
    skipped: dict[str, str] = field(default_factory=dict)  # file -> reason

    def summary(self) -> str:
        c = Counter("FAKE" if v.label else "REAL" for v in self.videos)
        s = f"{len(self.videos)} videos ({c['REAL']} REAL, {c['FAKE']} FAKE)"
        if self.skipped:
            reasons = Counter(self.skipped.values())
            s += "; skipped " + ", ".join(f"{n} ({r})" for r, n in reasons.items())
        return s


def read_folder(folder: Path) -> Dataset:
    folder = Path(folder)
    meta = read_metadata(folder)
    videos: list[Video] = []
    skipped: dict[str, str] = {}
    for name, entry in sorted(meta.items()):
        path = folder / name
        if not path.is_file():
            skipped[name] = "file missing"
            continue
        original = entry.get("original")
        videos.append(
            Video(
                path,
                int(entry["label"] == "FAKE"),
                original if isinstance(original, str) else None,
                entry.get("split"),
                entry.get("generator"),
            )
        )
    if not videos:
        raise DatasetError(f"{folder}: none of the {len(meta)} videos in metadata.json exist")
    return Dataset(videos, skipped)


def read_folders(folders: list[Path]) -> Dataset:
    out = Dataset([])
    for f in folders:
        d = read_folder(f)
        out.videos.extend(d.videos)
        out.skipped.update({f"{f}/{k}": v for k, v in d.skipped.items()})
    return out


# -- identity groups -----------------------------------------------------------------------------


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def identity_groups(videos: list[Video], rules: dict[str, Any] | None = None) -> dict[str, str]:
    """file name -> group id, so a person is never on both sides of a split.

    Always: a fake and its `original` share a group. `rules` adds, from a JSON file:
      "same_identity": [[regex, regex, ...], ...]  every file matching any regex of one list is
                                                   in one group (same person, or same footage)
      "group_by": [regex with one capture group]   files whose capture is equal share a group
    """
    uf = _UnionFind()
    names = [v.name for v in videos]
    for v in videos:
        uf.find(v.name)
        if v.original:
            uf.union(v.name, v.original)
    rules = rules or {}
    for pattern in rules.get("group_by", []):
        rx = re.compile(pattern)
        first: dict[str, str] = {}
        for n in names:
            m = rx.search(n)
            if m:
                key = m.group(1)
                if key in first:
                    uf.union(n, first[key])
                else:
                    first[key] = n
    for patterns in rules.get("same_identity", []):
        rxs = [re.compile(p) for p in patterns]
        members = [n for n in names if any(r.search(n) for r in rxs)]
        for n in members[1:]:
            uf.union(n, members[0])
    return {n: uf.find(n) for n in names}


def split_by_identity(
    videos: list[Video],
    groups: dict[str, str],
    val_fraction: float = 0.25,
    seed: int = 0,
    max_group_fraction: float = 0.1,
) -> tuple[list[Video], list[Video]]:
    """Whole groups go to validation (in a seeded order) until each label has `val_fraction` of its
    videos there. Groups larger than `max_group_fraction` of the data always stay in training."""
    by_group: dict[str, list[Video]] = {}
    for v in videos:
        by_group.setdefault(groups[v.name], []).append(v)
    total = Counter(v.label for v in videos)
    order = sorted(by_group, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    val_groups: set[str] = set()
    have: Counter[int] = Counter()
    for g in order:
        members = by_group[g]
        if len(members) > max_group_fraction * len(videos):
            continue
        c = Counter(v.label for v in members)
        needs = any(have[lab] < val_fraction * total[lab] for lab in c)
        overshoot = any(have[lab] + c[lab] > 1.6 * val_fraction * total[lab] for lab in c)
        if needs and not overshoot:
            val_groups.add(g)
            have.update(c)
        if all(have[lab] >= val_fraction * total[lab] for lab in total):
            break
    train = [v for v in videos if groups[v.name] not in val_groups]
    val = [v for v in videos if groups[v.name] in val_groups]
    return train, val


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int  # 1 = FAKE, 0 = REAL
    group: str  # top-level folder under the image root (e.g. the source dataset)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def read_image_folder(folder: Path) -> list[LabelledImage]:
    """A folder of labelled face images: `labels.csv` with at least `path` (relative to the
    folder) and `label` (REAL/FAKE) columns, like `../shared/data/faces`."""
    import csv

    folder = Path(folder)
    table = folder / "labels.csv"
    if not table.is_file():
        raise DatasetError(
            f"{folder} is not a labelled image folder: no labels.csv (columns path,label)"
        )
    out: list[LabelledImage] = []
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{table} needs the columns path and label")
        for k, row in enumerate(reader, start=2):
            label = (row.get("label") or "").strip().upper()
            if label not in ("REAL", "FAKE"):
                raise DatasetError(f"{table} line {k}: label must be REAL or FAKE, got {label!r}")
            rel = Path(row["path"])
            if rel.is_absolute() or ".." in rel.parts or rel.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{table} line {k}: {row['path']!r} is not an image path")
            p = folder / rel
            if p.is_file():
                out.append(LabelledImage(p, 1 if label == "FAKE" else 0, rel.parts[0]))
    if not out:
        raise DatasetError(f"{table} names no image files that exist")
    return out


@dataclass(frozen=True)
class StillPair:
    real: LabelledImage
    fake: LabelledImage
    pair: int
    original: str


def read_pair_folder(folder: Path) -> list[StillPair]:
    """A folder of real/fake still pairs (`labels.csv` with `path,label,...,original,pair`, like
    `../shared/data/dfdc_faces`): each pair is one REAL and one FAKE image of the same scene.
    Pairs with a missing image, or with other than one REAL and one FAKE row, are skipped."""
    import csv

    folder = Path(folder)
    table = folder / "labels.csv"
    images = read_image_folder(folder)
    by_path = {i.path: i for i in images}
    rows: dict[int, list[tuple[LabelledImage, str]]] = {}
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"pair", "original"} <= set(reader.fieldnames):
            raise DatasetError(f"{table} needs the columns pair and original for paired images")
        for k, row in enumerate(reader, start=2):
            try:
                pid = int(row["pair"])
            except (TypeError, ValueError):
                raise DatasetError(f"{table} line {k}: pair must be an integer") from None
            img = by_path.get(folder / row["path"])
            if img is not None:
                rows.setdefault(pid, []).append((img, row.get("original") or ""))
    out = []
    for pid, members in sorted(rows.items()):
        reals = [m for m in members if m[0].label == 0]
        fakes = [m for m in members if m[0].label == 1]
        if len(reals) == 1 and len(fakes) == 1:
            out.append(StillPair(reals[0][0], fakes[0][0], pid, reals[0][1]))
    if not out:
        raise DatasetError(f"{table} has no complete REAL/FAKE pair")
    return out
