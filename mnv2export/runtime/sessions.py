"""ONNX Runtime sessions on a provider, with no silent fallback: :func:`create_session` checks the provider it really
got, and :func:`onnx_provider_problem` / :func:`session_failure` say why a GPU provider cannot be had."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError, ProviderUnavailable, first_line
from .onnx_model import check_onnx_model, load_onnx_model
from .runners import NO_GPU_HINT, PROVIDERS

log = logging.getLogger(__name__)

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def session_options(threads: int | None = None):
    """ONNX Runtime session options used for every artifact: all graph optimisations, quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def ort_providers(provider: str, *, cuda_graph: bool = False) -> list[Any]:
    """The ``providers`` argument of an ONNX Runtime session on ``provider``: ``ORT_PROVIDERS[provider]``, with the
    CUDA provider's ``use_tf32`` option off while ``NVIDIA_TF32_OVERRIDE=0`` is set (as ``mnv2 check`` sets it).

    cuBLAS and cuDNN read that variable once, when the process first loads them, so it cannot switch TF32 off for a
    process that has already run a CUDA session; the provider option applies to each new session.

    ``cuda_graph``: the CUDA provider's ``enable_cuda_graph`` (its first run captures the kernels into a CUDA graph,
    later runs replay it). ONNX Runtime's conditions: every node on the CUDA provider, one input shape per session,
    inputs and outputs bound to fixed device buffers (``run_with_iobinding``)."""
    if cuda_graph and provider != "cuda":
        raise ConfigError(
            f"CUDA graphs were asked for on the {provider} provider", hint="CUDA graphs run on {provider} cuda only"
        )
    cuda: dict[str, str] = {}
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        cuda["use_tf32"] = "0"
    if cuda_graph:
        cuda["enable_cuda_graph"] = "1"
    return [(n, dict(cuda)) if n == "CUDAExecutionProvider" and cuda else n for n in ORT_PROVIDERS[provider]]


def create_session(
    path: str | Path,
    provider: str = "cpu",
    *,
    threads: int | None = None,
    options=None,
    model=None,
    cuda_graph: bool = False,
):
    """A checked ONNX Runtime session for ``path`` on ``provider``: (session, provider obtained).

    The file is parsed (unless ``model``, its already parsed ``onnx.ModelProto``, is given) and checked with ``onnx``
    first, so a damaged file is an :class:`ArtifactError`. ``cuda_graph``: see :func:`ort_providers`; a model ONNX
    Runtime will not capture (a node off the CUDA provider) is :class:`ProviderUnavailable` with its reason.
    """
    import onnxruntime as ort

    p = Path(path)
    if model is None:
        load_onnx_model(p)
    else:
        check_onnx_model(model, p)
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}", hint=f"choose one of {', '.join(PROVIDERS)}")
    providers = ort_providers(provider, cuda_graph=cuda_graph)
    wanted = ORT_PROVIDERS[provider][0]
    if provider != "cpu":
        reason = onnx_provider_problem(provider)
        if reason:
            raise ProviderUnavailable(f"{provider.upper()} was asked for but {reason}", path=p, hint=NO_GPU_HINT)
        _preload_cuda_libraries()
    # ONNX Runtime logs a provider's failure on fd 2, and its Python wrapper prints an "EP Error" banner on stdout
    # before falling back (which is caught below): both go into the reason, neither onto the user's stdout
    with _captured_stderr() as captured, contextlib.redirect_stdout(captured):
        try:
            session = ort.InferenceSession(str(p), options or session_options(threads), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            text = str(exc).strip().splitlines()
            if cuda_graph and "graph capture" in str(exc):
                raise ProviderUnavailable(
                    f"ONNX Runtime does not capture this model in a CUDA graph: {first_line(exc)}",
                    path=p,
                    hint="CUDA graphs need every node on the CUDA provider (an INT8 model keeps some on the CPU)",
                ) from None
            raise ArtifactError(
                f"ONNX Runtime cannot load the model: {text[0] if text else type(exc).__name__}",
                path=p,
                hint="export it again with `mnv2 export`",
            ) from None
    got = session.get_providers()
    if wanted not in got:
        raise ProviderUnavailable(
            f"{provider.upper()} was asked for but {session_failure(captured.getvalue())}", path=p, hint=NO_GPU_HINT
        )
    if captured.getvalue().strip():
        log.debug("onnxruntime: %s", captured.getvalue().strip())
    return session, provider


# torch's nvidia-* wheels bring the CUDA and cuDNN libraries; an install without torch takes onnxruntime-gpu's own
GPU_LIBRARIES = 'install torch (the train extra) or the gpu extra (python -m pip install -e ".[gpu]")'


def installed_onnxruntime_packages() -> set[str]:
    """Names of the installed onnxruntime distributions (onnxruntime, onnxruntime-gpu, ...), lower case."""
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return {n for n in names if n.startswith("onnxruntime") and not n.startswith("onnxruntime-extensions")}


def onnx_provider_problem(
    provider: str, *, installed: set[str] | None = None, available: list[str] | None = None
) -> str | None:
    """Why ``provider`` cannot work with the installed onnxruntime, known before creating a session (or None).

    ``installed`` (package names) and ``available`` (``onnxruntime.get_available_providers()``) default to this
    environment's."""
    import onnxruntime as ort

    installed = installed_onnxruntime_packages() if installed is None else installed
    available = ort.get_available_providers() if available is None else available
    builds = installed - {"onnxruntime"}
    if "onnxruntime" in installed and builds:
        return (
            f"both onnxruntime and {', '.join(sorted(builds))} are installed and shadow each other "
            "(`pip uninstall onnxruntime onnxruntime-gpu`, then `pip install onnxruntime-gpu`)"
        )
    name = ORT_PROVIDERS[provider][0]
    if name not in available:
        package = ", ".join(sorted(installed)) or "onnxruntime"
        return f"this onnxruntime build ({package} {ort.__version__}) has no {name} (install onnxruntime-gpu)"
    return None


def session_failure(log_text: str, *, has_device: bool | None = None) -> str:
    """Turn what ONNX Runtime logged while it failed to register a GPU provider into one reason."""
    has_device = _has_nvidia_device() if has_device is None else has_device
    missing = None
    for line in log_text.splitlines():
        if "cannot open shared object file" in line:
            missing = line.split("with error:")[-1].split(":")[0].strip()
            break
    if (missing and missing.startswith("libcuda.so")) or not has_device:
        return "no NVIDIA GPU driver was found on this machine (no /dev/nvidia*, or libcuda.so.1 missing)"
    if missing:
        need = re.search(r"Require (.+?)\. ", log_text)
        return (
            f"the CUDA libraries it needs are missing ({missing} not found"
            f"{'; it requires ' + need.group(1) if need else ''}): {GPU_LIBRARIES}"
        )
    first = next((ln.strip() for ln in log_text.splitlines() if "Failed" in ln or "rror" in ln), "")
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)[:300]  # no terminal colour codes
    return f"ONNX Runtime did not register it ({first or 'no reason logged'})"


def _has_nvidia_device() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/proc/driver/nvidia/version").exists()


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu's own loader for the CUDA/cuDNN libraries of the nvidia-* wheels (torch's, or those of
    onnxruntime-gpu's cuda and cudnn extras, which the gpu extra installs)."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - best effort; the session check below reports what matters
            log.debug("onnxruntime.preload_dlls failed: %r", exc)
        if out.getvalue().strip():
            log.debug("onnxruntime.preload_dlls: %s", out.getvalue().strip())


@contextlib.contextmanager
def _captured_stderr():
    """Capture what native code writes to file descriptor 2 (ONNX Runtime logs provider failures there)."""
    buffer = io.StringIO()
    try:
        fd = os.dup(2)
    except OSError:  # no usable stderr: nothing to capture
        yield buffer
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            import sys

            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            yield buffer
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            tmp.seek(0)
            buffer.write(tmp.read().decode("utf-8", "replace"))
