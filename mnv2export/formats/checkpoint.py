"""The checkpoint ``mnv2 train`` writes, as an artifact: PyTorch eager (torchvision's MobileNetV2, BatchNorm not
folded). Not exported (it is the export's source); loaded, described and timed as the ``eager`` row, the reference
every exported file is compared with.

Its description counts MACs with torch's own FLOP counter (:class:`torch.utils.flop_counter.FlopCounterMode`) on one
forward pass of a batch of one image; MACs = FLOPs / 2 (the counter counts a multiply-add as two FLOPs). It counts
convolutions and matrix products, not element-wise work (BatchNorm, ReLU6, additions, pooling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..architecture import BlockRow, LayerRow, ModelSummary
from ..errors import ArtifactError, ConfigError
from ..runtime.runners import TorchRunner
from .base import ArtifactFormat, Description


class CheckpointFormat(ArtifactFormat):
    def load(self, path: Path, provider: str, *, threads: int | None = None, cuda_graph: bool = False) -> TorchRunner:
        ckpt = load_as_artifact(path)
        meta = checkpoint_metadata(ckpt)
        device = torch_device(provider, threads, path)
        module = ckpt.build_model().to(device).eval()
        return torch_runner(self, path, meta, module, device)

    def read_metadata(self, path: Path) -> dict[str, Any]:
        return checkpoint_metadata(load_as_artifact(path))

    def describe(self, path: Path) -> Description:
        runner = self.load(path, "cpu")  # read (and validated) once
        return Description(
            metadata=runner.metadata,
            model=summarize_model(runner.module, [int(v) for v in runner.metadata["input_size"]]),
            params_source="the checkpoint's model parameters (BatchNorm scale and shift included)",
            model_source="the checkpoint's own model",
        )


CHECKPOINT = CheckpointFormat(
    name="eager", kind="pytorch", precision="fp32", file=None, autocast=True, how="`mnv2 train` writes it"
)


def load_as_artifact(p: Path):
    """The checkpoint, its errors said as an artifact's (the commands that load artifacts name the file that way)."""
    from ..checkpoint import load_checkpoint
    from ..errors import CheckpointError

    try:
        return load_checkpoint(p)
    except CheckpointError as exc:
        raise ArtifactError(exc.what, path=p, hint=exc.hint) from None


def checkpoint_metadata(ckpt) -> dict[str, Any]:
    return {**ckpt.metadata(), "format": "pytorch", "precision": "fp32"}


def torch_runner(fmt: ArtifactFormat, path: Path, meta: dict[str, Any], module, device) -> TorchRunner:
    """The runner of a torch module loaded from a file of ``fmt`` onto ``device`` (FP32: eager and TorchScript)."""
    return TorchRunner(
        path=path,
        format=fmt.kind,
        precision=fmt.precision,
        provider=device.type,
        metadata=meta,
        module=module,
        device=device,
    )


def torch_device(provider: str, threads: int | None, p: Path):
    """The torch device a torch-run format loads onto (ProviderUnavailable, with the reason, when CUDA is asked for and
    absent); ``threads`` sets torch's intra-op threads, which is process-wide."""
    if provider == "tensorrt":
        raise ConfigError(
            "the tensorrt provider runs ONNX models only", path=p, hint="use {provider} cuda for PyTorch / TorchScript"
        )
    import torch

    from ..device import resolve_device

    device = resolve_device(provider, flag="--provider")
    if threads is not None:
        torch.set_num_threads(threads)
    return device


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
