"""An ONNX file as every command reads it: parsed and checked (:func:`load_onnx_model`), its metadata
(:func:`onnx_metadata`), its graph's signature against that metadata (:func:`check_onnx_signature`) and its
initializers by role (:func:`onnx_initializer_counts`). No session: ``info`` reads a file with these alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, first_line
from ..export.names import INPUT_NAME, ONNX_METADATA, OUTPUT_NAME
from .metadata import parse_metadata


def load_onnx_model(p: Path, *, check: bool = True):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"not a readable ONNX, TorchScript or checkpoint file ({type(exc).__name__})",
            path=p,
            hint="the file is truncated or of another kind; export it again",
        ) from None
    if check:
        check_onnx_model(model, p)
    return model


def check_onnx_model(model, p: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(
            f"ONNX model fails onnx.checker: {first_line(exc)}",
            path=p,
            hint="the file is truncated or damaged; export it again",
        ) from None


def onnx_metadata(model, p: Path) -> dict[str, Any]:
    raw = next((prop.value for prop in model.metadata_props if prop.key == ONNX_METADATA), None)
    return parse_metadata(raw, p, "onnx")


QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def onnx_initializer_counts(model) -> dict[str, int]:
    """Elements of an ONNX model's initializers by role: ``weights`` (weights and biases, float or integer), of those
    ``kernels`` (rank 2 or more: convolution and linear kernels), ``quant`` (scales and zero points of Q/DQ nodes) and
    ``other`` (int64 shape constants, ReLU6's clip bounds and the like)."""
    import onnx

    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))
    counts = dict.fromkeys(("weights", "kernels", "quant", "other"), 0)
    for init in model.graph.initializer:
        n = math.prod(init.dims)
        uses = consumers.get(init.name, [])
        if uses and all(op in QUANT_OPS and i in (1, 2) for op, i in uses):
            counts["quant"] += n
        elif init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL) or (
            uses and all(op == "Clip" and i > 0 for op, i in uses)
        ):
            counts["other"] += n
        else:
            counts["weights"] += n
            counts["kernels"] += n if len(init.dims) >= 2 else 0
    return counts


def check_onnx_signature(model, meta: dict[str, Any], p: Path) -> None:
    """An :class:`ArtifactError` where the graph of ``model`` (an ``onnx.ModelProto``) differs from what its metadata
    describes: one input named as the metadata says (``input``) of N x C x H x W with the metadata's input size, one
    output (``logits``) of N x num_classes; a fixed dimension must match, a symbolic one (the batch) may be anything.
    Read from the graph itself, so ``info`` checks it without a session."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    outputs = list(graph.output)
    in_name, out_name = meta.get("input_name", INPUT_NAME), meta.get("output_name", OUTPUT_NAME)
    want_in = [None, *meta["input_size"]]
    want_out = [None, meta.get("num_classes", len(meta["class_names"]))]
    problems = []
    if len(inputs) != 1 or inputs[0].name != in_name:
        problems.append(f"inputs {[i.name for i in inputs]} (the metadata says one named {in_name!r})")
    elif not shape_fits(dims(inputs[0]), want_in):
        problems.append(f"input shape {dims(inputs[0])} (the metadata says N x {' x '.join(map(str, want_in[1:]))})")
    if len(outputs) != 1 or outputs[0].name != out_name:
        problems.append(f"outputs {[o.name for o in outputs]} (the metadata says one named {out_name!r})")
    elif not shape_fits(dims(outputs[0]), want_out):
        problems.append(f"output shape {dims(outputs[0])} (the metadata says N x {want_out[1]})")
    if problems:
        raise ArtifactError(
            f"ONNX graph does not match its metadata: {'; '.join(problems)}",
            path=p,
            hint="export the model again with `mnv2 export`",
        )


def dims(value_info) -> list[Any]:
    """A value's shape: a fixed dimension as an int, a symbolic one as its name, an unknown one as None."""
    dims = value_info.type.tensor_type.shape.dim
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None) for d in dims
    ]


def shape_fits(shape: list[Any], want: list[Any]) -> bool:
    return len(shape) == len(want) and all(w is None or not isinstance(d, int) or d == w for d, w in zip(shape, want))
