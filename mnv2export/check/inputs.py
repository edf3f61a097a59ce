"""Inputs of ``check``: real images and generated tensors.

Real images come from ``data``: ``synth`` or ``fashion-mnist`` (their validation split, with the checkpoint's own
settings), a folder in ImageFolder layout (its ``val/`` split, or the folder itself when its sub-folders are the
classes), or any folder of images (searched recursively; no labels). Without ``data``, the checkpoint's own
validation data is used when it is at hand. Labels are used only when the class folders name the checkpoint's classes.
Images are drawn at random (seeded, so a check is repeatable) and decoded lazily; :meth:`RealImages.batch` applies the
validation preprocessing a given ``data_config`` (an artifact's metadata) describes, once per distinct config.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

SEED = 0


@dataclass
class RealImages:
    keys: list[Any]  # what ``load`` takes: a dataset index or a file path
    load: Callable[[Any], Any]  # key -> RGB PIL image (raises ImageReadError)
    labels: np.ndarray | None  # class index of each image in the checkpoint's classes, or None
    source: str  # in words
    note: str  # one line for the report
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self, data_config: dict[str, Any]) -> np.ndarray:
        """The images preprocessed as ``data_config`` says (N x 3 x H x W float32)."""
        key = json.dumps(data_config, sort_keys=True)
        if not self.keys:
            size = int(data_config["img_size"])
            return np.zeros((0, 3, size, size), np.float32)
        if key not in self._cache:
            from ..config import DataConfig
            from ..data import eval_transform

            transform = eval_transform(DataConfig.from_dict(data_config))
            self._cache[key] = np.stack([transform(self.load(k)).numpy() for k in self.keys]).astype(
                np.float32, copy=False
            )
        return self._cache[key]


def generated_inputs(img_size: int, n: int) -> np.ndarray:
    """``n`` N(0, 1) tensors in the normalised input space (seeded)."""
    return np.random.default_rng(SEED).standard_normal((n, 3, img_size, img_size)).astype(np.float32)


def load_real_images(ckpt, data: str | None, samples: int) -> RealImages:
    """Up to ``samples`` readable images (see the module docstring); DataError when ``data`` is given and unusable."""
    cfg = ckpt.data_config
    source = cfg.source if data is None else str(data)
    try:
        if source in ("synth", "fashion-mnist"):
            keys, load, labels, where = _builtin(ckpt, source)
        else:
            keys, load, labels, where = _folder(ckpt, Path(source), own=data is None)
    except DataError as exc:
        if data is not None:
            raise
        log.warning("the checkpoint's validation data is not at hand: %s", exc.one_line())
        return RealImages(
            [],
            lambda k: None,
            None,
            "none",
            f"no real images: the checkpoint's validation data is not at hand "
            f"({exc.what}); only generated tensors were used (pass --data)",
        )
    rng = np.random.default_rng(SEED)
    picked = sorted(int(i) for i in rng.choice(len(keys), size=min(samples, len(keys)), replace=False))
    real, unreadable = _readable(
        RealImages([keys[i] for i in picked], load, None if labels is None else labels[picked], where, ""), cfg
    )
    if not len(real):
        first = unreadable[0]
        raise DataError(
            f"none of the {len(picked)} images drawn from {where} could be read ({Path(first.path).name}: {first.reason})",
            path=source,
            hint="pass {data} with readable images",
        )
    for err in unreadable[:5]:
        log.warning("parity: skipped unreadable image %s: %s", err.path, err.reason)
    labelled = "labelled" if real.labels is not None else "no labels matching the checkpoint's classes, so no accuracy"
    skipped = len(picked) - len(real)
    real.note = (
        f"{len(real)} real images from {where} ({labelled}; drawn at random with seed {SEED}"
        f"{f'; {skipped} unreadable skipped' if skipped else ''}), each preprocessed as the artifact's own metadata says"
    )
    return real


def _builtin(ckpt, source: str):
    from ..data import build_datasets, to_rgb

    cfg = ckpt.data_config if ckpt.data_config.source == source else ckpt.data_config.replace(source=source)
    bundle = build_datasets(cfg, augment=False)
    ds = bundle.val
    ds.transform = None  # decode only; RealImages.batch applies each artifact's own preprocessing
    labels = np.asarray(ds.targets, dtype=np.int64) if list(bundle.class_names) == list(ckpt.class_names) else None
    return list(range(len(ds))), (lambda i: to_rgb(ds[i][0])), labels, f"{source} (validation split)"


def _folder(ckpt, root: Path, own: bool):
    from ..data.folder import own_split, read_class_index, require_image_folder
    from ..images import find_images, open_rgb

    what = "the checkpoint's validation data" if own else "data folder"
    fix = "pass {data} synth, fashion-mnist, an ImageFolder root or a folder of images"
    require_image_folder(root, what, fix)
    cfg = ckpt.data_config
    decode = functools.partial(open_rgb, exif_orientation=cfg.exif_orientation)  # as the model was trained
    held_out = own_split(root, cfg.source, cfg.val_split, "val")
    # the run's own folder, split by its val_split: its validation images, labelled as it trained
    if held_out is not None:
        return (
            [Path(path) for path, _ in held_out],
            decode,
            np.asarray([label for _, label in held_out], dtype=np.int64),
            f"{root} (the {len(held_out)} images --val-split {cfg.val_split:g} held out for validation)",
        )
    split = root / "val" if (root / "val").is_dir() else root
    try:
        folders = sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{what} cannot be read ({exc.strerror})", path=split, hint=fix) from None
    names = folders
    if ckpt.data_config.class_index and folders:
        try:
            names = read_class_index(ckpt.data_config.class_index, folders)
        except DataError:
            names = folders
    index = {name: i for i, name in enumerate(ckpt.class_names)}
    labelled = bool(folders) and all(n in index for n in names)
    keys, labels = [], []
    found = find_images(split)  # as training lists them; the files left out for their extension named in one warning
    if labelled:
        by_folder: dict[str, list[Path]] = {}
        for p in found:
            by_folder.setdefault(p.relative_to(split).parts[0], []).append(p)
        for folder, name in zip(folders, names):
            files = by_folder.get(folder, [])
            keys += files
            labels += [index[name]] * len(files)
    else:
        keys = found
    if not keys:
        raise DataError(f"{what} holds no images", path=split, hint=fix)
    return keys, decode, (np.asarray(labels, dtype=np.int64) if labelled else None), str(split)


def _readable(real: RealImages, cfg) -> tuple[RealImages, list[Any]]:
    """Decode every image once (with the checkpoint's preprocessing, cached), dropping those that cannot be read
    (returned second, as ImageReadError)."""
    from ..data import eval_transform
    from ..images import ImageReadError

    transform = eval_transform(cfg)
    kept, tensors, labels, unreadable = [], [], [], []
    for j, key in enumerate(real.keys):
        try:
            tensors.append(transform(real.load(key)).numpy())
        except ImageReadError as exc:
            unreadable.append(exc)
            continue
        kept.append(key)
        if real.labels is not None:
            labels.append(real.labels[j])
    out = RealImages(
        kept, real.load, None if real.labels is None else np.asarray(labels, dtype=np.int64), real.source, ""
    )
    if tensors:
        out._cache[json.dumps(cfg.to_dict(), sort_keys=True)] = np.stack(tensors).astype(np.float32, copy=False)
    return out, unreadable
