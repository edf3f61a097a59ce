"""How well trained checkpoints fit their data, without training: top-1 on the training images (un-augmented, through
the evaluation preprocessing) beside top-1 on the validation set, and, with ``--bn-reestimate``, the validation top-1
after the BatchNorm running statistics are re-estimated over one pass of the training images, clean and augmented
(``torch.optim.swa_utils.update_bn``: every BatchNorm reset, then a cumulative average over the pass).

Used for the Fashion-MNIST recipe (benchmarks/RESULTS.md): is the model underfitting or overfitting, and do the running
statistics it was trained with (on padded, shifted crops) fit centred test images?

    python benchmarks/checkpoint_fit.py weights/fashion-mnist/best.pt
    python benchmarks/checkpoint_fit.py /tmp/fm/B15s*/best.pt --bn-reestimate --threads 1
"""

from __future__ import annotations

import argparse
import time


def top1(model, memory, batch_size: int) -> float:
    """Top-1 (%) of ``model`` on ``memory`` through the trainer's own loader and ``evaluate``."""
    import torch

    from mnv2export.config import TrainConfig
    from mnv2export.train import StepContext, evaluate, make_loader
    from mnv2export import distributed as D

    device = torch.device("cpu")
    loader = make_loader(memory, TrainConfig(batch_size=batch_size), D.DistInfo(), device, train=False, memory=memory)
    ctx = StepContext(device=device, dtype=None, channels_last=True)
    return 100.0 * evaluate(model, loader, ctx, len(memory.labels.unique()))["val_acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="best.pt / last.pt files of one data set held in memory (Fashion-MNIST)")
    ap.add_argument("--bn-reestimate", action="store_true", help="also re-estimate the BatchNorm statistics (~25 s per pass)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    import torch
    from torch.optim.swa_utils import update_bn

    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.data import build_datasets
    from mnv2export.config import TrainConfig
    from mnv2export.train import make_loader
    from mnv2export import distributed as D

    torch.set_num_threads(args.threads)
    first = load_checkpoint(args.checkpoints[0])
    clean = build_datasets(first.data_config, augment=False)
    augmented = build_datasets(first.data_config, augment=True) if args.bn_reestimate else None
    if clean.train_memory is None:
        raise SystemExit("error: these checkpoints' data is not held in memory (only Fashion-MNIST at 28 px is)")

    header = "| checkpoint | train top-1 (clean) | val top-1 |"
    if args.bn_reestimate:
        header += " val, BN from clean train | val, BN from augmented train |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        if ckpt.data_config != first.data_config:
            raise SystemExit(f"error: {path} was trained on other data than {args.checkpoints[0]}")
        model = ckpt.build_model().to(memory_format=torch.channels_last)
        row = [path, f"{top1(model, clean.train_memory, args.batch_size):.2f}%", f"{top1(model, clean.val_memory, args.batch_size):.2f}%"]
        if args.bn_reestimate:
            for memory in (clean.train_memory, augmented.train_memory):
                model = ckpt.build_model().to(memory_format=torch.channels_last)
                torch.manual_seed(0)  # the crops and flips of the augmented pass
                loader = make_loader(memory, TrainConfig(batch_size=args.batch_size), D.DistInfo(), torch.device("cpu"), train=True, memory=memory)
                t0 = time.perf_counter()
                update_bn(((x.contiguous(memory_format=torch.channels_last), y) for x, y, _ in loader), model)
                row.append(f"{top1(model, clean.val_memory, args.batch_size):.2f}% ({time.perf_counter() - t0:.0f} s)")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
