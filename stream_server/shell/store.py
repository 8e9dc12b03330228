"""Kept state in SQLite (standard library `sqlite3`) under --data-dir: the cameras and their
settings, and each camera's history (per-minute score summaries, status changes, alerts),
bounded by --history-days.

WAL journal with synchronous=NORMAL: a committed write survives the process being killed at any
point (kill -9); a power cut may lose the last commits but never corrupts the file. The schema is
versioned with `PRAGMA user_version` and migrated forward at open; a file from a newer version is
refused instead of being misread."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

DB_NAME = "state.sqlite3"
SCHEMA_VERSION = 1
# Each step takes the schema from version i to i + 1 (index i).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE cameras (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        url TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        source TEXT NOT NULL CHECK (source IN ('api', 'file')),
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE summaries (
        camera TEXT NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
        minute INTEGER NOT NULL,
        scores INTEGER NOT NULL,
        with_face INTEGER NOT NULL,
        fake INTEGER NOT NULL,
        p_sum REAL NOT NULL,
        p_max REAL,
        PRIMARY KEY (camera, minute)
    );
    CREATE TABLE statuses (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera TEXT NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
        t REAL NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX statuses_camera_t ON statuses (camera, t);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera TEXT NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
        t REAL NOT NULL,
        track INTEGER NOT NULL,
        p_fake REAL NOT NULL,
        box TEXT NOT NULL,
        above_for_s REAL NOT NULL,
        model TEXT NOT NULL
    );
    CREATE INDEX alerts_t ON alerts (t);
    CREATE INDEX alerts_camera_t ON alerts (camera, t);
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION


class StoreError(Exception):
    """The state database cannot be used; the message says why."""


# -- the camera model, shared by POST/PATCH /v1/cameras and --cameras-file --------------------

CAMERA_ID = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?$")
CAMERA_KEYS = ("id", "name", "url", "alert_seconds")
Source = Literal["api", "file"]


def slugify(text: str) -> str:
    """A camera id from its name: lowercase ASCII letters and digits joined by '-', at most
    40 characters ('Front Door' -> 'front-door'); 'camera' when nothing is left."""
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")
    return slug[:40].strip("-") or "camera"


def check_camera_id(value: object) -> str:
    if not isinstance(value, str) or not CAMERA_ID.match(value):
        raise ValueError(
            "id must be 1 to 40 lowercase letters, digits, '-' or '_', starting and ending "
            "with a letter or digit"
        )
    return value


def check_name(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 100 or not value.strip():
        raise ValueError("name must be a string of 1 to 100 characters")
    return value


def check_alert_seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ValueError("alert_seconds must be a number of seconds from 0 to 3600 (or null)")
    return float(value)


def unknown_keys(entry: Mapping[str, Any], allowed: Iterable[str] = CAMERA_KEYS) -> None:
    extra = sorted(set(entry) - set(allowed))
    if extra:
        raise ValueError(
            f"unknown camera setting {', '.join(map(repr, extra))} (known: {', '.join(allowed)})"
        )


@dataclass(frozen=True)
class CameraSpec:
    """One camera as kept: a stable id, its name, its URL (credentials included: the file is
    private to the service) and its own settings."""

    id: str
    name: str
    url: str
    alert_seconds: float | None = None  # None: --alert-seconds
    source: Source = "api"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def settings(self) -> dict[str, Any]:
        return {"alert_seconds": self.alert_seconds}


# -- per-minute summaries ---------------------------------------------------------------------


@dataclass
class Minute:
    """What a camera scored in one wall-clock minute (`minute` = Unix time // 60)."""

    minute: int
    scores: int = 0
    with_face: int = 0
    fake: int = 0
    p_sum: float = 0.0
    p_max: float | None = None

    def add(self, p_fake: float | None, label: str) -> None:
        self.scores += 1
        if p_fake is not None:
            self.with_face += 1
            self.p_sum += p_fake
            self.p_max = p_fake if self.p_max is None else max(self.p_max, p_fake)
        if label == "fake":
            self.fake += 1

    def view(self, partial: bool = False) -> dict[str, Any]:
        t = self.minute * 60
        out: dict[str, Any] = {
            "t": t,
            "time": iso(t),
            "scores": self.scores,
            "with_face": self.with_face,
            "fake": self.fake,
            "p_fake_mean": round(self.p_sum / self.with_face, 6) if self.with_face else None,
            "p_fake_max": None if self.p_max is None else round(self.p_max, 6),
        }
        if partial:
            out["partial"] = True
        return out


def iso(t: float) -> str:
    """Unix seconds as an ISO 8601 UTC time with milliseconds ('2026-01-02T03:04:05.678Z')."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(raw: str, what: str = "since") -> float:
    """A query's time: Unix seconds, or an ISO 8601 time (UTC when it names no zone)."""
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{what} must be Unix seconds or an ISO 8601 time such as 2026-01-02T03:04:05Z, "
            f"got {raw[:40]!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# -- the database -----------------------------------------------------------------------------


class Store:
    """One connection, shared by the event loop and worker threads under a lock (every
    operation is a short transaction)."""

    def __init__(self, data_dir: Path, history_days: float) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.history_days = history_days
        self.lock = threading.Lock()
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not self.path.exists()
            if fresh:  # private from the first byte: camera URLs carry credentials
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=5
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state database {self.path}: {exc}") from None
        self.db.row_factory = sqlite3.Row
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"state database {self.path} is unusable: {exc}") from None

    def _setup(self) -> None:
        db = self.db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"state database {self.path}: WAL journal refused ({mode})")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"state database {self.path} is damaged: {check}")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"program's {SCHEMA_VERSION}: use the newer program or another --data-dir"
            )
        for step in range(version, SCHEMA_VERSION):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[step]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={step + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            log.info("state database %s: schema version %d", self.path, step + 1)

    @property
    def schema_version(self) -> int:
        with self.lock:
            return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- cameras ----------------------------------------------------------------------------
    def cameras(self) -> list[CameraSpec]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM cameras ORDER BY created, id").fetchall()
        out = []
        for r in rows:
            settings = json.loads(r["settings"] or "{}")
            out.append(
                CameraSpec(
                    id=r["id"],
                    name=r["name"],
                    url=r["url"],
                    alert_seconds=settings.get("alert_seconds"),
                    source=r["source"],
                    created=r["created"],
                    updated=r["updated"],
                )
            )
        return out

    def put_camera(self, spec: CameraSpec) -> CameraSpec:
        """Insert or update (by id); `created` is kept for an existing camera."""
        spec = replace(spec, updated=time.time())
        with self.lock:
            self.db.execute(
                "INSERT INTO cameras (id, name, url, settings, source, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name=excluded.name, "
                "url=excluded.url, settings=excluded.settings, source=excluded.source, "
                "updated=excluded.updated",
                (
                    spec.id,
                    spec.name,
                    spec.url,
                    json.dumps(spec.settings()),
                    spec.source,
                    spec.created,
                    spec.updated,
                ),
            )
        return spec

    def delete_camera(self, camera_id: str) -> None:
        """The camera and its whole history."""
        with self.lock:
            self.db.execute("DELETE FROM cameras WHERE id = ?", (camera_id,))

    # -- history ----------------------------------------------------------------------------
    def add_minute(self, camera_id: str, m: Minute) -> None:
        """Adds to the camera's row for that minute (a minute may be written in parts, e.g.
        across a restart)."""
        if m.scores == 0:
            return
        with self.lock:
            self.db.execute(
                "INSERT INTO summaries (camera, minute, scores, with_face, fake, p_sum, p_max) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (camera, minute) DO UPDATE SET "
                "scores = scores + excluded.scores, with_face = with_face + excluded.with_face, "
                "fake = fake + excluded.fake, p_sum = p_sum + excluded.p_sum, "
                "p_max = CASE WHEN p_max IS NULL THEN excluded.p_max "
                "WHEN excluded.p_max IS NULL THEN p_max ELSE max(p_max, excluded.p_max) END",
                (camera_id, m.minute, m.scores, m.with_face, m.fake, m.p_sum, m.p_max),
            )

    def add_status(self, camera_id: str, status: str, detail: str, t: float) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO statuses (camera, t, status, detail) VALUES (?, ?, ?, ?)",
                (camera_id, t, status, detail),
            )

    def add_alert(self, camera_id: str, alert: Mapping[str, Any], model: str, t: float) -> int:
        with self.lock:
            cur = self.db.execute(
                "INSERT INTO alerts (camera, t, track, p_fake, box, above_for_s, model) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    camera_id,
                    t,
                    int(alert["track"]),
                    float(alert["p_fake"]),
                    json.dumps(list(alert["box"])),
                    float(alert["above_for_s"]),
                    model,
                ),
            )
            return int(cur.lastrowid or 0)

    def history(self, camera_id: str, since: float, until: float) -> dict[str, Any]:
        with self.lock:
            minutes = self.db.execute(
                "SELECT * FROM summaries WHERE camera = ? AND minute >= ? AND minute * 60 < ? "
                "ORDER BY minute",
                (camera_id, int(since // 60), until),
            ).fetchall()
            statuses = self.db.execute(
                "SELECT * FROM statuses WHERE camera = ? AND t >= ? AND t < ? ORDER BY t, id",
                (camera_id, since, until),
            ).fetchall()
        return {
            "summaries": [
                Minute(
                    r["minute"], r["scores"], r["with_face"], r["fake"], r["p_sum"], r["p_max"]
                ).view()
                for r in minutes
            ],
            "statuses": [
                {"t": r["t"], "time": iso(r["t"]), "status": r["status"], "detail": r["detail"]}
                for r in statuses
            ],
            "alerts": self.alerts(since, until, camera_id=camera_id, limit=1000, newest=False),
        }

    def alerts(
        self,
        since: float,
        until: float,
        camera_id: str | None = None,
        limit: int = 100,
        newest: bool = True,
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT alerts.*, cameras.name FROM alerts JOIN cameras ON cameras.id = alerts.camera"
            " WHERE alerts.t >= ? AND alerts.t < ?"
        )
        args: list[Any] = [since, until]
        if camera_id is not None:
            sql += " AND alerts.camera = ?"
            args.append(camera_id)
        sql += f" ORDER BY alerts.t {'DESC' if newest else 'ASC'}, alerts.id LIMIT ?"
        args.append(limit)
        with self.lock:
            rows = self.db.execute(sql, args).fetchall()
        return [alert_view(r) for r in rows]

    def prune(self, now: float | None = None) -> int:
        """Drops history older than --history-days; returns the rows removed."""
        cutoff = (time.time() if now is None else now) - self.history_days * 86400
        with self.lock:
            n = self.db.execute("DELETE FROM summaries WHERE minute * 60 < ?", (cutoff,)).rowcount
            n += self.db.execute("DELETE FROM statuses WHERE t < ?", (cutoff,)).rowcount
            n += self.db.execute("DELETE FROM alerts WHERE t < ?", (cutoff,)).rowcount
        if n:
            log.info(
                "state database: %d history rows older than %g days removed",
                n,
                self.history_days,
            )
        return n


def alert_view(r: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "camera": r["camera"],
        "name": r["name"],
        "t": r["t"],
        "time": iso(r["t"]),
        "track": r["track"],
        "p_fake": r["p_fake"],
        "box": json.loads(r["box"]),
        "above_for_s": r["above_for_s"],
        "model": r["model"],
    }


def _statements(script: str) -> list[str]:
    """A migration script's statements (none of ours holds a ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def load_cameras_file(path: Path) -> list[dict[str, Any]]:
    """The cameras a --cameras-file declares: TOML (`[[cameras]]` tables, by the .toml suffix)
    or JSON (a list of objects, or {"cameras": [...]}); each entry has the keys of POST
    /v1/cameras (url, and optionally name, id, alert_seconds). Raises StoreError with what is
    wrong."""
    import tomllib

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cameras file {path} is unreadable: {exc}") from None
    data: Any
    try:
        if Path(path).suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StoreError(f"cameras file {path} is not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"cameras file {path} is not valid JSON: {exc.msg} (line {exc.lineno})"
        ) from None
    if isinstance(data, dict):
        extra = sorted(set(data) - {"cameras"})
        if extra:
            raise StoreError(f"cameras file {path}: unknown top-level key(s) {', '.join(extra)}")
        data = data.get("cameras", [])
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise StoreError(f"cameras file {path} must hold a list of camera tables/objects")
    return data
