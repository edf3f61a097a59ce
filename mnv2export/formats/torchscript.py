"""TorchScript (``model.torchscript.pt``): traced from the BatchNorm-folded model and frozen
(:mod:`mnv2export.export.torchscript` writes it), metadata embedded as an extra file of the archive. It runs on CUDA by
loading the file with ``map_location`` (freezing made the weights graph constants, which ``map_location`` moves too).

Served (``mnv2 bench``) on the CPU after ``torch.jit.optimize_for_inference``: PyTorch's own step for a frozen module
served on the CPU (every convolution becomes ``prim::mkldnn_convolution`` with weights prepacked once, activations
kept in oneDNN's blocked layout); without it the file runs ``aten::conv2d`` op by op (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, first_line
from ..export.names import INPUT_NAME, TORCHSCRIPT_METADATA
from ..layout import TORCHSCRIPT_FILE
from ..runtime.metadata import check_model_config, parse_metadata
from ..runtime.runners import TorchRunner
from .base import ArtifactFormat, Description, ExportJob, folded_description
from .checkpoint import torch_device, torch_runner

log = logging.getLogger(__name__)


class TorchScriptFormat(ArtifactFormat):
    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        from ..export.torchscript import export_torchscript

        export_torchscript(job.folded, job.example, job.metadata(self), out, reference=job.reference[:2])
        return {
            "method": "torch.jit.trace + torch.jit.freeze (eval, BatchNorm folded)",
            "device": "cpu (load with map_location to move it)",
        }

    def load(self, path: Path, provider: str, *, threads: int | None = None, cuda_graph: bool = False) -> TorchRunner:
        meta = self.read_metadata(path)
        device = torch_device(provider, threads, path)
        module = _jit_load(path, device)
        check_torchscript_signature(module, meta, path)
        check_model_config(meta, torchscript_constants(module)[1], path)
        return torch_runner(self, path, meta, module, device)

    def read_metadata(self, path: Path) -> dict[str, Any]:
        with zipfile.ZipFile(path) as z:  # an extra file of the archive
            entry = next((n for n in z.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_METADATA}")), None)
            raw = z.read(entry) if entry else None
        return parse_metadata(raw, path, self.kind)

    def describe(self, path: Path) -> Description:
        return folded_description(self.load(path, "cpu").metadata)  # loaded to check the file against its metadata

    def for_serving(self, runner: TorchRunner) -> TorchRunner:
        if runner.device.type == "cpu":
            import torch

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14 but works
                runner.module = torch.jit.optimize_for_inference(runner.module)
        return runner


TORCHSCRIPT = TorchScriptFormat(
    name="torchscript",
    autocast=True,
    kind="torchscript",
    precision="fp32",
    file=TORCHSCRIPT_FILE,
    group="torchscript",
    exporter="torch.jit.trace + torch.jit.freeze",
)


def _jit_load(p: Path, device):
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14 but works
            return torch.jit.load(str(p), map_location=device).eval()
    except (RuntimeError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(
            f"TorchScript file cannot be loaded: {first_line(exc)}",
            path=p,
            hint="the file is truncated or damaged; export it again",
        ) from None


def torchscript_constants(module) -> tuple[int, int]:
    """Parameters of a frozen TorchScript module: its state dict plus the tensor constants folded into the graph; and
    of those, the elements of tensors of rank 2 or more (the kernels)."""
    tensors = list(module.state_dict().values())
    for node in module.graph.nodes():
        out = node.output() if node.outputsSize() == 1 else None
        if node.kind() == "prim::Constant" and out is not None and out.type().kind() == "TensorType":
            tensors.append(out.toIValue())
    return sum(t.numel() for t in tensors), sum(t.numel() for t in tensors if t.dim() >= 2)


def check_torchscript_signature(module, meta: dict[str, Any], p: Path) -> None:
    """A TorchScript file's ``forward`` takes one tensor (an :class:`ArtifactError` otherwise). Its name should be the
    metadata's ``input_name`` (a caller may pass the input by name): files exported before the name was set call it
    ``x`` (torchvision's argument); they run as before, with a warning for whoever calls them by name. The input size
    is not in the program (any size runs): the metadata's is taken."""
    args = [a.name for a in module.forward.schema.arguments if a.name != "self"]
    want = meta.get("input_name", INPUT_NAME)
    if len(args) != 1:
        raise ArtifactError(
            f"TorchScript program does not match its metadata: forward takes {args} (the metadata says one input "
            f"named {want!r})",
            path=p,
            hint="export the model again with `mnv2 export`",
        )
    if args[0] != want:
        log.warning(
            "%s: forward's input is named %r, its metadata says %r (an older export): pass the input by position, "
            "or export the model again",
            p,
            args[0],
            want,
        )
