"""Write a small image folder cut from Fashion-MNIST, for trying augmentation and regularisation where data is short:
the first ``--per-class`` training images of each class (official training set), the first ``--val-per-class`` of
each class of the official test set for validation; 28 px grayscale PNGs in ImageFolder layout, class folders named
``<label>-<class name>`` (so that their sorted order is Fashion-MNIST's label order). Reads the same files as ``--data fashion-mnist`` (``--data-dir``, else Debian's package).

    python benchmarks/fashion_subset.py data/fashion-1k                  # 100 per class to train, 200 to validate
    mnv2 train --config benchmarks/fashion_1k.toml --out weights/fm1k    # the recipe that trains on it
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from mnv2export.data.fashion import CLASS_NAMES, fashion_mnist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=200)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: {args.out} is not empty: pass a new folder")
    train, test, _ = fashion_mnist(args.data_dir, None, None)
    for split, ds, per in (("train", train, args.per_class), ("val", test, args.val_per_class)):
        counts = [0] * len(CLASS_NAMES)
        for img, label in zip(ds.data, ds.targets.tolist()):
            if counts[label] < per:
                counts[label] += 1
                folder = args.out / split / f"{label}-{CLASS_NAMES[label].replace('/', '-')}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img.numpy()).save(folder / f"{counts[label]:04d}.png")
        print(f"{split}: {sum(counts)} images, {min(counts)}-{max(counts)} per class")


if __name__ == "__main__":
    main()
