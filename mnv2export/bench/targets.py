"""Load one artifact for one provider and bind one input batch to it: what a row times.

* PyTorch eager: the checkpoint's torchvision MobileNetV2, ``eval()``, FP32, NCHW (contiguous), BatchNorm not
  folded, no compile: what ``model.eval()`` gives a user, called under ``torch.inference_mode()``.
* TorchScript: the exported (traced, BatchNorm-folded, frozen) file, ``torch.jit.load`` with ``map_location``;
  on the CPU then ``torch.jit.optimize_for_inference`` (PyTorch's own step for a frozen module served on the CPU:
  every convolution becomes ``prim::mkldnn_convolution`` with weights prepacked once, and the activations stay in
  oneDNN's blocked layout from the first convolution to the pooling, ReLU6 and Add included, instead of being
  reordered around every convolution; its time counts as loading); called under ``torch.inference_mode()``.
  Without that step the file runs ``aten::conv2d`` op by op and is held back by it (benchmarks/RESULTS.md).
* ONNX (FP32, INT8, FP16): an ONNX Runtime session (all graph optimisations). On the CPU ``session.run`` with a
  NumPy array (no copy: ONNX Runtime reads it in place). On CUDA two I/O modes: ``resident`` binds a GPU input
  and a pre-allocated GPU output with I/O binding (``run_with_iobinding``: no host-device traffic at all), and
  ``copies`` calls ``session.run`` with host arrays, so the host-to-device copy of the input and the copy of the
  logits back are timed too. Torch on CUDA has the same two modes (``x.to(device)`` and ``.cpu()`` in the timer).
  A CUDA-graph row (``<format>+graph``) is the ``resident`` binding on a session created with the CUDA provider's
  ``enable_cuda_graph``: its first call captures the graph (in the row's first-call time), the timed calls replay it.

Threads: ``torch.set_num_threads`` (process-wide) for torch, the session's ``intra_op_num_threads`` for ONNX Runtime.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime import OnnxRunner, Runner, TorchRunner, load_artifact

IO_MODES = ("resident", "copies")


@dataclass
class Bound:
    """One inference, ready to be called as timed: ``call()`` then ``sync()`` (None on the CPU)."""

    call: Callable[[], Any]
    sync: Callable[[], Any] | None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    keep: list[Any] = field(default_factory=list)  # device buffers that must outlive the calls
    amp: Any = None  # torch rows under autocast: the reduced dtype (torch.float16 / torch.bfloat16)


def load(path: Path, provider: str, threads: int, *, cuda_graph: bool = False) -> Runner:
    """``path`` loaded as every command loads it, then prepared by its format for many calls (TorchScript on the CPU:
    ``optimize_for_inference``, whose time counts as loading)."""
    from ..formats import for_kind

    runner = load_artifact(path, provider, threads=threads, cuda_graph=cuda_graph)
    return for_kind(runner.format).for_serving(runner)


def input_batch(runner: Runner, batch: int, seed: int = 0) -> np.ndarray:
    c, h, w = runner.input_shape
    return np.random.default_rng(seed).standard_normal((batch, c, h, w), dtype=np.float32)  # no float64 batch first


def bind(runner: Runner, x: np.ndarray, io: str, *, amp: bool = False) -> Bound:
    """``amp``: a torch runner called under ``torch.autocast`` (FP16 on CUDA, BF16 on the CPU)."""
    if io not in IO_MODES:
        raise ValueError(f"unknown I/O mode {io!r}")
    if isinstance(runner, OnnxRunner):
        if amp:
            raise ValueError("autocast applies to torch runners only")
        return _bind_onnx(runner, x, io)
    if isinstance(runner, TorchRunner):
        bound = _bind_torch(runner, x, io)
        if amp:
            import torch

            dtype = torch.float16 if runner.device.type == "cuda" else torch.bfloat16
            plain = bound.context

            @contextlib.contextmanager
            def autocast():
                with plain(), torch.autocast(runner.device.type, dtype=dtype):
                    yield

            bound.context, bound.amp = autocast, dtype
        return bound
    if amp:
        raise ValueError("autocast applies to eager and TorchScript runners only")
    if getattr(runner, "device", None) is not None and runner.device.type == "cuda" and io == "resident":
        return _bind_compiled_cuda(runner, x)
    # the other runtimes (a .pt2 on the CPU or its logits copied back, ExecuTorch): the runner's own call, numpy in
    # and out (torch.from_numpy shares the array's memory)
    return Bound(call=lambda: runner.run(x), sync=cuda_sync() if runner.provider == "cuda" else None)


def amp_note(dtype, output) -> str:
    """What an autocast row ran as, from the dtype of its logits: a graph autocast did not reach (TorchScript's
    support is partial) returns FP32 logits, and then its time is an FP32 time."""
    name = str(dtype).removeprefix("torch.")
    got = str(getattr(output, "dtype", "?")).removeprefix("torch.")
    if got == name:
        return f"torch.autocast {name}"
    return f"torch.autocast {name} not applied (logits {got}): an FP32 time"


def cuda_sync() -> Callable[[], Any] | None:
    """Device-wide synchronisation (``cudaDeviceSynchronize``: every stream, ONNX Runtime's too), or None when
    this torch has no CUDA, or there is no torch (a runtime-only install: the ONNX rows then synchronise their own
    outputs)."""
    from ..device import torch_installed

    if not torch_installed():
        return None
    import torch

    return torch.cuda.synchronize if torch.cuda.is_available() else None


def _bind_torch(runner: TorchRunner, x: np.ndarray, io: str) -> Bound:
    import torch

    module, device = runner.module, runner.device
    host = torch.from_numpy(x)
    if device.type == "cpu":
        return Bound(call=lambda: module(host), sync=None, context=torch.inference_mode)
    if io == "copies":
        return Bound(
            call=lambda: module(host.to(device)).cpu(), sync=torch.cuda.synchronize, context=torch.inference_mode
        )
    resident = host.to(device)
    torch.cuda.synchronize()
    return Bound(
        call=lambda: module(resident), sync=torch.cuda.synchronize, context=torch.inference_mode, keep=[resident]
    )


def _bind_compiled_cuda(runner: Runner, x: np.ndarray) -> Bound:
    """A .pt2 compiled for CUDA, its input already on the GPU and its logits left there (as the eager row's)."""
    import torch

    if len(x) > runner.max_batch:
        raise ValueError(f"batch {len(x)} is over the package's {runner.max_batch}")
    model, resident = runner.model, torch.from_numpy(x).to(runner.device)
    torch.cuda.synchronize()
    return Bound(
        call=lambda: model(resident), sync=torch.cuda.synchronize, context=torch.inference_mode, keep=[resident]
    )


def _bind_onnx(runner: OnnxRunner, x: np.ndarray, io: str) -> Bound:
    session, outputs, feed = runner.session, [runner.output_name], {runner.input_name: x}
    if runner.provider == "cpu":
        return Bound(call=lambda: session.run(outputs, feed), sync=None)
    if io == "copies":  # host arrays in and out: ONNX Runtime copies the input up and the logits back
        return Bound(call=lambda: session.run(outputs, feed), sync=cuda_sync())
    import onnxruntime as ort

    n_classes = len(runner.class_names)
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    y_dev = ort.OrtValue.ortvalue_from_shape_and_type((x.shape[0], n_classes), np.float32, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(runner.input_name, x_dev)
    binding.bind_ortvalue_output(runner.output_name, y_dev)
    sync = cuda_sync() or binding.synchronize_outputs
    return Bound(call=lambda: session.run_with_iobinding(binding), sync=sync, keep=[x_dev, y_dev, binding])


class GpuPeak:
    """GPU memory of a row, in MB.

    torch rows: ``torch.cuda.max_memory_allocated`` since the row began (weights, activations, cuDNN workspaces: every
    tensor of the caching allocator). ONNX Runtime rows: ONNX Runtime allocates through its own BFC arena, which
    torch cannot see and which never gives memory back while the session lives; the figure is the device memory in
    use (``cudaMemGetInfo``, through ``torch.cuda.mem_get_info``) after the timed loop, with the session still
    alive, minus the same before the session was created: the arena's high-water mark plus the cuBLAS / cuDNN
    handles and workspaces the session holds. It is device-wide, so another process allocating on the same GPU
    during the row would be counted too.
    """

    def __init__(self, kind: str):
        from ..device import torch_installed

        self.kind = kind  # "torch" or "onnx"
        self.ok = torch_installed()  # a runtime-only install has nothing to ask: the row says so in its note
        if not self.ok:
            return
        import torch

        self.ok = torch.cuda.is_available()
        if not self.ok:
            return
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        if kind == "torch":
            torch.cuda.reset_peak_memory_stats()
        else:
            self.free0, _ = torch.cuda.mem_get_info()

    def mb(self) -> float | None:
        import torch

        if not self.ok:
            return None
        torch.cuda.synchronize()
        if self.kind == "torch":
            return torch.cuda.max_memory_allocated() / 2**20
        free1, _ = torch.cuda.mem_get_info()
        return max(0, self.free0 - free1) / 2**20
