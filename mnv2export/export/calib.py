"""Calibration (and verification) images: real images through the checkpoint's own validation preprocessing.

``--calib-data`` is ``synth``, ``fashion-mnist``, an ImageFolder root (its ``train/`` split is used) or any folder
of images (searched recursively). Without it, the checkpoint's own training data is used when it is still at hand.
Images are drawn at random (seeded, so an export is repeatable) and decoded before any export work starts, so a
missing or empty source is an error before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..config import DataConfig
from ..data.folder import own_split, require_image_folder
from ..errors import DataError
from ..images import find_images
from .names import MIN_CALIB_SIZE, check_calib_size

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    images: np.ndarray  # (N, 3, H, W) float32, normalised as the model expects
    source: str  # what they were drawn from, in words (goes into the manifest)


def load_calibration(
    ckpt: Checkpoint, calib_data: str | None, size: int, *, seed: int = 0, split: str = "train"
) -> CalibrationSet:
    """``size`` INT8 calibration images from ``calib_data`` or the checkpoint's own data (fewer, said in a warning, if
    the source holds fewer readable ones); a warning below :data:`~.names.MIN_CALIB_SIZE`."""
    check_calib_size(size)
    if size < MIN_CALIB_SIZE:
        log.warning(
            "--calib-size %d is below %d, the fewest images that give INT8 activation ranges to rely on (a new "
            "image exceeds the range of n images with probability 1/(n+1)): the INT8 model may fail its check; "
            "use --calib-size %d or more",
            size,
            MIN_CALIB_SIZE,
            MIN_CALIB_SIZE,
        )
    calib = _draw(ckpt, calib_data, size, seed=seed, split=split)
    if len(calib.images) < size:
        log.warning(
            "calibration on %d images, %d asked (--calib-size): the source holds no more readable images (%s)",
            len(calib.images),
            size,
            calib.source,
        )
    return calib


def _draw(ckpt: Checkpoint, calib_data: str | None, size: int, *, seed: int, split: str) -> CalibrationSet:
    """``size`` readable images of ``split``, drawn at random (seeded), from ``calib_data`` or the checkpoint's data."""
    cfg = ckpt.data_config
    own = calib_data is None
    source = cfg.source if own else str(calib_data)
    if source in ("synth", "fashion-mnist"):
        if not own:  # keep the checkpoint's preprocessing; synth / fashion-mnist settings as the source defines them
            cfg = cfg.replace(source=source)
        return _from_builtin(cfg, size, seed, split)
    root = Path(source)
    what = "the checkpoint's training data" if own else "calibration data"
    fix = "pass {calib_data} with a folder of images (or synth)"
    require_image_folder(root, what, fix)
    folder = root / split if (root / split).is_dir() else root
    own_images = own_split(root, cfg.source, cfg.val_split, split)  # the run's own folder split by --val-split
    files = [Path(path) for path, _ in own_images] if own_images is not None else find_images(folder)
    if not files:
        raise DataError(f"{what} holds no images", path=folder, hint=fix)
    batch, errors = _decode_readable(files, size, seed, cfg)
    for err in errors[:5]:
        log.warning("calibration: skipped unreadable image %s: %s", err.path, err.reason)
    if len(errors) > 5:
        log.warning("calibration: %d more unreadable images skipped", len(errors) - 5)
    if not len(batch):
        raise DataError(f"none of the {len(files)} images of {what} could be read", path=folder, hint=fix)
    where = f"{folder} ({split} split of --val-split {cfg.val_split:g})" if own_images is not None else str(folder)
    replaced = f", {len(errors)} unreadable replaced" if errors and len(batch) == size else ""
    return CalibrationSet(batch.numpy().astype(np.float32, copy=False), f"{len(batch)} images from {where}{replaced}")


def _decode_readable(files: list[Path], size: int, seed: int, cfg: DataConfig) -> tuple[torch.Tensor, list]:
    """Up to ``size`` of ``files`` drawn at random (seeded), decoded with the validation preprocessing; each one that
    cannot be read is replaced by another, drawn from the rest in a seeded order, while any is left: (batch, errors)."""
    from ..data import load_images

    rng = np.random.default_rng(seed)
    picked = [int(i) for i in sorted(rng.choice(len(files), size=min(size, len(files)), replace=False))]
    taken = set(picked)
    spare = [int(i) for i in rng.permutation(len(files)) if int(i) not in taken]  # after the draw: it stays as it was
    batches, errors = [], []
    while picked:
        batch, _, failed = load_images([files[i] for i in picked], cfg)
        batches.append(batch)
        errors += failed
        picked, spare = spare[: len(failed)], spare[len(failed) :]
    return torch.cat(batches), errors


def _from_builtin(cfg: DataConfig, size: int, seed: int, split: str) -> CalibrationSet:
    from ..data import build_datasets
    from ..data.folder import SkippedImage

    bundle = build_datasets(cfg, augment=False)  # validation preprocessing on both splits
    ds = bundle.train if split == "train" else bundle.val
    if len(ds) == 0:
        raise DataError(f"the {cfg.source} {split} split is empty", hint="pass {calib_data} with a folder of images")
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(ds), size=min(size, len(ds)), replace=False))
    images = [img for img, _ in (ds[int(i)] for i in idx) if not isinstance(img, SkippedImage)]
    if not images:
        raise DataError(
            f"no readable image in the {cfg.source} {split} split", hint="pass {calib_data} with a folder of images"
        )
    return CalibrationSet(
        torch.stack(images).numpy().astype(np.float32, copy=False), f"{len(images)} images of {cfg.source} ({split})"
    )


def verification_inputs(ckpt: Checkpoint, calib: CalibrationSet | None, n: int = 8) -> tuple[torch.Tensor, str]:
    """A few real images to check the folded and exported models on: calibration images, else the checkpoint's own
    validation images, else (the data is not at hand) normal noise in the normalised space, said in the log."""
    if calib is not None and len(calib.images) >= 2:
        images = calib.images[:n].copy()
        return torch.from_numpy(images), f"{len(images)} calibration images ({calib.source})"
    try:
        own = _draw(ckpt, None, n, seed=0, split="val")
        if len(own.images) >= 2:
            return torch.from_numpy(own.images), own.source
    except DataError as exc:
        log.warning("the checkpoint's own images are not at hand (%s); checking the export on random inputs", exc.what)
    size = ckpt.data_config.img_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), "random normal inputs"
