"""One way to load and run every artifact: ``load_artifact(path, provider) -> Runner``.

Formats are recognised by content, not by name, and each is loaded by its own module of the format registry
(:mod:`mnv2export.formats`): a checkpoint from ``mnv2 train`` (PyTorch eager), a TorchScript file
(``model.torchscript.pt``) or an ONNX model (FP32, INT8 or FP16; ``model*.onnx``). Every runner takes a float32 NCHW
batch (normalised as the metadata says; see :func:`preprocess`) and returns float32 logits.

Providers: ``cpu``, ``cuda`` and (ONNX only) ``tensorrt``. There is no silent fallback: when a provider is asked for
and cannot be had, :class:`ProviderUnavailable` says why (no GPU or driver, CUDA/cuDNN libraries missing, a
CPU-only onnxruntime build, both onnxruntime and onnxruntime-gpu installed). On CUDA, ONNX Runtime may still place
single nodes it has no CUDA kernel for on the CPU (INT8 QDQ models do this): ``runner.session`` tells which.

What the formats share lives in this package's modules: ``runners`` (the Runner classes), ``metadata`` (the embedded
metadata, checked), ``onnx_model`` (an ONNX file read and checked without a session), ``sessions`` (ONNX Runtime
sessions and providers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .metadata import check_model_config, metadata_value_problems, preprocess
from .onnx_model import QUANT_OPS, check_onnx_signature, onnx_initializer_counts
from .runners import PROVIDERS, OnnxRunner, Runner, TorchRunner, check_load_options
from .sessions import (
    GPU_LIBRARIES,
    ORT_PROVIDERS,
    create_session,
    installed_onnxruntime_packages,
    onnx_provider_problem,
    ort_providers,
    session_failure,
    session_options,
)

__all__ = [
    "GPU_LIBRARIES",
    "ORT_PROVIDERS",
    "PROVIDERS",
    "QUANT_OPS",
    "OnnxRunner",
    "Runner",
    "TorchRunner",
    "check_model_config",
    "check_onnx_signature",
    "create_session",
    "installed_onnxruntime_packages",
    "load_artifact",
    "metadata_value_problems",
    "onnx_initializer_counts",
    "onnx_provider_problem",
    "ort_providers",
    "preprocess",
    "read_metadata",
    "session_failure",
    "session_options",
]


def load_artifact(
    path: str | Path, provider: str = "cpu", *, threads: int | None = None, cuda_graph: bool = False
) -> Runner:
    """Load ``path`` to run on ``provider`` (``cpu``, ``cuda``, ``tensorrt``); ``threads``: intra-op threads
    (ONNX Runtime's session option; for PyTorch ``torch.set_num_threads``, which is process-wide). ``cuda_graph``: an
    ONNX file's session on the CUDA provider with CUDA graphs (:func:`ort_providers`), to be run through I/O binding."""
    from ..formats import for_file

    check_load_options(provider, threads)
    p = Path(path)
    fmt = for_file(p)
    if cuda_graph and not fmt.cuda_graphs:  # before a checkpoint is loaded for nothing
        raise ConfigError(
            f"CUDA graphs are timed for ONNX files only, not {fmt.kind}",
            path=p,
            hint="ask for them with an ONNX artifact",
        )
    return fmt.load(p, provider, threads=threads, cuda_graph=cuda_graph)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an artifact embeds (class names, mean/std, input size, format, precision...), without a session."""
    from ..formats import for_file

    p = Path(path)
    return for_file(p).read_metadata(p)
