"""How well trained checkpoints fit their data, without training: top-1 on the training images (un-augmented, through
the evaluation preprocessing) beside top-1 on the validation set, and, with ``--bn-reestimate``, the validation top-1
after the BatchNorm running statistics are re-estimated over one pass of all the training images, clean and augmented
(``torch.optim.swa_utils.update_bn``: every BatchNorm reset, then a cumulative average over the pass; unlike a
training epoch, the pass keeps the last partial batch).

Used for the Fashion-MNIST recipe (benchmarks/RESULTS.md): is the model underfitting or overfitting, and do the running
statistics it was trained with (on padded, shifted crops) fit centred test images?

    python benchmarks/checkpoint_fit.py weights/fashion-mnist/best.pt
    python benchmarks/checkpoint_fit.py /tmp/fm/B15s*/best.pt --bn-reestimate --threads 1
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "checkpoints", nargs="+", help="best.pt / last.pt files of one data set held in memory (Fashion-MNIST)"
    )
    ap.add_argument(
        "--bn-reestimate", action="store_true", help="also re-estimate the BatchNorm statistics (~25 s per pass)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    import torch
    from torch.optim.swa_utils import update_bn

    from mnv2export import distributed as D
    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.config import TrainConfig
    from mnv2export.data import MemoryImages, build_datasets
    from mnv2export.data.memory import MemoryLoader
    from mnv2export.train import StepContext, evaluate, make_loader

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ctx = StepContext(device=device, dtype=None, channels_last=True)
    cfg = TrainConfig(batch_size=args.batch_size)

    def in_order(memory):
        """The trainer's own evaluation loader over ``memory``."""
        return make_loader(memory, cfg, D.DistInfo(), device, train=False, memory=memory)

    def every_image(memory):
        """Shuffled batches of every image, the last partial batch included (the training loader drops it)."""
        return MemoryLoader(memory, torch.utils.data.RandomSampler(memory), cfg.batch_size, drop_last=False)

    first = load_checkpoint(args.checkpoints[0])
    data = build_datasets(first.data_config, augment=False)
    clean = data.train_memory
    if clean is None:
        raise SystemExit("error: these checkpoints' data is not held in memory (only Fashion-MNIST at 28 px is)")
    augmented = MemoryImages(clean.images, clean.labels, first.data_config, augment=True)
    num_classes = first.model_config.num_classes

    def top1(model, memory) -> str:
        return f"{100.0 * evaluate(model, in_order(memory), ctx, num_classes)['val_acc']:.2f}%"

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
        row = [path, top1(model, clean), top1(model, data.val_memory)]
        for memory in (clean, augmented) if args.bn_reestimate else ():
            model = ckpt.build_model().to(memory_format=torch.channels_last)
            torch.manual_seed(0)  # the crops and flips of the augmented pass
            t0 = time.perf_counter()
            update_bn(every_image(memory), model)  # takes each batch's first element: the images
            row.append(f"{top1(model, data.val_memory)} ({time.perf_counter() - t0:.0f} s)")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
