"""Will a row fit in memory? Its bytes estimated from the model's own shapes, against what the machine has left.

A row too large for the machine would not fail: the kernel's out-of-memory killer would end the whole process
(exit 137, no table, no file). So each row is weighed before it allocates anything:

* Per image, from the model's own layer shapes (:func:`footprint`): the layers of the MobileNetV2 its metadata's
  ``model_config`` describes, computed without torch (:func:`mnv2export.architecture.activation_peak`, held equal
  by tests/test_architecture.py to one forward of a single image with hooks on every module). In an eager forward
  under ``inference_mode`` a tensor lives while a frame holds it: a layer's input and output, and the input of every
  module around the layer (a Sequential's loop variable, the ``x`` an inverted residual adds back). The peak of
  live activations of one image is the largest such set.
* Per row (:func:`estimate_bytes`): the input batch and the logits, the activations of ``batch`` images times
  the format's ``SAFETY`` (what its runtime holds beyond them, its arena included), a workspace per thread, and
  the weights.
* Available (:func:`available_bytes`): on the CPU the kernel's ``MemAvailable``, lowered to what the process's
  cgroup limit leaves (a container's limit is where its OOM killer strikes); on CUDA the free device memory
  (``cudaMemGetInfo``), and the host still holds the input and logits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..formats import REGISTRY

FLOAT = 4  # bytes of a float32: the input, the logits and the activations as measured in the eager forward
# What each runtime holds at the peak, over the eager-frame peak of :func:`footprint`. The peak RSS growth of a row
# (load, bind, three calls) measured 1.24-1.38x that peak for eager (BatchNorm's temporaries, the allocator's
# rounding), 0.72-0.80x TorchScript (oneDNN, folded BatchNorm), 1.07-1.50x ONNX FP32 and 0.70-0.89x INT8 (ONNX
# Runtime's CPU arena included: its BFC arena grows by regions of doubling size, so it can hold up to twice what
# its planner asks for), and 2.28-2.52x FP16 (the CPU provider wraps each FP16 convolution in NCHWc reorder copies),
# on MobileNetV2 1.0 at 224 px (batch 64) and 0.35 at 32 px (batch 4096), 2 threads, each in a fresh process. Each
# factor leaves at least a third above the worst of these; tests/test_bench.py checks it on every format. The .pt2
# and .pte runners take a batch in chunks (256, 32 images) and grew 0.27x and 0.11x (0.35 at 32 px, batch 1024).
# Each format's factor is its `memory_factor` in the registry.
SAFETY = {f.name: f.memory_factor for f in REGISTRY}
# Weights: the file's bytes, held once as read and once as the runtime's own copy (ONNX Runtime's prepacked
# kernels, oneDNN's prepacked TorchScript weights, the eager model built from the checkpoint's state dict): 3 copies.
WEIGHT_COPIES = 3
GB = 1e9


@dataclass(frozen=True)
class Footprint:
    """Bytes of one image through the model (float32), from its layer shapes."""

    input_bytes: int
    output_bytes: int
    activation_bytes: int  # peak of live activations in a forward of one image
    layer_bytes: int  # the largest layer's input + output: a bound on one thread's scratch (im2col, packing) per image


_FOOTPRINTS: dict[str, Footprint] = {}


def footprint(metadata: dict[str, Any]) -> Footprint:
    """The per-image bytes of the model an artifact's metadata describes (its ``model_config`` and ``input_size``);
    without a ``model_config``, the largest network the tool builds at that size (an upper bound)."""
    from ..config import ModelConfig

    size = [int(v) for v in metadata["input_size"]]
    classes = len(metadata["class_names"])
    raw = metadata.get("model_config")
    if isinstance(raw, dict):
        cfg = ModelConfig.from_dict(raw)
    else:  # width 1.4, full resolution down to stride 8: the most activation bytes per image
        cfg = ModelConfig(num_classes=max(2, classes), width_mult=1.4, small_input=True, output_stride=8)
    key = json.dumps([cfg.to_dict(), size])
    if key not in _FOOTPRINTS:
        _FOOTPRINTS[key] = _measure_shapes(cfg, size)
    return _FOOTPRINTS[key]


def _measure_shapes(cfg, size: list[int]) -> Footprint:
    from ..architecture import activation_peak, network

    peak, layer = activation_peak(cfg, size)
    classes = network(cfg, size).leaves()[-1].output_shape[-1]
    return Footprint(
        input_bytes=math.prod(size) * FLOAT,
        output_bytes=classes * FLOAT,
        activation_bytes=peak * FLOAT,
        layer_bytes=layer * FLOAT,
    )


def per_image_bytes(fp: Footprint, fmt: str) -> int:
    """Bytes a row of format ``fmt`` (eager, torchscript, onnx, int8, fp16) takes per image of its batch."""
    return fp.input_bytes + fp.output_bytes + math.ceil(SAFETY[fmt] * fp.activation_bytes)


def estimate_bytes(fp: Footprint, fmt: str, batch: int, threads: int, weights: int = 0, *, device: bool = False) -> int:
    """Bytes a row of ``batch`` images takes where the model runs (``device``: on the GPU, whose kernels need no
    per-thread host scratch) or, on the CPU, in the process: per image the input, logits and activations (with the
    format's ``SAFETY``); each thread's scratch (an im2col or packing buffer) for one image's largest layer; the
    ``weights`` (the file's size) held ``WEIGHT_COPIES`` times."""
    scratch = 0 if device else threads * fp.layer_bytes
    return batch * per_image_bytes(fp, fmt) + scratch + WEIGHT_COPIES * weights


def host_bytes_of_gpu_row(fp: Footprint, batch: int) -> int:
    """What a GPU row still holds in host memory: the input batch and a copy of the logits."""
    return batch * (fp.input_bytes + fp.output_bytes)


def fit_problem(
    needed: int, available: int | None, source: str, *, batch: int, per_image: int, where: str
) -> tuple[str, str] | None:
    """Why ``needed`` bytes for ``batch`` images (``per_image`` of them growing with the batch) cannot be had where
    ``available`` bytes are left (said as ``source``), and what fits; None when they fit or the room is unknown."""
    if available is None or needed <= available:
        return None
    most = batch - math.ceil((needed - available) / per_image) if per_image else 0
    what = (
        f"batch {batch} needs about {_size(needed)} of {where} memory (estimated from the model's layer shapes), "
        f"{_size(available)} available ({source})"
    )
    return what, f"use a batch of at most {most}" if most >= 1 else "not even one image fits: free some memory"


def check_row_fits(fp: Footprint, fmt: str, batch: int, provider: str, threads: int, weights: int) -> None:
    """A :class:`ConfigError` before a row allocates anything, when its estimate exceeds the memory left: on the
    CPU the process's, on a GPU the device's (and the host's for the input and logits it still holds)."""
    per_image = per_image_bytes(fp, fmt)
    if provider == "cpu":
        checks = [(estimate_bytes(fp, fmt, batch, threads, weights), *available_bytes(), per_image, "host")]
    else:
        host = host_bytes_of_gpu_row(fp, batch)
        checks = [
            (host, *available_bytes(), fp.input_bytes + fp.output_bytes, "host"),
            (estimate_bytes(fp, fmt, batch, threads, weights, device=True), *device_bytes(), per_image, "GPU"),
        ]
    for needed, available, source, grows, where in checks:
        problem = fit_problem(needed, available, source, batch=batch, per_image=grows, where=where)
        if problem:
            raise ConfigError(problem[0], hint=problem[1])


def available_bytes() -> tuple[int | None, str]:
    """Host memory this process may still take, and where the figure comes from: the kernel's ``MemAvailable``
    (free memory plus the page cache it can reclaim), lowered to the room under the process's cgroup limit."""
    room, source = _meminfo_available(), "MemAvailable in /proc/meminfo"
    limit = _cgroup_room()
    if limit is not None and (room is None or limit < room):
        room, source = limit, "room under the cgroup memory limit"
    return room, source


def device_bytes() -> tuple[int | None, str]:
    """Free memory of the current CUDA device (``cudaMemGetInfo``), or None where torch has no CUDA or there is no
    torch (a runtime-only install: the row then runs unweighed on the device, its host side still checked)."""
    from ..device import torch_installed

    if not torch_installed():
        return None, "no torch to ask the GPU"
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA device"
    free, _ = torch.cuda.mem_get_info()
    return int(free), "free GPU memory (cudaMemGetInfo)"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# A container's own view of its cgroup (v2, then v1): the limit, the usage, and the reclaimable page cache in it
_CGROUPS = (
    (Path("/sys/fs/cgroup"), "memory.max", "memory.current", "inactive_file"),
    (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
)


def _cgroup_room() -> int | None:
    """Bytes under the cgroup's memory limit not yet used (the page cache it may reclaim counts as room, as the
    kubelet's working-set figure does); None without a limit."""
    for root, limit_file, usage_file, inactive in _CGROUPS:
        try:
            text = (root / limit_file).read_text().strip()
            if text == "max" or int(text) >= 2**60:  # v2 "max", v1's "unlimited" (a page-rounded 2**63)
                continue
            used = int((root / usage_file).read_text())
            stat = dict(
                line.split() for line in (root / "memory.stat").read_text().splitlines() if len(line.split()) == 2
            )
            return max(0, int(text) - used + int(stat.get(inactive, 0)))
        except (OSError, ValueError):
            continue
    return None


def _size(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1e6:.0f} MB"
