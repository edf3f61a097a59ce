"""What the numbers were measured on (CPU model, physical cores, GPU, versions) and how much memory a row took.

Host memory is the process's resident set size (RSS), which counts native allocations (ONNX Runtime's arenas,
oneDNN scratch buffers, torch's CPU tensors) that ``tracemalloc`` never sees. On Linux the kernel keeps the RSS
high-water mark (``VmHWM`` in ``/proc/self/status``) and resets it to the current RSS when ``5`` is written to
``/proc/self/clear_refs``: each row resets it before it loads its model and reads it when its timed loop ends, so
the figure is the row's true peak, however short the spike. Where that is impossible the peak falls back to
``getrusage`` (``ru_maxrss``, the whole process's lifetime peak) and the method says so.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MB = 1024 * 1024


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once); os.cpu_count() where the
    topology cannot be read."""
    cores = set()
    for cpu in usable_cpus():
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip())
            )
        except OSError:
            return len(usable_cpus())
    return len(cores) or (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.split(":")[0].strip() in ("model name", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, threads used, GPU name, versions (torch, onnxruntime, mnv2export...)."""
    import numpy
    import onnxruntime

    from .. import __version__

    torch = sys.modules.get("torch")  # there when a torch row ran; an ONNX-only sweep never imports it
    cuda = torch is not None and torch.cuda.is_available()
    return {
        "cpu_model": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": len(usable_cpus()),
        "threads": threads,
        "gpu": _torch_gpu(torch) if cuda else _smi_gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "mnv2export": __version__,
            "torch": str(torch.__version__) if torch is not None else _version("torch"),
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime_package": next((n for n in ("onnxruntime-gpu", "onnxruntime") if _version(n)), None),
            "onnx": _version("onnx"),
            "numpy": numpy.__version__,
            "torch_cuda": torch.version.cuda if torch is not None else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        },
        # what this onnxruntime build carries, not what works here (a row's provider is what it ran on)
        "onnxruntime_providers_built": onnxruntime.get_available_providers(),
        "host_memory_method": HostPeak.method(),
        "load_average": load_average(),
    }


def _torch_gpu(torch) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gb": round(props.total_memory / 1024**3, 1),
        "capability": f"{props.major}.{props.minor}",
        "count": torch.cuda.device_count(),
    }


def _smi_gpu() -> dict[str, Any] | None:
    """The first GPU as ``nvidia-smi`` names it (the driver's tool, there wherever a GPU is), or None: what the
    machine has, asked without importing torch."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
        name, mib, cap = (v.strip() for v in lines[0].split(","))
        return {"name": name, "memory_gb": round(float(mib) / 1024, 1), "capability": cap, "count": len(lines)}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (runnable processes), or None where unknown: above the number of CPUs
    means other work was competing for them and latencies are inflated and noisy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def busy(machine: dict[str, Any]) -> str | None:
    """Why the timings are suspect, or None: a 1-minute or 5-minute load average above the number of CPUs means
    other work competed for them (a run alone keeps at most about one runnable thread per CPU). The 1-minute figure
    catches a burst during a run of a minute or two that the 5-minute one still averages away."""
    load = machine.get("load_average")
    cpus = machine.get("logical_cpus") or 1
    if not load:
        return None
    over = [
        f"{name} load average {value:g}"
        for name, value in (("1-minute", load[0]), ("5-minute", load[1]))
        if value > cpus
    ]
    return f"{' and '.join(over)} on {cpus} CPUs" if over else None


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, or None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss() -> int | None:
    """Resident set size in bytes (Linux), or None."""
    return _status_bytes("VmRSS")


def _hwm() -> int | None:
    """Peak resident set size since the last reset, in bytes (Linux), or None."""
    return _status_bytes("VmHWM")


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class HostPeak:
    """Peak RSS over a stretch of code: ``start()`` before the row, ``peak_mb()`` / ``added_mb()`` after it."""

    _can_reset: bool | None = None

    @classmethod
    def method(cls) -> str:
        if cls._can_reset is None:
            cls._can_reset = _reset_hwm() and _hwm() is not None
        if cls._can_reset:
            return (
                "peak RSS of the process during the row (VmHWM, reset through /proc/self/clear_refs at the row's start)"
            )
        return "ru_maxrss: the process's lifetime peak RSS (the high-water mark cannot be reset here)"

    def start(self) -> None:
        gc.collect()  # what earlier rows left behind is freed before the baseline is read
        self.method()
        self.base = current_rss()
        if self._can_reset:
            _reset_hwm()

    def peak_bytes(self) -> int:
        if self._can_reset:
            peak = _hwm()
            if peak is not None:
                return peak
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux

    def peak_mb(self) -> float:
        return self.peak_bytes() / MB

    def added_mb(self) -> float | None:
        return None if self.base is None else max(0.0, (self.peak_bytes() - self.base) / MB)
