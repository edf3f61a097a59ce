"""Preprocessing derived from a :class:`DataConfig` (torchvision transforms v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from ..config import DataConfig

_INTERP = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def _to_normalised_tensor(cfg: DataConfig) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=cfg.mean, std=cfg.std)]


def eval_transform(cfg: DataConfig) -> v2.Compose:
    """Validation / inference: resize the shorter side, centre crop, scale to [0, 1], normalise."""
    interp = _INTERP[cfg.interpolation]
    return v2.Compose(
        [
            v2.Resize(cfg.resize, interpolation=interp, antialias=True),
            v2.CenterCrop(cfg.img_size),
            *_to_normalised_tensor(cfg),
        ]
    )


def preprocessing_spec(cfg: DataConfig) -> dict:
    """What :func:`eval_transform` does to an image file, spelled out for a service that runs an exported artifact
    without mnv2export (as Hugging Face's ``preprocessor_config.json`` does): every artifact embeds it as
    ``preprocessing``. README, "Serving an artifact without mnv2export", implements it in a few lines of Pillow and
    NumPy; a test runs that code against ``mnv2 predict``."""
    return {
        "library": "Pillow images through torchvision.transforms.v2 (Resize, CenterCrop, ToDtype, Normalize)",
        "decode": (
            "Pillow, "
            + (
                "turned upright by PIL.ImageOps.exif_transpose (the EXIF orientation tag; an unreadable "
                "EXIF block: as stored), "
                if cfg.exif_orientation
                else ""
            )
            + "then 8-bit RGB: grayscale, palette and CMYK by Image.convert('RGB'); RGBA and LA: alpha dropped, not "
            "composited; 16-bit grayscale (I;16): value * 255 / 65535, rounded"
            + ("" if cfg.exif_orientation else "; EXIF orientation not applied (as torchvision's ImageFolder loader)")
        ),
        "exif_orientation": cfg.exif_orientation,
        "channel_order": "RGB",
        "resize": {
            "edge": "shorter",
            "size": cfg.resize,
            "interpolation": cfg.interpolation,
            "antialias": True,
            "longer_edge": "int(size * longer / shorter): truncated, not rounded",
        },
        "center_crop": [cfg.img_size, cfg.img_size],
        "crop_offset": "int(round((resized - crop) / 2)) on each axis, as torchvision's center_crop",
        "rescale_factor": 1 / 255,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "normalize": "(pixel * rescale_factor - mean) / std, per channel",
        "layout": "NCHW",
        "dtype": "float32 (for the FP16 model too: it casts inside)",
        "output": "logits, N x num_classes in class_names order: softmax over the classes gives probabilities",
    }


def train_transform(cfg: DataConfig) -> v2.Compose:
    interp = _INTERP[cfg.interpolation]
    steps: list = []
    if cfg.train_aug == "rrc":
        steps.append(
            v2.RandomResizedCrop(cfg.img_size, scale=tuple(cfg.rrc_scale), interpolation=interp, antialias=True)
        )
    elif cfg.train_aug == "crop_pad":
        steps += [v2.Resize(cfg.img_size, interpolation=interp, antialias=True), v2.CenterCrop(cfg.img_size)]
        if cfg.pad:
            steps.append(v2.RandomCrop(cfg.img_size, padding=cfg.pad, fill=0))
    else:
        steps += [v2.Resize(cfg.resize, interpolation=interp, antialias=True), v2.CenterCrop(cfg.img_size)]
    if cfg.hflip and cfg.train_aug != "none":
        steps.append(v2.RandomHorizontalFlip())
    if cfg.auto_augment != "none":
        steps.append(auto_augment(cfg.auto_augment, interp))
    erase = [v2.RandomErasing(p=cfg.random_erase, value=0)] if cfg.random_erase > 0 else []
    return v2.Compose([*steps, *_to_normalised_tensor(cfg), *erase])


def auto_augment(name: str, interpolation: InterpolationMode) -> v2.Transform:
    """torchvision's policy ``name`` (the names of its classification reference scripts), at its default strength; on
    8-bit images, after the crop and flip."""
    if name == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=interpolation)
    if name == "ra":
        return v2.RandAugment(interpolation=interpolation)
    if name == "augmix":
        return v2.AugMix(interpolation=interpolation)
    return v2.AutoAugment(v2.AutoAugmentPolicy(name), interpolation=interpolation)


def batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """MixUp, CutMix or one of the two per batch at even odds (as torchvision's classification reference does), for a
    batch of normalised images and integer labels; it returns the mixed images and soft labels (B x num_classes),
    which ``nn.CrossEntropyLoss`` takes as class probabilities (label smoothing still applies). None when both alphas
    are 0. Its randomness is torch's global generator, which the trainer seeds and a resume restores."""
    mixes = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + (
        [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
    )
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
