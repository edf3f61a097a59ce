"""Data sets built from a :class:`DataConfig`: an ImageFolder tree, ``synth`` or ``fashion-mnist``."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from ..fileio import require_data_folder
from ..images import ImageReadError, find_images, open_rgb, sideways_photos, to_rgb, warn_not_images
from .folder import (
    FolderDataset,
    SkippedImage,
    check_same_classes,
    fingerprint,
    read_class_index,
    scan_split,
    split_classes,
)
from .memory import MemoryImages, memory_images
from .transforms import eval_transform, train_transform

log = logging.getLogger(__name__)

__all__ = [
    "DataBundle",
    "ImageReadError",
    "SkipTracker",
    "build_datasets",
    "collate",
    "eval_transform",
    "find_images",
    "open_rgb",
    "train_transform",
    "load_images",
    "warn_if_sideways",
]


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    class_names: list[str]
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)
    # the same splits held in memory and preprocessed a batch at a time, where that gives the same tensors
    # (Fashion-MNIST at its own size): what the trainer iterates when present. See memory.py.
    train_memory: MemoryImages | None = None
    val_memory: MemoryImages | None = None


class _RGB:
    """Convert to RGB before the torchvision transforms (Fashion-MNIST's PIL images are grayscale)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(to_rgb(img))


def build_datasets(cfg: DataConfig, *, augment: bool = True) -> DataBundle:
    """Train and val data sets for ``cfg``, with the transforms it implies (train augmentation when ``augment``)."""
    t_train = train_transform(cfg) if augment else eval_transform(cfg)
    t_val = eval_transform(cfg)
    if cfg.source == "synth":
        from .synth import SynthDataset

        train = SynthDataset(
            cfg.synth_classes, cfg.synth_train_per_class, cfg.img_size, "train", cfg.synth_seed, t_train
        )
        val = SynthDataset(cfg.synth_classes, cfg.synth_val_per_class, cfg.img_size, "val", cfg.synth_seed, t_val)
        fp = hashlib.sha256(
            json.dumps(
                [
                    "synth",
                    cfg.synth_classes,
                    cfg.synth_train_per_class,
                    cfg.synth_val_per_class,
                    cfg.img_size,
                    cfg.synth_seed,
                ]
            ).encode()
        ).hexdigest()
        names = train.classes
    elif cfg.source == "fashion-mnist":
        from .fashion import CLASS_NAMES, fashion_mnist

        train, val, fp = fashion_mnist(cfg.data_dir, _RGB(t_train), _RGB(t_val))
        names = list(CLASS_NAMES)
    else:
        root = require_data_folder(cfg.source)
        not_images: list[Path] = []  # files left out for their extension, in both splits: named in one warning
        if cfg.val_split:
            train_classes, train_samples, val_samples = split_classes(root, cfg.val_split, not_images)
            val_classes = train_classes
        else:
            train_classes, train_samples = scan_split(root, "train", not_images)
            val_classes, val_samples = scan_split(root, "val", not_images)
            check_same_classes(train_classes, val_classes, root)
        warn_not_images(not_images, root)
        names = read_class_index(cfg.class_index, train_classes) if cfg.class_index else train_classes
        train = FolderDataset(train_samples, train_classes, t_train, exif_orientation=cfg.exif_orientation)
        val = FolderDataset(val_samples, val_classes, t_val, exif_orientation=cfg.exif_orientation)
        fp = fingerprint(train_samples + val_samples, root)
    summary = {"source": cfg.source, "num_classes": len(names), "train_images": len(train), "val_images": len(val)}
    log.info("data %s: %d classes, %d train / %d val images", cfg.source, len(names), len(train), len(val))
    bundle = DataBundle(train=train, val=val, class_names=names, fingerprint=fp, summary=summary)
    if cfg.source == "fashion-mnist":
        bundle.train_memory = memory_images(train, cfg, augment=augment)
        bundle.val_memory = memory_images(val, cfg, augment=False)
    return bundle


def collate(batch: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor, list[SkippedImage]]:
    """Stack a batch, leaving out the images that could not be decoded (returned third, to be reported)."""
    skipped = [img for img, _ in batch if isinstance(img, SkippedImage)]
    kept = [(img, label) for img, label in batch if not isinstance(img, SkippedImage)]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([img for img, _ in kept])
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)
    return images, labels, skipped


class SkipTracker:
    """Names each unreadable image once in a warning and counts them.

    ``defer`` (under DDP, where each rank meets its own share of the images): :meth:`add` only notes the images this
    rank had not met yet; :meth:`merge` takes every rank's notes (gathered by the caller) and names each new image once.
    """

    def __init__(self, defer: bool = False) -> None:
        self.paths: dict[str, str] = {}
        self.defer = defer
        self.pending: dict[str, str] = {}

    def add(self, skipped: list[SkippedImage]) -> None:
        for s in skipped:
            if s.path not in self.paths and s.path not in self.pending:
                if self.defer:
                    self.pending[s.path] = s.reason
                    continue
                self.paths[s.path] = s.reason
                log.warning("skipped unreadable image %s: %s", s.path, s.reason)

    def merge(self, pending_of_every_rank: list[dict[str, str]], *, warn: bool) -> None:
        """Add the images every rank noted since the last merge (in rank order), each named once when ``warn``."""
        for pending in pending_of_every_rank:
            for path, reason in pending.items():
                if path not in self.paths:
                    self.paths[path] = reason
                    if warn:
                        log.warning("skipped unreadable image %s: %s", path, reason)
        self.pending = {}

    @property
    def count(self) -> int:
        return len(self.paths)


def load_images(paths: list[str | Path], cfg: DataConfig) -> tuple[torch.Tensor, list[str], list[ImageReadError]]:
    """Decode and preprocess image files (the validation transform): (batch, kept paths, errors for the rest)."""
    transform = eval_transform(cfg)
    tensors, kept, errors = [], [], []
    for path in paths:
        try:
            tensors.append(transform(open_rgb(path, exif_orientation=cfg.exif_orientation)))
            kept.append(str(path))
        except ImageReadError as exc:
            errors.append(exc)
    batch = torch.stack(tensors) if tensors else torch.empty(0, 3, cfg.img_size, cfg.img_size)
    return batch, kept, errors


def warn_if_sideways(bundle: DataBundle, cfg: DataConfig) -> None:
    """Warn when a folder's training images carry EXIF orientation tags that will not be applied: photos a phone stored
    sideways would train as stored, and ``--exif-orientation`` may be what the user wants. Reads up to
    :data:`~mnv2export.images.SIDEWAYS_LOOK` file headers, spread over the classes."""
    if cfg.exif_orientation or not isinstance(bundle.train, FolderDataset):
        return
    sideways, looked = sideways_photos([path for path, _ in bundle.train.samples])
    if sideways:
        log.warning(
            "%d of %d training images looked at carry an EXIF orientation tag (photos stored sideways, as phones do): "
            "they train as stored; pass --exif-orientation to train on them upright",
            sideways,
            looked,
        )
