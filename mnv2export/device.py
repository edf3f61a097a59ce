"""Device selection for torch: ``auto`` prefers CUDA; an explicit ``cuda`` where there is none is an error.

torch is imported inside the functions that use it: the thread-count warnings serve ONNX-only commands too, which
run on an install without torch."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import os
from typing import TYPE_CHECKING

from .errors import ConfigError, ProviderUnavailable

DEVICES = ("auto", "cuda", "cpu")
# the install that brings torch (and the rest of the train extra) to a runtime-only install
TRAIN_INSTALL = 'python -m pip install -c constraints.txt -e ".[train]"'
NO_TORCH = f"torch is not installed (a runtime-only install runs ONNX files; install the train extra: {TRAIN_INSTALL})"
log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch


def torch_installed() -> bool:
    """Whether torch can be imported here, asked without importing it."""
    return importlib.util.find_spec("torch") is not None


def usable_cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_warned_once: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar(
    "mnv2_oversubscription_warned", default=None
)


def warn_if_oversubscribed(threads: int | None, setting: str = "--threads") -> None:
    """A warning when more intra-op threads are asked for than there are CPUs to run them: torch's and ONNX Runtime's
    threads then wait for one another at every parallel region (many times slower, never faster). ``setting``: where
    the count comes from, as the warning names it. Inside :func:`warn_oversubscription_once`, a count is warned about
    once."""
    cpus = usable_cpu_count()
    if threads and threads > cpus:
        warned = _warned_once.get()
        if warned is not None:
            if threads in warned:
                return
            warned.add(threads)
        log.warning(
            "%d intra-op threads on %d usable CPU(s): more threads than CPUs slow torch and ONNX Runtime down; "
            "set %s to %d or fewer",
            threads,
            cpus,
            setting,
            cpus,
        )


@contextlib.contextmanager
def warn_oversubscription_once():
    """Within: one oversubscription warning per thread count (a command whose steps each set the same --threads)."""
    token = _warned_once.set(set())
    try:
        yield
    finally:
        _warned_once.reset(token)


def cuda_unavailable_reason() -> str | None:
    """Why torch cannot use CUDA here, or None when it can."""
    import torch

    if not torch.backends.cuda.is_built():
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU (no device, or no working driver)"
    return None


def resolve_device(device: str, local_rank: int = 0, *, flag: str = "--device") -> torch.device:
    """``auto``, ``cuda`` or ``cpu`` as a torch device; ``flag`` is the option the hints name (``--provider`` for
    artifacts)."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}", hint=f"choose one of {', '.join(DEVICES)}")
    import torch

    if device == "cpu":
        return torch.device("cpu")
    reason = cuda_unavailable_reason()
    if reason is None:
        return torch.device("cuda", local_rank)
    if device == "cuda":
        raise ProviderUnavailable(
            f"CUDA was asked for but {reason}", hint=f"run on a machine with an NVIDIA GPU, or pass {flag} cpu"
        )
    return torch.device("cpu")


@contextlib.contextmanager
def cpu_threads(n: int):
    """Use ``n`` intra-op threads inside the block (0: leave torch's setting), then restore the previous count.

    With other processes on the cores, OpenMP threads that spin at barriers can slow a step down several times
    (width 0.5 at 28 px on the shared 2-core machine: 87 img/s with 2 threads, 283 img/s with 1): one thread for the
    model and a loader worker on the other core is the robust split there.
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
