"""The one interface every artifact format implements, and what an export hands each format.

A format is an :class:`ArtifactFormat`: what it is (its registry name, which is also its ``mnv2 bench`` row, its file
name, the ``format`` and ``precision`` its metadata records, the export options that ask for it, what it needs
installed) and what it does, in four methods: ``export(job, out) -> export_settings`` (the manifest entry's),
``load(path, provider) -> Runner``, ``read_metadata(path)`` and ``describe(path) -> Description``. Light to import:
torch, onnx and ONNX Runtime are imported inside the methods, so the registry answers on a runtime-only install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..architecture import ModelSummary


@dataclass(frozen=True)
class ExportOptions:
    """``mnv2 export``'s options, checked (:func:`mnv2export.export.check_export_options`)."""

    groups: tuple[str, ...]  # the --format items asked for: "torchscript", "onnx"
    quantize: bool = False
    fp16: bool = False
    calib_data: str | None = None
    calib_size: int = 256
    calib_method: str = "minmax"
    opset: int = 18
    device: str = "cpu"  # what a .pt2 is compiled for: cpu or cuda
    skipped: tuple[tuple[str, str], ...] = ()  # (group, why): brought by `all` but not installed here

    def switched_on(self, option: str | None) -> bool:
        """Whether a format behind ``option`` (None: always with its group) is asked for."""
        return option is None or bool(getattr(self, option))


@dataclass
class ExportJob:
    """Everything a format's exporter reads: the model once, folded and checked, and what its file must answer."""

    folded: Any  # nn.Module, eval mode, BatchNorm folded into the convolutions
    inputs: Any  # torch.Tensor N x 3 x H x W: real images through the checkpoint's preprocessing
    reference: Any  # torch.Tensor: folded(inputs), what every FP32 artifact must answer on `inputs`
    base_metadata: dict[str, Any]  # what every artifact embeds (class names, preprocessing, model_config...)
    options: ExportOptions
    calib: Any = None  # export.calib.CalibrationSet when INT8 is asked for
    written: dict[str, Path] = field(default_factory=dict)  # format name -> its (temporary) file, written so far

    @property
    def example(self) -> Any:
        """Two images: torch.export specialises a batch dimension of size 1."""
        return self.inputs[:2]

    def metadata(self, fmt: ArtifactFormat) -> dict[str, Any]:
        """The metadata ``fmt``'s file embeds."""
        opset = self.options.opset if fmt.uses_opset else None
        return {
            **self.base_metadata,
            "format": fmt.kind,
            "precision": fmt.precision,
            "opset": opset,
            "exporter": fmt.exporter,
        }


@dataclass
class Description:
    """What ``mnv2 info`` shows of a file, from its format."""

    metadata: dict[str, Any]
    model: ModelSummary  # parameters, MACs, blocks and layers
    params_source: str  # where the parameter count comes from, in words
    model_source: str  # where the network's tables come from, in words
    graph: Any = None  # the format's own details (ONNX: formats.onnx.OnnxGraphInfo)


@dataclass(frozen=True)
class ArtifactFormat:
    """One artifact format. Subclasses implement export, load and read_metadata (and describe where the metadata's
    network is not all there is to show); the fields say where it fits."""

    name: str  # registry key and `mnv2 bench` row: eager, torchscript, onnx, int8, fp16
    kind: str  # what the file is (filekind.detect_format) and its metadata's "format": pytorch, torchscript, onnx
    precision: str  # fp32, int8, fp16
    file: str | None  # the name an export writes (mnv2export.layout); None: the checkpoint itself, not exported
    family: str = "torch"  # the engine that runs it: torch, onnx (ONNX Runtime) or executorch
    group: str | None = None  # the export --format item that writes it (torchscript, onnx)
    option: str | None = None  # the export option that asks for it besides its group (quantize, fp16)
    after: str | None = None  # the format whose file it is made from, written first (int8 and fp16: onnx)
    exporter: str | None = None  # how it is made, recorded in its metadata
    uses_opset: bool = False
    toolchain: tuple[str, ...] = ()  # modules whose versions the manifest records beside torch's
    cuda_graphs: bool = False  # whether `load(cuda_graph=True)` can run it in a CUDA graph
    autocast: bool = False  # whether `mnv2 bench --amp` also times it under torch.autocast (a +amp row)
    modules: tuple[str, ...] = ()  # modules it needs beyond the base install (executorch...)
    extra: str | None = None  # the pip extra that brings them (mobile...)
    how: str = "`mnv2 export` writes it"  # how to get a file of it, for a row that has none
    memory_factor: float = 2.0  # its runtime's peak over the eager activations, with a margin (bench.memory)
    # whether `bench --formats all` has its rows where the target holds no file of it (pt2, executorch: only where it
    # does, as `mnv2 export` writes them only when asked)
    benched_when_absent: bool = True

    def unavailable(self) -> str | None:
        """Why this format cannot be written or run here (a module missing), in one line, or None."""
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if not missing:
            return None
        extra = f': install it with python -m pip install -c constraints.txt -e ".[{self.extra}]"' if self.extra else ""
        return f"the {self.name} format needs {', '.join(missing)}, which this install lacks{extra}"

    def sniff(self, path: Path) -> bool:
        """Whether ``path`` is a file of this format, for a format :func:`mnv2export.filekind.detect_format` does not
        know (it tells checkpoints, TorchScript and ONNX apart). Cheap: it runs on every file before that."""
        return False

    # ---------------------------------------------------------------------------------------------- the interface
    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        """Write this format's file to ``out`` from ``job``, verified; returns the manifest entry's export_settings."""
        raise NotImplementedError(f"{self.name} is not written by an export")

    def load(self, path: Path, provider: str, *, threads: int | None = None, cuda_graph: bool = False) -> Any:
        """A :class:`mnv2export.runtime.Runner` for ``path`` on ``provider``, checked against its metadata."""
        raise NotImplementedError

    def read_metadata(self, path: Path) -> dict[str, Any]:
        """The metadata the file embeds, checked, without running anything."""
        raise NotImplementedError

    def describe(self, path: Path) -> Description:
        """What ``mnv2 info`` shows: by default the network its metadata's model_config describes, BatchNorm folded
        (formats that can say more, or must load the file to check it, override this)."""
        return folded_description(self.read_metadata(path))

    def for_serving(self, runner: Any) -> Any:
        """``runner`` prepared for many calls (what ``mnv2 bench`` times); most formats need nothing more."""
        return runner


def folded_description(meta: dict[str, Any], graph: Any = None) -> Description:
    """An exported file's network, from the model_config in its metadata with BatchNorm folded as every export folds
    it (one bias per channel instead of a scale and a shift, no BatchNorm layer); its loader checked that the file's
    weights are this network's."""
    from ..architecture import describe_architecture
    from ..config import ModelConfig

    input_size = [int(v) for v in meta["input_size"]]
    return Description(
        metadata=meta,
        model=describe_architecture(ModelConfig.from_dict(meta["model_config"]), input_size, folded=True),
        params_source="the BatchNorm-folded model (convolution kernels and biases, the classifier)",
        model_source="the model_config in the file's metadata, BatchNorm folded as in every export",
        graph=graph,
    )
