"""``describe(path) -> ArtifactInfo``: what a checkpoint or an exported file holds, and what it costs; each format's
module describes its own files (:mod:`mnv2export.formats`).

Parameters (total and per block), multiply-accumulates at the artifact's own input size, a per-layer table (name,
type, output shape, parameters, MACs), the file size, and for exported files the format, precision, opset, input and
output names and shapes, the embedded metadata and the number of quantized nodes.

Where each number comes from (the result says so too, in ``params_source`` and ``model_source``):

- MACs of a checkpoint are counted with torch's own FLOP counter on one forward pass of a batch of one image
  (:func:`mnv2export.formats.checkpoint.summarize_model`); it counts convolutions and matrix products, not element-wise
  work (BatchNorm, ReLU6, additions, pooling).
- The per-block / per-layer tables and the MACs describe the network: for a checkpoint its own model, for TorchScript
  and ONNX files the network the ``model_config`` in the file's metadata describes with its BatchNorm folded into the
  convolutions, as every export is (one bias per BatchNorm channel instead of its scale and shift, no BatchNorm layer),
  computed without torch (:func:`mnv2export.architecture.describe_architecture`, equal to the counter's figures).
  MobileNetV2 1.0 at 224 px with 1000 classes: 3,504,872 parameters, 300.8M MACs.
- ``params`` is one count, that network's: a checkpoint's trainable parameters, an exported file's folded ones. The
  file's weights are checked against it first (by its format's loader, as every command that loads an artifact
  does); an ONNX file's initializers by role (weights and biases, quantization scales / zero points,
  shape constants) are in ``onnx``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .architecture import ModelSummary
from .formats.checkpoint import summarize_model
from .formats.onnx import OnnxGraphInfo, onnx_graph_info

__all__ = ["ArtifactInfo", "OnnxGraphInfo", "describe", "human", "onnx_graph_info", "summarize_model"]

log = logging.getLogger(__name__)


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


def describe(path: str | Path) -> ArtifactInfo:
    """Describe a checkpoint, TorchScript file or ONNX model (FP32, INT8, FP16): each by its own format's module."""
    from .fileio import require_artifact_file

    p = require_artifact_file(path)  # before torch or onnx is imported: a wrong path is said at once

    from .formats import for_file

    fmt = for_file(p)
    d = fmt.describe(p)
    return ArtifactInfo(
        path=p,
        format=fmt.kind,
        precision=str(d.metadata.get("precision", "fp32")),
        file_size=p.stat().st_size,
        params=d.model.params,
        params_source=d.params_source,
        model=d.model,
        model_source=d.model_source,
        metadata=d.metadata,
        onnx=d.graph,
    )


def human(n: float) -> str:
    """3504872 -> '3.50M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
