"""Training-step images/s of the Fashion-MNIST recipe's model against other batch sizes, widths and torch.compile.

Each variant trains the recipe's model through ``mnv2export.train.train_one_epoch`` with the pieces ``mnv2 train``
wires for the recipe (``StepContext``: channels_last and amp; ``build_optimizer``, ``build_scheduler``, label
smoothing; the recipe's thread count) on one fixed random batch, so only the step is timed, not the data: ``recipe``,
``compile`` (``torch.compile`` of the model, inductor, compile time excluded), ``nchw`` (contiguous NCHW instead of
channels_last: ``channels_last = "off"``), ``bf16`` (``torch.autocast`` in
bfloat16: ``--amp bf16``), ``batchN`` (any batch size N: the recipe's own is 256, its earlier one 128), and the wider
models ``width0.75`` / ``width1.0``; ``freezeN`` (the first N feature blocks frozen, ``--freeze-blocks N``), ``mix``
(MixUp and CutMix, alpha 0.2 and 1.0: ``--mixup-alpha 0.2 --cutmix-alpha 1.0``) and ``clip`` (``--clip-grad-norm 5``).
Modifiers combine with ``+``: ``bf16+width0.75``. One warm-up segment per
variant, then ``--rounds`` rounds in which the variants take turns; the table shows median images/s and the ratio to
``recipe``. Compare within one run.

    python benchmarks/train_step_variants.py                  # all variants, 40 steps x 3 rounds
    python benchmarks/train_step_variants.py --variants recipe,batch128,compile --steps 40 --rounds 5
    python benchmarks/train_step_variants.py --variants recipe --rounds 1 --profile 5   # where the step's time goes

``--profile N`` then runs N more steps of the first variant under ``torch.profiler`` and lists the operators that
took the most CPU time, by input shape (which layer), per step.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("recipe", "compile", "nchw", "bf16", "batch128", "batch512", "width0.75", "width1.0")  # the default list
MODIFIER = re.compile(
    r"recipe|compile|nchw|bf16|mix|clip|batch([1-9][0-9]*)|width(0\.[0-9]+|1\.[0-9]+)|freeze([1-9][0-9]*)"
)  # any batchN, widthX, freezeN


def modifiers(variant: str) -> list[re.Match] | None:
    """The ``+``-joined modifiers of ``variant``, or None if one is unknown."""
    found = [MODIFIER.fullmatch(part) for part in variant.split("+")]
    return None if None in found else found


def make_segment(variant: str, recipe, steps: int):
    """A function that trains ``steps`` steps of ``variant`` through ``train_one_epoch``, as ``mnv2 train`` wires it."""
    import torch
    from torch import nn

    from mnv2export.data.transforms import batch_mix
    from mnv2export.model import build_model, freeze_blocks
    from mnv2export.train import StepContext, amp_dtype, train_one_epoch
    from mnv2export.train.optim import build_optimizer, build_scheduler

    cfg, t = recipe.model, recipe.train
    found = modifiers(variant)
    batch = next((int(m[1]) for m in found if m[1]), t.batch_size)
    cfg = next((cfg.replace(width_mult=float(m[2])) for m in found if m[2]), cfg)
    parts = {m[0] for m in found}
    device = torch.device("cpu")
    amp = "bf16" if "bf16" in parts else t.amp
    ctx = StepContext(
        device=device, dtype=amp_dtype(amp, device), channels_last=t.channels_last != "off" and "nchw" not in parts
    )
    if "mix" in parts:
        ctx.mix = batch_mix(0.2, 1.0, cfg.num_classes)
    if "clip" in parts:
        ctx.clip_grad_norm = 5.0
    model = build_model(cfg)
    for m in found:
        if m[3]:
            freeze_blocks(model, int(m[3]))
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, t)
    sched = build_scheduler(opt, t, steps_per_epoch=steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    train_module = torch.compile(model) if "compile" in parts else model
    size = recipe.data.img_size
    x = torch.randn(batch, 3, size, size)  # NCHW, as the loader hands it over
    y = torch.randint(0, cfg.num_classes, (batch,))

    def segment(n: int = steps) -> None:
        train_one_epoch(train_module, [(x, y, 0)] * n, opt, sched, criterion, ctx)

    return segment, batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "train" / "fashion_mnist_cpu.toml"))
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)}, batchN, widthX, joined with +",
    )
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="then profile N steps of the first variant")
    p.add_argument("--top", type=int, default=15, help="operators listed by --profile")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(v for v in set(variants) if modifiers(v) is None)
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}")

    import torch

    from mnv2export.config import load_recipe
    from mnv2export.device import cpu_threads

    recipe = load_recipe(args.recipe)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    with cpu_threads(recipe.train.threads):
        segments = {}
        for v in variants:
            segment, batch = make_segment(v, recipe, args.steps)
            t0 = time.perf_counter()
            segment(3)  # warm-up: oneDNN primitives, torch.compile's compilation
            print(f"{v}: warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            segments[v] = (segment, batch)
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                segment, batch = segments[v]
                t0 = time.perf_counter()
                segment()
                rates[v].append(args.steps * batch / (time.perf_counter() - t0))
        threads = torch.get_num_threads()
        if args.profile > 0:
            profiled = profile_table(segments[variants[0]][0], args.profile, args.top)
    base = statistics.median(rates["recipe"]) if "recipe" in rates else None
    print(f"recipe {args.recipe}, {threads} threads, {args.steps} steps x {args.rounds} rounds\n")
    print("| variant | images/s (median) | min | max | vs recipe |\n|---|---:|---:|---:|---:|")
    for v in variants:
        med = statistics.median(rates[v])
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"| {v} | {med:.0f} | {min(rates[v]):.0f} | {max(rates[v]):.0f} | {ratio} |")
    if args.profile > 0:
        print(f"\n{variants[0]} under torch.profiler, {args.profile} steps: the {args.top} costliest operators\n")
        print(profiled)
    return 0


def profile_table(segment, steps: int, top: int) -> str:
    """``steps`` steps of ``segment`` under ``torch.profiler``: its costliest operators by input shape, as a table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        segment(steps)
    rows = prof.key_averages(group_by_input_shape=True)
    total = sum(r.self_cpu_time_total for r in rows)
    lines = ["| operator | input shapes | calls per step | self ms per step | share |", "|---|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r.self_cpu_time_total, reverse=True)[:top]:
        shapes = ", ".join(str(list(s)) for s in r.input_shapes if s)
        lines.append(
            f"| {r.key} | {shapes} | {r.count / steps:g} | {r.self_cpu_time_total / 1000 / steps:.1f} | "
            f"{r.self_cpu_time_total / total:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
