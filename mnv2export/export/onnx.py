"""ONNX FP32 export with torch.onnx's torch.export-based ("dynamo") exporter, and the ONNX helpers the INT8 and FP16
steps share (metadata, checks, saving as one self-contained file).

Why the dynamo exporter: since torch 2.9 it is torch.onnx's default and the maintained one; the TorchScript-based
exporter (``dynamo=False``) warns that it is deprecated. It writes opset 18 natively (lower opsets go through a
version converter that fails on this model, so 18 is the lowest we accept) and keeps BatchNorm unless the model is
folded first, which we do; zero ``BatchNormalization`` nodes is asserted on every export.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ExportError, first_line
from ..fileio import json_text, write_bytes
from .names import INPUT_NAME, ONNX_METADATA, OUTPUT_NAME
from .opsets import DEFAULT_OPSET, check_opset

log = logging.getLogger(__name__)


def export_onnx(
    folded: nn.Module, example: torch.Tensor, metadata: dict[str, Any], out: str | Path, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """Export ``folded`` (BatchNorm folded, eval mode) with a dynamic batch axis, check it and write it to ``out``.

    ``example`` must hold at least 2 images: torch.export specialises a dimension of size 1.
    """
    check_opset(opset)
    if example.shape[0] < 2:
        raise ValueError("the example batch needs 2 images or more for a dynamic batch axis")
    batch = torch.export.Dim("batch", min=1)
    try:
        with out_of_place(folded):
            program = torch.onnx.export(
                folded.eval(),
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
                dynamic_shapes=({0: batch},),
            )
        model = program.model_proto
    except Exception as exc:  # noqa: BLE001 - torch.export / onnxscript raise many types
        raise ExportError(
            f"torch.onnx.export failed: {first_line(exc)}", path=out, hint="report it with MNV2_DEBUG=1"
        ) from exc
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version != opset:
        raise ExportError(
            f"the exporter wrote opset {version}, not the {opset} asked for",
            path=out,
            hint=f"use {{opset}} {DEFAULT_OPSET}",
        )
    assert_no_batchnorm(model, out)
    model.doc_string = f"MobileNetV2 ({metadata.get('num_classes')} classes) exported by mnv2export"
    set_metadata(model, metadata)
    check_and_save(model, out)
    return model


@contextmanager
def out_of_place(model: nn.Module) -> Iterator[None]:
    """Switch ``inplace`` off on the activations (torchvision builds ``ReLU6(inplace=True)``) while the model is exported.

    The exporter keeps ``aten.hardtanh`` as it is and writes it as one ``Clip``; the in-place ``aten.hardtanh_`` must
    first be functionalised and goes through torch's reference decomposition (``clamp`` with symbolic shapes for the
    dynamic batch): the 224 px export took 10.2 s that way against 5.5 s, for the same graph (benchmarks/RESULTS.md,
    "Export time"). The attributes are restored afterwards, also on an error.
    """
    switched = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in switched:
        m.inplace = False
    try:
        yield
    finally:
        for m in switched:
            m.inplace = True


def assert_no_batchnorm(model: onnx.ModelProto, path: str | Path | None = None) -> None:
    n = op_count(model, "BatchNormalization")
    if n:
        raise ExportError(
            f"the ONNX graph holds {n} BatchNormalization node(s) after folding",
            path=path,
            hint="report it with MNV2_DEBUG=1",
        )


def op_count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for node in model.graph.node if node.op_type == op_type)


def drop_unused_domains(model: onnx.ModelProto) -> list[str]:
    """Remove the operator-set imports of domains no node uses (the default domain always stays); returns them.

    ONNX Runtime's ``quant_pre_process`` saves through an ORT session, which declares every domain ORT knows
    (``com.microsoft.nchwc``, ``ai.onnx.training``, ``org.pytorch.aten``, ...); other runtimes and converters need not
    know those domains, and the INT8 graph uses none of them."""

    def used(nodes) -> set[str]:
        out = set()
        for node in nodes:
            out.add(node.domain)
            for attr in node.attribute:  # control-flow subgraphs (none in MobileNetV2, but a graph may hold them)
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    out |= used(g.node)
        return out

    keep = used(model.graph.node) | {"", "ai.onnx"}
    for f in model.functions:
        keep |= {f.domain} | used(f.node)
    dropped = [o.domain for o in model.opset_import if o.domain not in keep]
    kept = [o for o in model.opset_import if o.domain in keep]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return dropped


def set_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Put ``metadata`` (JSON) into ``metadata_props`` under :data:`ONNX_METADATA`, replacing an earlier value."""
    keep = [p for p in model.metadata_props if p.key != ONNX_METADATA]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    prop = model.metadata_props.add()
    prop.key, prop.value = ONNX_METADATA, json_text(metadata, indent=None)


def get_metadata(model: onnx.ModelProto) -> dict[str, Any] | None:
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA:
            return json.loads(prop.value)
    return None


def check_and_save(model: onnx.ModelProto, out: str | Path) -> None:
    """``onnx.checker`` full check (with shape inference), then one self-contained file (no external data), whose size
    is checked: a write cut short is an ``OSError(ENOSPC)`` (a full disk), reported by the caller."""
    if model.ByteSize() >= 2**31 - 1:
        raise ExportError(
            "the ONNX model is over 2 GB and would need external data",
            path=out,
            hint="this tool exports MobileNetV2 only",
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"the ONNX model fails onnx.checker: {first_line(exc)}", path=out, hint="report it with MNV2_DEBUG=1"
        ) from exc
    write_bytes(out, model.SerializeToString())  # what onnx.save_model writes for a model without external data


def toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` topologically (in place); converters that append nodes at the end need it."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(
                f"the ONNX graph has a cycle or a dangling input at node {rest[0].name!r}",
                hint="report it with MNV2_DEBUG=1",
            )
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def verify_with_ort(
    path: str | Path, x: np.ndarray, reference: np.ndarray, *, rtol: float, atol: float, what: str
) -> float:
    """Run the written file with ONNX Runtime (CPU) on ``x``; ExportError when it is not close to ``reference``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(
            f"ONNX Runtime cannot run the {what} model: {first_line(exc)}",
            path=path,
            hint="report it with MNV2_DEBUG=1",
        ) from exc
    diff = float(np.abs(got.astype(np.float32) - reference).max())
    if not np.allclose(got, reference, rtol=rtol, atol=atol):
        raise ExportError(
            f"the {what} model answers differently from PyTorch (max abs diff {diff:.3g})",
            path=path,
            hint="report it with MNV2_DEBUG=1",
        )
    return diff
