"""What ``mnv2 bench``'s timing harness costs against a minimal hand-written loop, same session, same input, one run.

    python benchmarks/harness_overhead.py [--work DIR] [--formats onnx,int8,torchscript,eager] [--batch 1]
                                          [--threads N] [--rounds 30] [--iters 40]

The artifacts are the workload's (MobileNetV2 1.0, 224 px, 20 classes; ``bench_workload.py`` makes them). For each
format one model is loaded and bound to one input exactly as ``bench.run`` does it (``bench.targets.load`` and
``bind``); then, in alternating order for ``rounds`` rounds:

* hand-written: ``t0 = perf_counter(); for _ in range(iters): session.run(None, {"input": x})`` (for torch:
  ``model(x)`` inside one ``torch.inference_mode()``), per call = elapsed / iters;
* harness: ``bench.timing.measure(bound.call, bound.sync, Plan(warmup=0, iters=iters))``, the loop every row of
  ``mnv2 bench`` goes through (a timer pair and a list append per call), per call = the mean it reports.

Each round times both back to back, so the figure is the median over rounds of harness / hand-written - 1 (paired:
a load change between rounds cancels out), with the 25-75% range of those ratios to show the noise; the goal is an
overhead under 5%. Batch 1 by default: the shortest calls are where a fixed per-call cost weighs most.

On a busy machine the rounds scatter by several per cent either way, so the script also times the harness around a
call that does nothing (a timer pair, the call of a closure and a list append; 200,000 calls against the same bare
loop): that per-call cost is what the harness can add to any row, free of noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def hand_loop(runner, x, iters: int) -> float:
    """ms per call of the most direct loop one would write by hand."""
    from mnv2export.runtime import OnnxRunner

    if isinstance(runner, OnnxRunner):
        session = runner.session
        t0 = time.perf_counter()
        for _ in range(iters):
            session.run(None, {"input": x})
        return (time.perf_counter() - t0) / iters * 1000
    import torch

    model, xt = runner.module, torch.from_numpy(x)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(iters):
            model(xt)
        return (time.perf_counter() - t0) / iters * 1000


def harness_loop(bound, iters: int) -> float:
    from mnv2export.bench.timing import Plan, measure

    with bound.context():
        _, times = measure(bound.call, bound.sync, Plan(warmup=0, iters=iters))
    return statistics.fmean(times)


def noop_cost(n: int = 200_000) -> tuple[float, float]:
    """(µs per call of a bare loop calling a no-op closure, µs per call the harness reports around the same no-op)."""
    from mnv2export.bench.timing import Plan, measure

    def nothing():
        return None

    t0 = time.perf_counter()
    for _ in range(n):
        nothing()
    bare = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    measure(nothing, None, Plan(warmup=0, iters=n))
    harness = (time.perf_counter() - t0) / n * 1e6  # the whole loop: timers, append, the ns-to-ms conversion
    return bare, harness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mnv2-bench"))
    ap.add_argument("--formats", default="onnx,int8,torchscript,eager")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="default: the physical cores, as mnv2 bench")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()

    import torch
    from bench_workload import prepare

    from mnv2export.bench.machine import cpu_model, physical_cores
    from mnv2export.bench.sources import resolve
    from mnv2export.bench.targets import bind, input_batch, load

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    src = resolve(prepare(args.work))
    print(
        f"machine: {cpu_model()}, {physical_cores()} physical cores, {threads} threads; batch {args.batch}; "
        f"{args.rounds} rounds x {args.iters} calls per loop, alternating order",
        flush=True,
    )
    print(
        "| format | hand-written ms/call (median) | harness ms/call (median) | harness overhead (median of paired rounds) "
        "| 25-75% of rounds | goal < 5% |"
    )
    print("|---|---|---|---|---|---|")
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        runner = load(src.files[fmt], "cpu", threads)
        x = input_batch(runner, args.batch)
        bound = bind(runner, x, "resident")
        hand_loop(runner, x, args.iters)  # warm-up of both paths
        harness_loop(bound, args.iters)
        hand, harness = [], []
        for r in range(args.rounds):
            if r % 2 == 0:
                hand.append(hand_loop(runner, x, args.iters))
                harness.append(harness_loop(bound, args.iters))
            else:
                harness.append(harness_loop(bound, args.iters))
                hand.append(hand_loop(runner, x, args.iters))
        ratios = sorted(m / h - 1 for h, m in zip(hand, harness))
        over = statistics.median(ratios)
        q1, q3 = statistics.quantiles(ratios, n=4)[0], statistics.quantiles(ratios, n=4)[2]
        print(
            f"| {fmt} | {statistics.median(hand):.3f} | {statistics.median(harness):.3f} | {100 * over:+.2f}% | "
            f"{100 * q1:+.1f}% .. {100 * q3:+.1f}% | {'met' if over < 0.05 else 'NOT met'} |",
            flush=True,
        )
        del runner, bound
    bare, harness = noop_cost()
    print(
        f"\nno-op call: bare loop {bare:.3f} µs per call, harness loop {harness:.3f} µs per call "
        f"(+{harness - bare:.3f} µs, the most the harness can add to a call, timers included)"
    )


if __name__ == "__main__":
    main()
