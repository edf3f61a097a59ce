"""``describe(path) -> ArtifactInfo``: what a checkpoint or an exported file holds, and what it costs.

Parameters (total and per block), multiply-accumulates at the artifact's own input size, a per-layer table (name,
type, output shape, parameters, MACs), the file size, and for exported files the format, precision, opset, input and
output names and shapes, the embedded metadata and the number of quantized nodes.

Where each number comes from (the result says so too, in ``params_source`` and ``model_source``):

- MACs of a checkpoint are counted with torch's own FLOP counter (:class:`torch.utils.flop_counter.FlopCounterMode`)
  on one forward pass of a batch of one image; MACs = FLOPs / 2 (the counter counts a multiply-add as two FLOPs). It
  counts convolutions and matrix products, not element-wise work (BatchNorm, ReLU6, additions, pooling).
- The per-block / per-layer tables and the MACs describe the network: for a checkpoint its own model, for TorchScript
  and ONNX files the network the ``model_config`` in the file's metadata describes with its BatchNorm folded into the
  convolutions, as every export is (one bias per BatchNorm channel instead of its scale and shift, no BatchNorm layer),
  computed without torch (:func:`mnv2export.architecture.describe_architecture`, equal to the counter's figures).
  MobileNetV2 1.0 at 224 px with 1000 classes: 3,504,872 parameters, 300.8M MACs.
- ``params`` is one count, that network's: a checkpoint's trainable parameters, an exported file's folded ones. The
  file's weights are checked against it first (:func:`mnv2export.runtime.validate_artifact`, as every command that
  loads an artifact does); an ONNX file's initializers by role (weights and biases, quantization scales / zero points,
  shape constants) are in ``onnx``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .architecture import BlockRow, LayerRow, ModelSummary
from .runtime import QUANT_OPS

log = logging.getLogger(__name__)


@dataclass
class OnnxGraphInfo:
    opset: int | None
    ir_version: int
    producer: str
    inputs: list[dict[str, Any]]  # name, dtype, shape (a dimension is an int or its symbolic name)
    outputs: list[dict[str, Any]]
    nodes: int
    op_counts: dict[str, int]
    quantized_nodes: dict[str, int]  # QuantizeLinear / DequantizeLinear / QLinear* / *Integer -> count
    weight_elements: int  # weights and biases (float or integer)
    kernel_elements: int  # of those, the ones of rank 2 or more (convolution and linear kernels)
    quant_param_elements: int  # scales and zero points of the Q/DQ nodes
    other_constant_elements: int  # int64 shape constants, clip bounds and the like

    @property
    def quantized_total(self) -> int:
        return sum(self.quantized_nodes.values())


@dataclass
class ArtifactInfo:
    path: Path
    format: str  # pytorch, torchscript, onnx
    precision: str
    file_size: int
    params: int
    params_source: str
    model: ModelSummary
    model_source: str
    metadata: dict[str, Any] = field(repr=False)
    onnx: OnnxGraphInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        if self.onnx is not None:
            d["onnx"]["quantized_total"] = self.onnx.quantized_total
        return d


# --------------------------------------------------------------------------------------------------- the network
def summarize_model(model, input_size: list[int] | tuple[int, int, int]) -> ModelSummary:
    """Parameters, MACs and output shapes of ``model`` (an ``nn.Module``) for one image of ``input_size``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    shapes: dict[str, list[int]] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, list(out.shape)))
        for name, m in model.named_modules()
        if name
    ]
    try:
        with FlopCounterMode(display=False, depth=None) as counter, torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
    root = type(model).__name__
    macs_by_module = {
        (key.removeprefix(root).removeprefix(".")): sum(ops.values()) // 2
        for key, ops in counter.get_flop_counts().items()
        if key != "Global"
    }
    layers = [
        LayerRow(name, type(m).__name__, shapes.get(name, []), _param_count(m), macs_by_module.get(name, 0))
        for name, m in model.named_modules()
        if name and not list(m.children()) and type(m).__name__ != "Identity"  # a folded BatchNorm
    ]
    blocks = [
        BlockRow(name, _describe_block(name, m), shapes.get(name, []), _param_count(m), macs_by_module.get(name, 0))
        for name, m in _blocks(model)
    ]
    kernels = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    return ModelSummary(
        input_size=list(input_size),
        params=_param_count(model),
        macs=int(counter.get_total_flops()) // 2,
        blocks=blocks,
        layers=layers,
        kernel_params=kernels,
    )


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _blocks(model) -> list[tuple[str, Any]]:
    """MobileNetV2's blocks: each entry of ``features``, then the classifier."""
    features = getattr(model, "features", None)
    if features is None:
        return [(name, m) for name, m in model.named_children()]
    out = [(f"features.{i}", m) for i, m in enumerate(features)]
    out += [(name, m) for name, m in model.named_children() if name != "features"]
    return out


def _describe_block(name: str, m) -> str:
    from torch import nn

    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    if type(m).__name__ == "InvertedResidual":
        first, last = convs[0], convs[-1]
        expand = convs[1].in_channels // first.in_channels if len(convs) == 3 else 1
        stride = max(c.stride[0] for c in convs)
        res = ", residual" if getattr(m, "use_res_connect", False) else ""
        return f"inverted residual {first.in_channels}->{last.out_channels}, expand {expand}, stride {stride}{res}"
    if convs:
        c = convs[0]
        return f"conv {c.kernel_size[0]}x{c.kernel_size[1]} {c.in_channels}->{c.out_channels}, stride {c.stride[0]}"
    linear = [c for c in m.modules() if isinstance(c, nn.Linear)]
    if linear:
        return f"dropout + linear {linear[0].in_features}->{linear[0].out_features}"
    return type(m).__name__


# --------------------------------------------------------------------------------------------------- the files
def describe(path: str | Path) -> ArtifactInfo:
    """Describe a checkpoint, TorchScript file or ONNX model (FP32, INT8, FP16)."""
    from .fileio import require_artifact_file

    p = require_artifact_file(path)  # before torch or onnx is imported: a wrong path is said at once

    from .architecture import describe_architecture
    from .config import ModelConfig
    from .filekind import detect_format
    from .runtime import _load_onnx_model, _onnx_metadata, load_artifact, validate_artifact

    kind = detect_format(p)
    runner = onnx_model = None
    if kind == "onnx":  # parsed once, checked as load_artifact checks it, without a session
        onnx_model = _load_onnx_model(p)
        meta = _onnx_metadata(onnx_model, p)
        validate_artifact(kind, p, meta, onnx_model=onnx_model)
    else:
        runner = load_artifact(p, "cpu")  # a checkpoint or TorchScript file is read (and validated) once
        meta = runner.metadata
    input_size = [int(v) for v in meta["input_size"]]
    onnx_info = None
    if kind == "pytorch":
        summary = summarize_model(runner.module, input_size)  # type: ignore[union-attr]
        params_source = "the checkpoint's model parameters (BatchNorm scale and shift included)"
        model_source = "the checkpoint's own model"
    else:
        # the network as the file holds it: BatchNorm folded into the convolutions (one bias per channel instead of a
        # scale and a shift, and no BatchNorm layer); validate_artifact checked the file's weights are this network's
        summary = describe_architecture(ModelConfig.from_dict(meta["model_config"]), input_size, folded=True)
        model_source = "the model_config in the file's metadata, BatchNorm folded as in every export"
        params_source = "the BatchNorm-folded model (convolution kernels and biases, the classifier)"
        if kind == "onnx":
            onnx_info = onnx_graph_info(onnx_model)
    return ArtifactInfo(
        path=p,
        format=kind,
        precision=str(meta.get("precision", "fp32")),
        file_size=p.stat().st_size,
        params=summary.params,
        params_source=params_source,
        model=summary,
        model_source=model_source,
        metadata=meta,
        onnx=onnx_info,
    )


def onnx_graph_info(source) -> OnnxGraphInfo:
    """Opset, inputs / outputs, op counts, quantized nodes and initializer sizes of an ONNX file (a path, or the
    ``onnx.ModelProto`` already read from it)."""
    from .runtime import _load_onnx_model, onnx_initializer_counts

    model = _load_onnx_model(Path(source), check=False) if isinstance(source, (str, Path)) else source
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops = Counter(n.op_type for n in graph.node)
    quantized = {
        op: n for op, n in sorted(ops.items()) if op in QUANT_OPS or op.startswith("QLinear") or op.endswith("Integer")
    }
    counts = onnx_initializer_counts(model)
    initializers = {i.name for i in graph.initializer}
    return OnnxGraphInfo(
        opset=opset,
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_value_info(v) for v in graph.input if v.name not in initializers],
        outputs=[_value_info(v) for v in graph.output],
        nodes=len(graph.node),
        op_counts=dict(ops.most_common()),
        quantized_nodes=quantized,
        weight_elements=counts["weights"],
        kernel_elements=counts["kernels"],
        quant_param_elements=counts["quant"],
        other_constant_elements=counts["other"],
    )


def _value_info(v) -> dict[str, Any]:
    import onnx

    from .runtime import _dims

    dims = ["?" if d is None else d for d in _dims(v)]
    return {
        "name": v.name,
        "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
        "shape": dims,
    }


def human(n: float) -> str:
    """3504872 -> '3.50M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
