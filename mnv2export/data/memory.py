"""Batch-wise preprocessing of an image set held in memory as one uint8 tensor (Fashion-MNIST).

Per-image PIL transforms cost more than a small model on small images: through the per-sample path, Fashion-MNIST's
crops, flips and normalisations ran at ~3,900 images/s on 2 cores, 15.5 s of an 85 s epoch. Here a batch is gathered
from the uint8 tensor and preprocessed with a few tensor operations on the whole batch:

- without augmentation, exactly :func:`.transforms.eval_transform` (torchvision's own ``to_dtype`` and ``normalize``
  on the batch; the resize and centre crop are the identity, which is when this path is used at all);
- with ``crop_pad`` augmentation, the same distribution as :func:`.transforms.train_transform`: zero padding, a
  uniformly drawn crop offset per image, a horizontal flip with probability 1/2.

Randomness comes from torch's global generator, which the trainer seeds per epoch, as it does for the per-sample path.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torchvision.transforms.v2 import functional as F

from ..config import DataConfig


class MemoryImages:
    """``images`` (uint8, N x C x H x W, C = 1 or 3) and ``labels`` (N), preprocessed a batch at a time for ``cfg``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg: DataConfig, *, augment: bool):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 N x (1|3) x H x W images, got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels, self.cfg = images, labels.long(), cfg
        self.augment = augment and cfg.train_aug == "crop_pad"
        self.pad = cfg.pad if self.augment else 0
        self.hflip = self.augment and cfg.hflip

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices) -> MemoryImages:
        """These images at ``indices`` (as ``torch.utils.data.Subset`` does for a data set)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return MemoryImages(self.images[idx], self.labels[idx], self.cfg, augment=self.augment)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The preprocessed float32 batch (B x 3 x H x W, normalised) and its labels."""
        x = self.images[indices]
        if self.pad:
            x = _random_crops(F.pad(x, [self.pad] * 4, fill=0), self.images.shape[-2:])
        if self.hflip:
            flip = torch.rand(x.shape[0]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale to RGB, as the per-sample path converts it
        x = F.normalize(F.to_dtype(x, torch.float32, scale=True), mean=self.cfg.mean, std=self.cfg.std)
        return x, self.labels[indices]


def _random_crops(padded: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """One ``size`` crop per image of ``padded`` (B x C x H' x W'), offsets uniform over every position."""
    b, _, hp, wp = padded.shape
    h, w = size
    top = torch.randint(0, hp - h + 1, (b, 1))
    left = torch.randint(0, wp - w + 1, (b, 1))
    rows = (top + torch.arange(h))[:, :, None]  # B x h x 1
    cols = (left + torch.arange(w))[:, None, :]  # B x 1 x w
    # advanced indices around a slice: the indexed dimensions come first (B x h x w x C); back to B x C x h x w
    return padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def memory_images(ds, cfg: DataConfig, *, augment: bool) -> MemoryImages | None:
    """A :class:`MemoryImages` view of torchvision's MNIST-style data set ``ds`` (uint8 ``data`` N x H x W and
    ``targets``) when batch-wise preprocessing gives what ``cfg``'s transforms give, else None (the per-sample path)."""
    data, targets = getattr(ds, "data", None), getattr(ds, "targets", None)
    if (
        not isinstance(data, torch.Tensor)
        or data.dtype != torch.uint8
        or data.ndim != 3
        or not isinstance(targets, torch.Tensor)
    ):
        return None
    h, w = data.shape[-2:]
    if not (h == w == cfg.img_size == cfg.resize):
        return None  # a resize or crop would be needed: the per-sample path does it with PIL
    if augment and (cfg.train_aug not in ("crop_pad", "none") or cfg.auto_augment != "none" or cfg.random_erase > 0):
        return None  # per-image augmentations: torchvision's transforms, image by image
    return MemoryImages(data[:, None], targets, cfg, augment=augment)


class MemoryLoader:
    """Batches of a :class:`MemoryImages` in ``sampler``'s order, as ``(images, labels, skipped)`` like the
    DataLoader with :func:`..data.collate` (nothing is ever skipped: the images are decoded already)."""

    def __init__(self, images: MemoryImages, sampler, batch_size: int, *, drop_last: bool, pin_memory: bool = False):
        self.images, self.sampler, self.batch_size = images, sampler, batch_size
        self.drop_last, self.pin_memory = drop_last, pin_memory

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list]]:
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        for i in range(len(self)):
            x, y = self.images.batch(order[i * self.batch_size : (i + 1) * self.batch_size])
            if self.pin_memory:
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y, []
