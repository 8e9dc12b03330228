"""Graph conversion with tf2onnx, and stable input/output names on the ONNX side."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import onnx  # noqa: E402

OPSET = 17


class ExportError(Exception):
    """Export cannot produce a correct bundle; the message is one line saying why."""


def rename_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Give the graph outputs stable names (tf2onnx derives them from Keras layer names)."""
    graph = model.graph
    if len(graph.output) != len(names):
        raise ExportError(f"expected {len(names)} graph outputs, found {len(graph.output)}")
    for out, new in zip(graph.output, names, strict=True):
        old = out.name
        if old == new:
            continue
        for node in graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if i == old else i for i in node.input]
        out.name = new
    return model


def keras_to_onnx(
    keras_model: Any, input_signature: tuple[Any, ...], output_names: list[str], path: Path
) -> Path:
    import tf2onnx

    try:
        proto, _ = tf2onnx.convert.from_keras(
            keras_model, input_signature=input_signature, opset=OPSET
        )
    except Exception as exc:  # tf2onnx raises many types; report one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"tf2onnx could not convert {keras_model.name}: {msg}") from exc
    proto = rename_outputs(proto, output_names)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def tflite_to_onnx(tflite_path: Path, path: Path) -> Path:
    import tf2onnx

    proto, _ = tf2onnx.convert.from_tflite(str(tflite_path), opset=OPSET)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path
