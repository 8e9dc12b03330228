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
    canonical_names(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def canonical_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename `model`'s internal tensors, nodes and initializers by their order in the graph, in
    place, so converting the same file twice writes the same bytes (tf2onnx numbers the names it
    makes from a process-wide counter, so each export of the unchanged face detector differed).
    The graph's inputs and outputs keep their names (the manifest refers to them); a graph with
    subgraphs (If, Loop) is left as it is."""
    g = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        return model
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names)}"
        return names[name]

    for k, node in enumerate(g.node):
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = f"{node.op_type}_{k}"
    for init in g.initializer:
        init.name = rename(init.name)
    for info in g.value_info:
        info.name = rename(info.name)
    order = {v: i for i, v in enumerate(names.values())}
    for field in (g.initializer, g.value_info):
        items = [type(m)() for m in field]
        for copy, m in zip(items, field, strict=True):
            copy.CopyFrom(m)
        items.sort(key=lambda m: order.get(m.name, -1))
        del field[:]
        field.extend(items)
    return model
