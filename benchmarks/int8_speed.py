"""INT8 vs FP32 ONNX latency at batch 1, 224 px, MobileNetV2 1.0 (20 classes), on this CPU; one run, medians.

    python benchmarks/int8_speed.py [--work DIR] [--threads 1,2] [--rounds 15] [--iters 20] [--profile]

Variants (all from the same FP32 ``model.onnx`` written by ``mnv2 export``, calibrated on the same images):
  naive       quantize_static on the raw export, no pre-processing, its defaults (QDQ, S8S8, per-tensor weights)
  s8s8_sym    quant_pre_process + QDQ + per-channel, int8 symmetric activations (zero point 0), int8 weights
  s8s8        the same with asymmetric int8 activations
  u8s8        quant_pre_process + QDQ + per-channel, uint8 activations, int8 weights, every Conv quantized
  shipped     what ``mnv2 export --quantize`` writes: u8s8 with the 3-channel stem convolution left in FP32
Every session: ONNX Runtime CPU provider, ORT_ENABLE_ALL, the thread count of the row. Timing: warm-up, then rounds
in which every session runs ``iters`` calls in turn (so load changes hit all alike); the figure is the median over
rounds of the mean call time. Top-1 agreement with FP32 is on 160 synth validation images.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_variants(work: Path, calib: np.ndarray) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from mnv2export.export.quantize import CalibrationReader, quantize_onnx
    from mnv2export.runtime import read_metadata

    fp32 = work / "export" / "model.onnx"
    meta = read_metadata(fp32)
    out = {"fp32": fp32}
    naive = work / "naive.int8.onnx"
    if not naive.exists():
        quantize_static(str(fp32), str(naive), CalibrationReader(calib), calibrate_method=CalibrationMethod.MinMax)
    out["naive"] = naive
    sym = work / "s8s8_sym.int8.onnx"
    if not sym.exists():
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(work / "pre.onnx"), skip_symbolic_shape=True)
        quantize_static(
            str(work / "pre.onnx"),
            str(sym),
            CalibrationReader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True},
        )
    out["s8s8_sym"] = sym
    for name, recipe, stem in (
        ("s8s8", {"activation_type": "int8", "weight_type": "int8", "reduce_range": False, "cpu": "forced"}, False),
        ("u8s8", None, False),
        ("shipped", None, True),
    ):
        path = work / f"{name}.int8.onnx"
        if not path.exists():
            quantize_onnx(fp32, path, calib, meta, recipe=recipe, keep_stem_fp32=stem)
        out[name] = path
    return out


def time_sessions(files: dict[str, Path], threads: list[int], rounds: int, iters: int) -> dict[tuple[str, int], float]:
    import onnxruntime as ort

    from mnv2export.runtime import session_options

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sessions = {
        (name, t): ort.InferenceSession(str(p), session_options(t), providers=["CPUExecutionProvider"])
        for name, p in files.items()
        for t in threads
    }
    for s in sessions.values():
        for _ in range(20):
            s.run(None, {"input": x})
    times: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        for key, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                s.run(None, {"input": x})
            times[key].append((time.perf_counter() - t0) / iters * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def agreement(files: dict[str, Path], images: np.ndarray) -> dict[str, float]:
    from mnv2export.runtime import load_artifact

    preds = {name: load_artifact(p).run(images).argmax(1) for name, p in files.items()}
    return {name: float((p == preds["fp32"]).mean()) for name, p in preds.items()}


def profile(path: Path, runs: int = 50) -> dict[str, float]:
    """ms per inference by kind of node (1 thread): stem / depthwise / 1x1 convolutions (told apart by their weight
    shapes, FP32 or INT8 alike) and every other op type."""
    import onnxruntime as ort

    from mnv2export.runtime import session_options

    options = session_options(1)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort_profile")  # not into the working directory
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        for _ in range(runs):
            s.run(None, {"input": x})
        events = json.loads(Path(s.end_profiling()).read_text())
    out: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op, shapes = e["args"]["op_name"], e["args"].get("input_type_shape", [])
        kind = op
        if op in ("Conv", "FusedConv", "QLinearConv") and shapes:
            x = next(iter(shapes[0].values()))
            if op == "QLinearConv":  # prepacked weight (not listed); NHWC (channels last) when H == W comes first
                y = next(iter(e["args"]["output_type_shape"][0].values()))
                c_in, c_out = (x[3], y[3]) if x[1] == x[2] else (x[1], y[1])
            else:
                w = next(iter(shapes[1].values()))
                c_in, c_out = x[1], w[0]
            kind = "conv stem (3 in)" if c_in == 3 else "conv depthwise 3x3" if c_in == c_out else "conv 1x1"
        out[kind] += e["dur"] / runs / 1000
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mnv2-int8-speed"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    from workload import DATA, build_checkpoint

    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.export import export_all
    from mnv2export.export.calib import load_calibration

    ckpt_path = args.work / "run" / "best.pt"
    if not ckpt_path.exists():
        build_checkpoint(ckpt_path)
    if not (args.work / "export" / "model.onnx").exists():
        export_all(ckpt_path, args.work / "export", formats="onnx")
    ckpt = load_checkpoint(ckpt_path)
    calib = load_calibration(ckpt, None, 64).images
    val = load_calibration(ckpt, None, DATA.synth_classes * DATA.synth_val_per_class, split="val").images
    files = make_variants(args.work, calib)
    agree = agreement(files, val)
    ms = time_sessions(files, threads, args.rounds, args.iters)
    import onnxruntime

    print(
        f"machine: {platform.processor() or platform.machine()}, onnxruntime {onnxruntime.__version__}, batch 1, 224 px, "
        f"{args.rounds} rounds x {args.iters} calls"
    )
    print("| variant | threads | median ms | speed-up vs FP32 | top-1 agreement with FP32 |")
    print("|---|---|---|---|---|")
    for t in threads:
        for name in files:
            print(
                f"| {name} | {t} | {ms[(name, t)]:.2f} | {ms[('fp32', t)] / ms[(name, t)]:.2f}x | {100 * agree[name]:.1f}% |"
            )
    if args.profile:
        prof = {name: profile(files[name]) for name in ("fp32", "u8s8", "shipped")}
        kinds = sorted(set().union(*prof.values()), key=lambda k: -max(p.get(k, 0) for p in prof.values()))
        print("\nms per inference by node kind (1 thread, ONNX Runtime profiler):")
        print("| kind | " + " | ".join(prof) + " |\n|---|" + "---|" * len(prof))
        for k in kinds:
            print(f"| {k} | " + " | ".join(f"{prof[n].get(k, 0):.3f}" for n in prof) + " |")
        print("| total | " + " | ".join(f"{sum(p.values()):.3f}" for p in prof.values()) + " |")


if __name__ == "__main__":
    main()
