"""What each per-image augmentation costs the data path: training images/s of a recipe's training set as `mnv2 train`
preprocesses it, without and with `--random-erase` and each `--auto-augment` policy, in one run.

The recipe's own setting first (for Fashion-MNIST: held in memory and augmented a batch at a time); every other row
goes through torchvision's per-image transforms, as `mnv2 train` does once such an option is on, on the calling thread
(one intra-op thread: what one DataLoader worker does). The rows take turns over `--rounds` rounds; the table shows
medians, and the seconds a 60,000-image epoch would spend on it. Other processes on the machine make single timings
noisy: compare within one run.

    python benchmarks/augment_cost.py                                   # the Fashion-MNIST CPU recipe, 5,000 images
    python benchmarks/augment_cost.py --recipe train/fashion_mnist_cpu.toml --images 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mnv2export.config import load_recipe, run_config
from mnv2export.data import build_datasets

VARIANTS = {
    "recipe": {},
    "random_erase 0.25": {"random_erase": 0.25},
    "ta_wide": {"auto_augment": "ta_wide"},
    "ra": {"auto_augment": "ra"},
    "augmix": {"auto_augment": "augmix"},
    "imagenet": {"auto_augment": "imagenet"},
}


def images_per_second(bundle, n: int) -> float:
    start = time.perf_counter()
    if bundle.train_memory is not None:
        for i in range(0, n, 256):
            bundle.train_memory.batch(torch.arange(i, min(i + 256, n)))
    else:
        for i in range(n):
            bundle.train[i]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="train/fashion_mnist_cpu.toml")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_recipe(args.recipe)
    bundles = {name: build_datasets(run_config(base, {}, extra, {}).data) for name, extra in VARIANTS.items()}
    n = min(args.images, len(bundles["recipe"].train))
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, bundle in bundles.items():
            rates[name].append(images_per_second(bundle, n))
    recipe = statistics.median(rates["recipe"])
    print(f"{args.recipe}: {n} training images, {args.rounds} rounds, 1 thread")
    print("| variant | path | images/s (median) | s per 60,000 images | vs recipe |")
    print("|---|---|---:|---:|---:|")
    for name, values in rates.items():
        rate = statistics.median(values)
        path = "in memory, by batch" if bundles[name].train_memory is not None else "per image"
        print(f"| {name} | {path} | {rate:,.0f} | {60000 / rate:.1f} | {rate / recipe:.3f}x |")


if __name__ == "__main__":
    main()
