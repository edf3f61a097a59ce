"""Training images/s: `mnv2 train`'s loop against a plain hand-written loop, in one run.

Both loops train the same model (built from the recipe's [model] table) on the same images (the recipe's data set
and train augmentation, the same fixed subset of it), with the same batch size. They differ only in how the loop is
written:

- ``plain``: the loop as PyTorch's tutorials write it ("Optimizing Model Parameters", which uses Fashion-MNIST):
  ``DataLoader(ds, batch_size, shuffle=True)``, contiguous NCHW fp32, ``SGD(model.parameters(), lr, momentum)``,
  ``CrossEntropyLoss()``, torch's default thread count, ``loss.item()`` per step.
  ``plain-workers2`` is the same with ``num_workers=2`` (as in the CIFAR-10 tutorial), shown for context.
- ``mnv2``: ``mnv2export.train`` pieces exactly as ``mnv2 train`` wires them for this recipe: ``build_model``,
  ``build_optimizer``, ``build_scheduler``, ``StepContext`` (channels_last, amp from the recipe), ``make_loader``
  (the data held in memory and preprocessed a batch at a time where ``mnv2 train`` does so, as for Fashion-MNIST;
  else the recipe's workers), ``train_one_epoch`` (EMA when the recipe has it), inside ``cpu_threads(recipe threads)``.

Each timed segment trains ``--steps`` batches with a fresh loader (so a loader's start-up cost is counted, as it is
once per epoch in a real run, here once per ``--steps`` batches: a cost the trainer pays, not the plain loop when it
has no workers). One warm-up segment per loop first, then ``--rounds`` rounds in which the loops take turns; the
table shows medians. Other processes on the machine make single timings noisy: compare within one run.

    python benchmarks/train_throughput.py                       # the Fashion-MNIST CPU recipe
    python benchmarks/train_throughput.py --recipe train/fashion_mnist_cpu.toml --steps 40 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--recipe",
        default=str(ROOT / "train" / "fashion_mnist_cpu.toml"),
        help="recipe whose model, data and batch size are used",
    )
    p.add_argument(
        "--data-dir", default=None, help="Fashion-MNIST IDX folder (default: the recipe's, else Debian's package)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--steps", type=int, default=40, help="batches per timed segment")
    p.add_argument("--rounds", type=int, default=5, help="timed segments per loop (medians are reported)")
    p.add_argument("--loops", default="plain,plain-workers2,plain-1thread,mnv2", help="comma-separated loops to time")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset

    from mnv2export.config import load_recipe, run_config
    from mnv2export.data import build_datasets
    from mnv2export.device import cpu_threads
    from mnv2export.distributed import DistInfo
    from mnv2export.model import build_model
    from mnv2export.train import StepContext, amp_dtype, make_loader, train_one_epoch
    from mnv2export.train.optim import build_optimizer, build_scheduler, make_ema

    data_flags = {"data_dir": args.data_dir}
    cfg = run_config(load_recipe(args.recipe), {}, data_flags, {"batch_size": args.batch_size, "device": "cpu"})
    t = cfg.train
    device = torch.device("cpu")
    bundle = build_datasets(cfg.data)
    model_cfg = cfg.model.replace(num_classes=len(bundle.class_names))
    n_images = args.steps * t.batch_size
    g = torch.Generator().manual_seed(0)
    picked = torch.randperm(len(bundle.train), generator=g)[:n_images].tolist()
    subset = Subset(bundle.train, picked)
    memory = bundle.train_memory.subset(picked) if bundle.train_memory is not None else None  # as mnv2 train holds it
    steps_per_epoch = len(bundle.train) // t.batch_size

    # ------------------------------------------------------------------ the plain loop, as the tutorials write it
    def plain_loop(workers: int, threads: int | None):
        torch.manual_seed(0)
        model = build_model(model_cfg)
        optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def segment() -> int:
            before = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                loader = DataLoader(subset, batch_size=t.batch_size, shuffle=True, num_workers=workers)
                model.train()
                seen, running_loss = 0, 0.0
                for x, y in loader:
                    pred = model(x)
                    loss = loss_fn(pred, y)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    running_loss += loss.item()
                    seen += len(y)
                return seen
            finally:
                torch.set_num_threads(before)

        return segment

    # ------------------------------------------------------------------ mnv2 train's loop
    def mnv2_loop():
        torch.manual_seed(0)
        model = build_model(model_cfg)
        ctx = StepContext(device=device, dtype=amp_dtype(t.amp, device), channels_last=t.channels_last != "off")
        if ctx.channels_last:
            model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, t)
        sched = build_scheduler(opt, t, steps_per_epoch)
        criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        ema = make_ema(model, t)
        train_module = torch.compile(model) if t.compile else model
        epoch = [0]

        def segment() -> int:
            with cpu_threads(t.threads):
                loader = make_loader(subset, t, DistInfo(), device, train=True, epoch=epoch[0], memory=memory)
                epoch[0] += 1
                _, n = train_one_epoch(train_module, loader, opt, sched, criterion, ctx, ema=ema)
            return n

        return segment

    loops = {
        "plain": lambda: plain_loop(0, None),
        "plain-workers2": lambda: plain_loop(2, None),
        "plain-1thread": lambda: plain_loop(0, 1),
        "mnv2": mnv2_loop,
    }
    names = [n.strip() for n in args.loops.split(",") if n.strip()]
    unknown = [n for n in names if n not in loops]
    if unknown:
        print(f"error: unknown loop(s) {', '.join(unknown)}: choose from {', '.join(loops)}", file=sys.stderr)
        return 1

    rows: dict[str, dict] = {}
    segments = {}
    for name in names:
        rows[name] = {"loop": name, "ips": [], "error": None}
        try:
            segments[name] = loops[name]()
            t0 = time.perf_counter()
            segments[name]()  # warm-up: oneDNN primitive creation, allocator, first worker start
            rows[name]["warmup_s"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a failing loop becomes an error row, the others still run
            rows[name]["error"] = f"{type(exc).__name__}: {exc}"
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]  # alternate the order: neither loop always runs after the other
        for name in order:
            if rows[name]["error"]:
                continue
            try:
                t0 = time.perf_counter()
                n = segments[name]()
                rows[name]["ips"].append(n / (time.perf_counter() - t0))
            except Exception as exc:  # noqa: BLE001
                rows[name]["error"] = f"{type(exc).__name__}: {exc}"
        print(
            f"round {r + 1}/{args.rounds}: "
            + "  ".join(f"{n} {rows[n]['ips'][-1]:.0f}" for n in names if rows[n]["ips"] and not rows[n]["error"]),
            f" (load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    for row in rows.values():
        row["median_ips"] = statistics.median(row["ips"]) if row["ips"] and not row["error"] else None
    base = rows.get("plain", {}).get("median_ips")
    print()
    print(
        f"workload: {cfg.data.source} {cfg.data.img_size} px, MobileNetV2 width {model_cfg.width_mult}, small_input={model_cfg.small_input}, "
        f"stem_stride={model_cfg.effective_stem_stride}, batch {t.batch_size}, {args.steps} steps x {args.rounds} rounds"
    )
    print(
        f"mnv2 loop: channels_last={t.channels_last != 'off'} amp={t.amp} data={'in memory' if memory is not None else f'workers={t.workers}'} threads={t.threads or torch.get_num_threads()} "
        f"ema={t.ema} compile={t.compile}; torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    print()
    print("| loop | images/s (median) | min | max | vs plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows.values():
        if row["error"]:
            print(f"| {row['loop']} | error: {row['error']} | | | |")
            continue
        ratio = f"{row['median_ips'] / base:.2f}x" if base else "-"
        print(f"| {row['loop']} | {row['median_ips']:.0f} | {min(row['ips']):.0f} | {max(row['ips']):.0f} | {ratio} |")
    if base and rows.get("mnv2", {}).get("median_ips"):
        print(f"\nratio mnv2 / plain: {rows['mnv2']['median_ips'] / base:.2f}x (goal >= 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg.to_dict(), "rows": list(rows.values())}, indent=2) + "\n")
    return 0 if all(not r["error"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
