"""Messages that cross the service boundary (data channel, camera feeds, HTTP), frozen and
serialised in one place."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

Label = Literal["real", "fake", "no_face", "warming_up"]
StatusType = Literal["connected", "source_lost", "reconnected", "error"]


@dataclass(frozen=True)
class FaceScore:
    track: int
    box: tuple[float, float, float, float]  # x, y, w, h in 0..1 of the frame
    p_fake: float
    frames: int  # embeddings in this track's window
    label: Label


@dataclass(frozen=True)
class ScoreMessage:
    stream: str
    seq: int
    t: float
    p_fake: float | None
    label: Label
    faces: tuple[FaceScore, ...]
    latency_ms: float
    dropped: int
    model: str
    type: Literal["score"] = "score"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["faces"] = [
            {
                "track": f.track,
                "box": [round(v, 5) for v in f.box],
                "p_fake": f.p_fake,
                "frames": f.frames,
                "label": f.label,
            }
            for f in self.faces
        ]
        d["t"] = round(self.t, 4)
        d["latency_ms"] = round(self.latency_ms, 2)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass(frozen=True)
class StatusMessage:
    type: StatusType
    stream: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))
