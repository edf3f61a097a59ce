"""Training-step images/s of the Fashion-MNIST recipe's model against the settings that would buy more epochs.

Each variant trains the recipe's model (``[model]`` table, channels_last, SGD nesterov, label smoothing, the recipe's
thread count) on one fixed random batch, so only the step is timed, not the data: ``recipe`` as `mnv2 train` runs it,
``compile`` (``torch.compile`` of the model, inductor, compile time excluded), ``batch256`` / ``batch512``, and the
wider models ``width0.75`` / ``width1.0``. One warm-up segment per variant, then ``--rounds`` rounds in which the
variants take turns; the table shows median images/s and the ratio to ``recipe``. Compare within one run.

    python benchmarks/train_step_variants.py                  # all variants, 40 steps x 3 rounds
    python benchmarks/train_step_variants.py --variants recipe,compile --steps 40 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("recipe", "compile", "batch256", "batch512", "width0.75", "width1.0")


def make_step(variant: str, recipe):
    import torch
    from torch import nn

    from mnv2export.model import build_model
    from mnv2export.train import build_optimizer

    cfg, t = recipe.model, recipe.train
    batch = int(variant.removeprefix("batch")) if variant.startswith("batch") else t.batch_size
    if variant.startswith("width"):
        cfg = cfg.replace(width_mult=float(variant.removeprefix("width")))
    model = build_model(cfg).to(memory_format=torch.channels_last).train()
    forward = torch.compile(model) if variant == "compile" else model
    opt = build_optimizer(model, t)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    size = recipe.data.img_size
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.num_classes, (batch,))

    def step() -> None:
        loss = loss_fn(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "train" / "fashion_mnist_cpu.toml"))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}")

    import torch

    from mnv2export.config import load_recipe
    from mnv2export.device import cpu_threads

    recipe = load_recipe(args.recipe)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    with cpu_threads(recipe.train.threads):
        steps = {}
        for v in variants:
            step, batch = make_step(v, recipe)
            t0 = time.perf_counter()
            for _ in range(3):
                step()  # warm-up: oneDNN primitives, torch.compile's compilation
            print(f"{v}: warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            steps[v] = (step, batch)
        for r in range(args.rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                step, batch = steps[v]
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[v].append(args.steps * batch / (time.perf_counter() - t0))
        threads = torch.get_num_threads()
    base = statistics.median(rates["recipe"]) if "recipe" in rates else None
    print(f"recipe {args.recipe}, {threads} threads, {args.steps} steps x {args.rounds} rounds\n")
    print("| variant | images/s (median) | min | max | vs recipe |\n|---|---:|---:|---:|---:|")
    for v in variants:
        med = statistics.median(rates[v])
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"| {v} | {med:.0f} | {min(rates[v]):.0f} | {max(rates[v]):.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
