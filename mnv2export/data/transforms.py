"""Preprocessing derived from a :class:`DataConfig` (torchvision transforms v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from ..config import DataConfig

_INTERP = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _to_normalised_tensor(cfg: DataConfig) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=cfg.mean, std=cfg.std)]


def eval_transform(cfg: DataConfig) -> v2.Compose:
    """Validation / inference: resize the shorter side, centre crop, scale to [0, 1], normalise."""
    interp = _INTERP[cfg.interpolation]
    return v2.Compose([v2.Resize(cfg.resize, interpolation=interp, antialias=True), v2.CenterCrop(cfg.img_size), *_to_normalised_tensor(cfg)])


def train_transform(cfg: DataConfig) -> v2.Compose:
    interp = _INTERP[cfg.interpolation]
    steps: list = []
    if cfg.train_aug == "rrc":
        steps.append(v2.RandomResizedCrop(cfg.img_size, scale=tuple(cfg.rrc_scale), interpolation=interp, antialias=True))
    elif cfg.train_aug == "crop_pad":
        steps += [v2.Resize(cfg.img_size, interpolation=interp, antialias=True), v2.CenterCrop(cfg.img_size)]
        if cfg.pad:
            steps.append(v2.RandomCrop(cfg.img_size, padding=cfg.pad, fill=0))
    else:
        steps += [v2.Resize(cfg.resize, interpolation=interp, antialias=True), v2.CenterCrop(cfg.img_size)]
    if cfg.hflip and cfg.train_aug != "none":
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, *_to_normalised_tensor(cfg)])
