"""The one typed description of a CNN-GRU model, shared by training and export."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stream_server.core.manifest import HEAD_KINDS


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the frame encoder and the sequence head.

    The defaults are the original design: a masked GRU(16) -> GRU(8) -> Dropout -> Dense(8, relu)
    -> Dense(1, sigmoid) over a window of 20 embeddings.
    """

    backbone: str = "efficientnet_lite0"
    input_size: int = 224
    window: int = 20
    gru_units: tuple[int, ...] = (16, 8)
    dense_units: int = 8
    dropout: float = 0.2
    # Regularisation for small data sets (0 = the original design): dropout on the standardised
    # embeddings before the GRUs, and an L2 penalty on the GRU kernels.
    input_dropout: float = 0.0
    l2: float = 0.0
    # "imagenet" (where the backbone can load it), a path to a weights file, or None (random).
    weights: str | None = "imagenet"
    # Take the embedding from this backbone layer (global average pooled) instead of the last one;
    # e.g. "block14_add" for efficientnet_lite0 (192-d, measured to generalise better here).
    feature_layer: str | None = None
    # "gru": the masked GRU head above. "frame_mean": the fine-tuned frame classifier (one
    # Dense(1, sigmoid) per embedding) averaged over the valid steps of the window; set from the
    # encoder fine-tune, not trained on windows.
    head: str = "gru"
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        if not self.gru_units:
            raise ValueError("gru_units must name at least one GRU layer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "gru_units", tuple(int(u) for u in self.gru_units))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)  # type: ignore[arg-type]

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls.from_dict(json.loads(path.read_text()))
