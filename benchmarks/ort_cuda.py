"""ONNX Runtime's CUDA provider on the exported files: CUDA graphs and TF32, measured on a GPU machine in one run.

    python benchmarks/ort_cuda.py EXPORT_DIR [--batch 1,32] [--rounds 15] [--iters 20]
    python benchmarks/ort_cuda.py EXPORT_DIR --tf32-after-start

Needs an NVIDIA GPU and ``onnxruntime-gpu`` (exits with a message otherwise). ``EXPORT_DIR`` is written by
``mnv2 export --fp16 --quantize`` (missing files are skipped).

Default: for model.onnx, model.fp16.onnx and model.int8.onnx at each batch size, three sessions with I/O binding
(input and output resident on the GPU, as ``mnv2 bench``'s ``resident`` rows): ``plain`` (the provider's defaults),
``tf32_off`` (``use_tf32=0``) and ``graph`` (``enable_cuda_graph=1``: the first run captures the kernels, later runs
replay them). Timing: ``rounds`` interleaved rounds of ``iters`` calls per session, then a synchronize; the figure
is the median over rounds of the mean call time. Each session's output is compared with the CPU provider's.

``--tf32-after-start``: whether ``NVIDIA_TF32_OVERRIDE=0``, set after the process's first CUDA session, still turns
TF32 off for a new session (max abs difference from the CPU for: the defaults, ``use_tf32=0``, the variable set
late, and the variable set before a fresh process starts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mnv2export.runtime import (
    session_options,
)  # what every mnv2export session uses: all graph optimisations, quiet logs

FILES = ("model.onnx", "model.fp16.onnx", "model.int8.onnx")


class NoCuda(RuntimeError):
    pass


def _ort():
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(
            f"needs onnxruntime-gpu and an NVIDIA GPU (this onnxruntime {ort.__version__} offers "
            f"{ort.get_available_providers()})"
        )
    return ort


def _session(ort, path: Path, provider_options: dict):
    session = ort.InferenceSession(
        str(path), session_options(), providers=[("CUDAExecutionProvider", provider_options), "CPUExecutionProvider"]
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise NoCuda(f"the session got {session.get_providers()}, not the CUDA provider (no GPU or CUDA libraries?)")
    return session


def _input(session, batch: int) -> np.ndarray:
    shape = [batch] + [int(d) for d in session.get_inputs()[0].shape[1:]]
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def speed(folder: Path, batches: list[int], rounds: int, iters: int) -> None:
    ort = _ort()
    variants = {"plain": {}, "tf32_off": {"use_tf32": "0"}, "graph": {"enable_cuda_graph": "1"}}
    for name in FILES:
        path = folder / name
        if not path.exists():
            continue
        cpu = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        in_name, out_name = cpu.get_inputs()[0].name, cpu.get_outputs()[0].name
        for batch in batches:
            x = _input(cpu, batch)
            ref = cpu.run([out_name], {in_name: x})[0]
            runs = {}
            for label, provider_options in variants.items():
                try:
                    session = _session(ort, path, provider_options)
                    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
                    y_dev = ort.OrtValue.ortvalue_from_shape_and_type(ref.shape, np.float32, "cuda", 0)
                    binding = session.io_binding()
                    binding.bind_ortvalue_input(in_name, x_dev)
                    binding.bind_ortvalue_output(out_name, y_dev)
                    for _ in range(iters):  # warm-up (and the capture, for graph)
                        session.run_with_iobinding(binding)
                    binding.synchronize_outputs()
                    runs[label] = (session, binding, float(np.abs(y_dev.numpy() - ref).max()), x_dev, y_dev)
                except NoCuda:
                    raise
                except Exception as exc:  # noqa: BLE001 - a variant the provider refuses is reported, not fatal
                    print(f"{name} batch {batch} {label}: failed: {str(exc).strip()[:300]}", flush=True)
            times: dict[str, list[float]] = {label: [] for label in runs}
            for _ in range(rounds):
                for label, (session, binding, *_rest) in runs.items():
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        session.run_with_iobinding(binding)
                    binding.synchronize_outputs()
                    times[label].append((time.perf_counter() - t0) / iters * 1e3)
            cells = [
                f"{label} {statistics.median(times[label]):.3f} ms (max abs vs CPU {runs[label][2]:.2e})"
                for label in runs
            ]
            print(f"{name} batch {batch}: " + ", ".join(cells), flush=True)


def tf32_after_start(folder: Path, fresh: bool = False) -> None:
    ort = _ort()
    path = folder / "model.onnx"
    cpu = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    x = _input(cpu, 8)
    ref = cpu.run(None, {cpu.get_inputs()[0].name: x})[0]
    scale = max(1.0, float(np.abs(ref).max()))

    def diff(provider_options: dict, label: str) -> None:
        session = _session(ort, path, provider_options)
        d = float(np.abs(session.run(None, {session.get_inputs()[0].name: x})[0] - ref).max())
        print(f"{label}: max abs {d:.3e} ({d / scale:.3e} of the largest logit)", flush=True)

    if fresh:
        diff({}, "NVIDIA_TF32_OVERRIDE=0 before the process started, default options")
        return
    diff({}, "default options (TF32 on)")
    diff({"use_tf32": "0"}, "use_tf32=0")
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    diff({}, "NVIDIA_TF32_OVERRIDE=0 set after the first sessions, default options")
    subprocess.run(
        [sys.executable, __file__, str(folder), "--tf32-after-start", "--fresh"],
        check=True,
        env={**os.environ, "NVIDIA_TF32_OVERRIDE": "0"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--tf32-after-start", action="store_true")
    parser.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.tf32_after_start:
            tf32_after_start(args.folder, args.fresh)
        else:
            speed(args.folder, [int(b) for b in args.batch.split(",")], args.rounds, args.iters)
    except NoCuda as exc:
        sys.exit(f"needs an NVIDIA GPU: {exc}")


if __name__ == "__main__":
    main()
