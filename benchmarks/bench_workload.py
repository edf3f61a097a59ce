"""The workload of issue 5 through ``mnv2 bench``: MobileNetV2 1.0, 224 px, 20 classes, batch 1 and 32, CPU.

    python benchmarks/bench_workload.py [--work DIR] [--threads N] [--rounds 3] [--duration 2] [--batch 1,32]

1. The checkpoint comes from ``workload.build_checkpoint`` (a built model, a few SGD steps on synth 224 px,
   BatchNorm statistics re-estimated), exported once with ``mnv2 export --quantize --fp16`` (defaults: 256
   calibration images, MinMax) into ``DIR/export``; both are reused by later runs.
2. ``mnv2 bench DIR/export --provider cpu --batch 1,32 --warmup 2s --duration D --rounds R --json ...`` runs in a
   fresh process: every row is warmed up, timed for D seconds, and the whole sweep is repeated R times, every other
   round in reverse order, with each row's timings pooled, so that load changes on a shared machine hit all rows.
3. The goals are ratios of p50 latencies from that one run (same provider, same batch):
   ONNX FP32 >= 4x eager and TorchScript >= 1.9x eager at batch 1; INT8 >= 2.5x FP32 ONNX at batch 1.

The table printed is the command's own markdown table (``BenchResult.to_markdown``), then the goals.

``--choices`` also times, in one process and interleaved (rounds of 5 calls in turn, median of the per-round
medians), the ways the harness could run the torch rows at batch 1: eager under ``torch.no_grad()`` or
``torch.inference_mode()``, eager ``channels_last``, and the TorchScript file as loaded or after
``torch.jit.optimize_for_inference``: the evidence for what ``mnv2 bench`` does (see ``bench/targets.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GOALS = (  # (what, format, against, batch, goal)
    ("ONNX FP32 vs eager", "onnx", "eager", 1, 4.0),
    ("TorchScript vs eager", "torchscript", "eager", 1, 1.9),
    ("INT8 vs FP32 ONNX", "int8", "onnx", 1, 2.5),
)


def prepare(work: Path) -> Path:
    from workload import build_checkpoint

    from mnv2export.export import export_all

    ckpt = work / "run" / "best.pt"
    if not ckpt.exists():
        print(f"building the workload checkpoint in {ckpt} ...", flush=True)
        build_checkpoint(ckpt)
    out = work / "export"
    if not (out / "manifest.json").exists():
        print(f"exporting every format to {out} ...", flush=True)
        export_all(ckpt, out, formats="all", quantize=True, fp16=True)
    return out


def harness_choices(folder: Path, threads: int | None, rounds: int = 15) -> str:
    import statistics
    import time
    import warnings

    import numpy as np
    import torch

    from mnv2export.bench.machine import physical_cores
    from mnv2export.bench.sources import resolve
    from mnv2export.runtime import load_artifact

    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    src = resolve(folder)
    eager = load_artifact(src.files["eager"]).module
    eager_cl = load_artifact(src.files["eager"]).module.to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = load_artifact(src.files["torchscript"]).module
        ts_opt = torch.jit.optimize_for_inference(load_artifact(src.files["torchscript"]).module)
    session = load_artifact(src.files["onnx"], threads=threads).session
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def under(ctx, model, inp):
        def call():
            with ctx():
                model(inp)

        return call

    ways = {
        "eager, torch.no_grad()": under(torch.no_grad, eager, x),
        "eager, torch.inference_mode() (mnv2 bench)": under(torch.inference_mode, eager, x),
        "eager, channels_last, inference_mode": under(torch.inference_mode, eager_cl, x_cl),
        "TorchScript as loaded, inference_mode": under(torch.inference_mode, ts, x),
        "TorchScript + optimize_for_inference (mnv2 bench)": under(torch.inference_mode, ts_opt, x),
        "ONNX FP32, session.run (mnv2 bench)": lambda: session.run(None, {"input": x.numpy()}),
    }
    for call in ways.values():
        for _ in range(5):
            call()
    per_round: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(rounds):
        for name in list(ways) if r % 2 == 0 else list(ways)[::-1]:
            t = []
            for _ in range(5):
                t0 = time.perf_counter()
                ways[name]()
                t.append(time.perf_counter() - t0)
            per_round[name].append(statistics.median(t) * 1000)
    med = {k: statistics.median(v) for k, v in per_round.items()}
    base = med["eager, torch.inference_mode() (mnv2 bench)"]
    lines = [
        f"harness choices, batch 1, {threads} threads, {rounds} interleaved rounds of 5 calls:",
        "",
        "| how | median ms | vs eager (inference_mode) |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} | {base / v:.2f}x |" for k, v in med.items()]
    return "\n".join(lines)


def goals_table(result) -> str:
    from mnv2export.bench.machine import busy

    caveat = " (busy machine: not evidence)" if busy(result.machine) else ""
    lines = ["| goal (p50, same run) | batch | ratio | goal | met |", "|---|---|---|---|---|"]
    for what, fmt, base, batch, goal in GOALS:
        for b in sorted({batch, *result.settings.get("batches", [])}):
            a, ref = result.row(fmt, "cpu", b), result.row(base, "cpu", b)
            if not (a and ref and a.ok and ref.ok):
                lines.append(f"| {what} | {b} | n/a | {goal:g}x | {'no' if b == batch else ''} |")
                continue
            ratio = ref.p50_ms / a.p50_ms
            met = ("yes" if ratio >= goal else "no") + caveat if b == batch else "(no goal)"
            lines.append(f"| {what} | {b} | {ratio:.2f}x ({ref.p50_ms:.2f} / {a.p50_ms:.2f} ms) | {goal:g}x | {met} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mnv2-bench"))
    ap.add_argument("--threads", type=int, default=None, help="default: mnv2 bench's default, the physical cores")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--formats", default="all")
    ap.add_argument("--json", type=Path, default=None, help="default: WORK/bench[-tN].json")
    ap.add_argument("--choices", action="store_true", help="also time the harness's choices for the torch rows")
    ap.add_argument("--no-sweep", action="store_true", help="with --choices: only the choices table")
    args = ap.parse_args()

    from mnv2export.bench import BenchResult

    folder = prepare(args.work)
    if args.no_sweep:
        print(harness_choices(folder, args.threads))
        return
    out = args.json or args.work / f"bench{'' if args.threads is None else f'-t{args.threads}'}.json"
    cmd = [
        "mnv2",
        "bench",
        str(folder),
        "--formats",
        args.formats,
        "--provider",
        "cpu",
        "--batch",
        args.batch,
        "--warmup",
        "2s",
        "--duration",
        str(args.duration),
        "--rounds",
        str(args.rounds),
        "--json",
        str(out),
        "--plot",
        str(out.with_suffix(".png")),
    ]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "mnv2export", *cmd[1:]], check=True)
    result = BenchResult.from_dict(json.loads(out.read_text()))
    print("\n" + result.to_markdown())
    print(goals_table(result))
    if args.choices:
        print("\n" + harness_choices(folder, args.threads))


if __name__ == "__main__":
    main()
