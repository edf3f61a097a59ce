"""PyTorch 2 formats against the existing ones: latency of .pt2 (AOTInductor), .pte FP32 / INT8 (ExecuTorch XNNPACK),
TorchScript and ONNX FP32 / INT8 (ONNX Runtime), all on the CPU, from one checkpoint; plus each export's time.

    python benchmarks/pt2_pte.py [--work DIR] [--threads 2] [--rounds 15] [--calls 20] [--repeats 3]
    python benchmarks/pt2_pte.py --width 0.35 --img-size 64 --rounds 1 --calls 2 --steps 1   # smoke run

Workload: MobileNetV2 1.0, 224 px, 20 classes (benchmarks/workload.py), unless --width / --img-size say otherwise.
Rows: batch 1 for every format, batch 32 for .pt2 and TorchScript. Each row runs in its own subprocess (one runtime
per process: thread pools and allocators do not meet), ``--threads`` intra-op threads, warm-up calls first, then
``--rounds`` rounds of ``--calls`` calls; a row's figure is the median over rounds of the mean call time. With
``--repeats N`` the whole plan runs N times in turn (row after row, then again), so a slow spell of a shared machine
falls on every row; the table gives the median of the N figures and their spread (max / min). A row that fails gets
its error in the table instead of stopping the run. Ratios are row / reference: below 1 is faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REFERENCES = ("onnx-fp32", "onnx-int8", "torchscript")


ROW_FILES = {
    "torchscript": "model.torchscript.pt",
    "onnx-fp32": "model.onnx",
    "onnx-int8": "model.int8.onnx",
    "pt2": "model.pt2",
    "pte-fp32": "model.pte",
    "pte-int8": "model.int8.pte",
}


def build(work: Path, width: float, img_size: int, steps: int, reuse: bool) -> dict[str, tuple[Path, float]]:
    """The checkpoint, then every artifact in one `mnv2 export` (both INT8 models calibrated on the same 64 images);
    returns {row name: (file, export seconds)}. With ``reuse``, an export already in ``work`` is timed again."""
    import workload

    from mnv2export.export import Manifest, export_all
    from mnv2export.manifest import parse_manifest

    manifest_path = work / "export" / "manifest.json"
    if reuse and manifest_path.exists():
        manifest = Manifest(manifest_path, parse_manifest(manifest_path))
        return {row: (manifest.out_dir / f, manifest.artifacts[f]["seconds"]) for row, f in ROW_FILES.items()}

    workload.MODEL = dataclasses.replace(workload.MODEL, width_mult=width)
    workload.DATA = dataclasses.replace(workload.DATA, img_size=img_size)
    ckpt_path = workload.build_checkpoint(work / "weights" / "best.pt", steps=steps)
    formats = "torchscript,onnx,pt2,executorch"
    manifest = export_all(ckpt_path, work / "export", formats=formats, quantize=True, calib_size=64)
    pte, q = (manifest.artifacts[f]["export_settings"] for f in ("model.pte", "model.int8.pte"))
    print(f"pte undelegated ops: fp32 {pte['undelegated_ops']}, int8 {q['undelegated_ops']}", file=sys.stderr)
    print(f"pte int8 top-1 agreement with fp32 (calibration images): {q['top1_agreement_fp32_calib']:.3f}")
    return {row: (manifest.out_dir / f, manifest.artifacts[f]["seconds"]) for row, f in ROW_FILES.items()}


def load_runner(row: str, path: Path, threads: int):
    """The row's runtime as `mnv2 bench` loads it (TorchScript through optimize_for_inference), ``threads`` threads
    (torch's OpenMP pool for .pt2, XNNPACK's process-wide pool for .pte); this process runs only this one."""
    from mnv2export.bench.targets import load

    return load(path, "cpu", threads)


def time_one(row: str, path: Path, batch: int, threads: int, rounds: int, calls: int) -> dict:
    """Runs in the row's own subprocess: warm-up, then the median over rounds of the mean call time (ms)."""
    import numpy as np

    runner = load_runner(row, path, threads)
    x = np.random.default_rng(0).standard_normal((batch, *runner.input_shape), dtype=np.float32)
    for _ in range(max(5, calls)):  # TorchScript's profiling executor optimises during its first calls
        runner(x)
    means = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            runner(x)
        means.append((time.perf_counter() - t0) / calls * 1e3)
    return {"ms": statistics.median(means)}


def run_plan(plan: list[tuple[str, int]], exports: dict[str, tuple[Path, float]], args) -> dict:
    """Every (row, batch) of ``plan``, ``args.repeats`` times in turn; per row the median figure and the spread."""
    runs: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    for _ in range(args.repeats):
        for row, batch in plan:
            runs[(row, batch)].append(run_row(row, exports[row][0], batch, args))
    results = {}
    for key, got in runs.items():
        times = [r["ms"] for r in got if "ms" in r]
        if len(times) < len(got):
            results[key] = next(r for r in got if "error" in r)
        else:
            results[key] = {"ms": statistics.median(times), "spread": max(times) / min(times), "all_ms": times}
    return results


def run_row(row: str, path: Path, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--_time", row, str(path), str(batch)]
    cmd += ["--threads", str(args.threads), "--rounds", str(args.rounds), "--calls", str(args.calls)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:120]}
    return json.loads(lines[-1])


def table(results: dict[tuple[str, int], dict], exports: dict[str, tuple[Path, float]]) -> str:
    head = (
        "| format | batch | ms / call | spread | "
        + " | ".join(f"vs {r}" for r in REFERENCES)
        + " | export s | size MB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (row, batch), res in results.items():
        path, seconds = exports[row]
        size = f"{path.stat().st_size / 1e6:.1f}"
        if "error" in res:
            lines.append(
                f"| {row} | {batch} | error: {res['error']} | |" + " |" * len(REFERENCES) + f" {seconds} | {size} |"
            )
            continue
        ratios = []
        for ref in REFERENCES:
            base = results.get((ref, batch), {}).get("ms")
            ratios.append(f"{res['ms'] / base:.2f}" if base else "-")
        figures = f"| {row} | {batch} | {res['ms']:.2f} | {res['spread']:.2f} | "
        lines.append(figures + " | ".join(ratios) + f" | {seconds:.1f} | {size} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="folder for the checkpoint and artifacts (default: temp)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="SGD steps of the benchmark checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--reuse", action="store_true", help="time the export already in --work again, not a new one")
    p.add_argument("--repeats", type=int, default=1, help="run the whole plan N times in turn; median per row")
    p.add_argument("--_time", nargs=3, metavar=("ROW", "PATH", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._time:
        row, path, batch = args._time
        print(json.dumps(time_one(row, Path(path), int(batch), args.threads, args.rounds, args.calls)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        exports = build(work, args.width, args.img_size, args.steps, args.reuse)
        plan = [(row, 1) for row in ("onnx-fp32", "onnx-int8", "torchscript", "pt2", "pte-fp32", "pte-int8")]
        plan += [("torchscript", 32), ("pt2", 32)]
        results = run_plan(plan, exports, args)
        print(f"\nMobileNetV2 {args.width} {args.img_size} px, {args.threads} threads, {platform.processor() or ''}")
        print(
            f"median of {args.rounds} rounds x {args.calls} calls, {args.repeats} repeats; {time.strftime('%Y-%m-%d')}\n"
        )
        print(table(results, exports))


if __name__ == "__main__":
    main()
