"""TorchScript: traced from the BatchNorm-folded model, frozen, metadata embedded as an extra file.

The file loads with plain ``torch.jit.load`` (no mnv2export, no torchvision needed). Freezing inlines the weights as
constants of the graph; they are ordinary tensors of the archive, so ``torch.jit.load(path, map_location="cuda")``
puts them on the GPU (the traced MobileNetV2 graph creates no tensors of its own, so nothing stays on the CPU). That
is how :func:`mnv2export.runtime.load_artifact` runs it on CUDA: one file for both devices, moved at load time.

torch 2.14 marks ``torch.jit`` deprecated (FutureWarning) in favour of ``torch.export``; it still works and is what
the issue asks for, so the warning is silenced here and the decision is recorded in the README.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError, first_line
from ..fileio import json_text, write_bytes
from .names import TORCHSCRIPT_METADATA

log = logging.getLogger(__name__)


class _NamedInput(nn.Module):
    """The model with its forward argument named ``input``, as the ONNX graph's input and the metadata's
    ``input_name`` are (torchvision's forward calls it ``x``; tracing keeps the Python argument's name)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the name is the point)
        return self.model(input)


def export_torchscript(
    folded: nn.Module,
    example: torch.Tensor,
    metadata: dict[str, Any],
    out: str | Path,
    *,
    reference: torch.Tensor | None = None,
) -> Path:
    """Trace ``folded`` (eval mode, BatchNorm already folded) on ``example``, freeze it, write it to ``out``, and check
    that the written file answers ``reference`` (``folded(example)``, computed here when not given) on ``example``."""
    out = Path(out)
    folded = folded.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(
                _NamedInput(folded).eval(), example, check_trace=False
            )  # verified below against the eager model
            frozen = torch.jit.freeze(traced)
            _convolutions_follow_torch_flags(frozen.graph)
            buffer = io.BytesIO()  # serialised in memory: writing straight to a full disk aborts the process in C++
            torch.jit.save(frozen, buffer, _extra_files={TORCHSCRIPT_METADATA: json_text(metadata, indent=None)})
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(
            f"TorchScript tracing failed: {first_line(exc)}", path=out, hint="report it with MNV2_DEBUG=1"
        ) from exc
    write_bytes(
        out, buffer.getbuffer()
    )  # a full disk (or a write cut short) is an OSError (ENOSPC) here, reported by the caller
    if reference is None:
        with torch.no_grad():
            reference = folded(example)
    _verify(out, example, reference)
    return out


def _convolutions_follow_torch_flags(graph) -> int:
    """Replace each traced ``aten::_convolution`` (2-D, not transposed) by ``aten::conv2d``; returns how many.

    Tracing records the internal ``aten::_convolution`` with the cuDNN flags of the tracing process as constants
    (benchmark, deterministic, cudnn_enabled, allow_tf32 = True): the file would then use TF32 on CUDA whatever the
    process running it sets, so ``mnv2 check`` could not hold it to FP32 (seen on an H200: max abs diff 0.025 with TF32
    switched off in torch). ``aten::conv2d``, what the eager model calls, reads those flags when it runs, and is the form
    ``torch.jit.optimize_for_inference`` turns into oneDNN convolutions on the CPU. A convolution of another kind keeps
    its node."""
    replaced = 0
    for node in graph.findAllNodes("aten::_convolution"):
        args = list(node.inputs())
        weight, transposed = args[1].toIValue(), args[6].toIValue()
        if transposed is not False or not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            continue
        conv2d = graph.create(
            "aten::conv2d", args[:6] + [args[8]]
        )  # input, weight, bias, stride, padding, dilation, groups
        conv2d.insertBefore(node)
        conv2d.output().setType(node.output().type())
        node.output().replaceAllUsesWith(conv2d.output())
        node.destroy()
        replaced += 1
    torch._C._jit_pass_dce(graph)  # the flag constants left unused
    return replaced


@torch.no_grad()
def _verify(path: Path, example: torch.Tensor, reference: torch.Tensor, atol: float = 1e-4) -> None:
    """Reload the written file and compare its answer on ``example`` with the eager model's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    # the profiling executor spends seconds optimising the first calls; the plain interpreter answers at once
    with torch.jit.optimized_execution(False):
        diff = (loaded(example) - reference).abs().max().item()
    if not diff <= atol * max(1.0, reference.abs().max().item()):
        raise ExportError(
            f"the TorchScript file answers differently from the model (max abs diff {diff:.3g})",
            path=path,
            hint="report it with MNV2_DEBUG=1",
        )
    log.debug("TorchScript verified against the eager model (max abs diff %.2e)", diff)
