"""An artifact's validation preprocessing in Pillow and NumPy: what :func:`mnv2export.data.transforms.eval_transform`
does through torchvision, without torch, so that ``predict`` of an ONNX file runs on an install without it.

Each step is torchvision's own for PIL images (transforms v2), in its own arithmetic:

- resize: the shorter side to ``DataConfig.resize``, the longer to ``int(size * longer / shorter)`` (truncated), by
  ``PIL.Image.resize`` with the config's filter, which is what torchvision calls for a PIL image (Pillow's filters
  always antialias); an image already at that size is left as it is;
- centre crop: offsets ``int(round((side - crop) / 2))`` (Python's round: half to even), and a crop larger than the
  image first pads it with black, ``(crop - side) // 2`` before and the rest after;
- float32 scaled by ``1 / 255``, then ``(x - mean) / std`` per channel, in float32; HWC to CHW; batches stacked NCHW.

The images are decoded by the one decoder every reader shares (:func:`mnv2export.images.open_rgb`: every mode to
RGB, EXIF orientation when the config says so). tests/test_imaging.py holds the result to torchvision's within 1e-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .config import DataConfig
from .images import ImageReadError, open_rgb

# torchvision's pil_modes_mapping for the interpolations a DataConfig accepts
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side at ``size`` and the longer scaled alike, truncated as torchvision does."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_shorter(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    new = resized_size(img.width, img.height, size)
    return img if new == img.size else img.resize(new, resample=RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` x ``size`` of ``img``; black borders where the image is smaller (torchvision pads first)."""
    if size > img.width or size > img.height:
        pad_left, pad_top = max(0, size - img.width) // 2, max(0, size - img.height) // 2
        canvas = Image.new(img.mode, (max(size, img.width), max(size, img.height)))  # zeros: torchvision's fill=0
        canvas.paste(img, (pad_left, pad_top))
        img = canvas
    top = round((img.height - size) / 2.0)  # Python's round, half to even, as torchvision's int(round(...))
    left = round((img.width - size) / 2.0)
    return img if (img.width, img.height) == (size, size) else img.crop((left, top, left + size, top + size))


def normalised_chw(img: Image.Image, mean: list[float], std: list[float]) -> np.ndarray:
    """An 8-bit RGB image as float32 C x H x W: scaled by 1/255, then (x - mean) / std per channel."""
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) * np.float32(1.0 / 255)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(img: Image.Image, cfg: DataConfig) -> np.ndarray:
    """One decoded RGB image as the model's float32 3 x img_size x img_size input (``eval_transform(cfg)``)."""
    img = center_crop(resize_shorter(img, cfg.resize, cfg.interpolation), cfg.img_size)
    return normalised_chw(img, cfg.mean, cfg.std)


def load_batch(paths: list[str | Path], cfg: DataConfig) -> tuple[np.ndarray, list[str], list[ImageReadError]]:
    """Decode and preprocess image files as ``data.load_images`` does: (float32 N x 3 x H x W batch, the paths kept,
    an :class:`ImageReadError` for each file that could not be read)."""
    arrays, kept, errors = [], [], []
    for path in paths:
        try:
            arrays.append(preprocess_image(open_rgb(path, exif_orientation=cfg.exif_orientation), cfg))
            kept.append(str(path))
        except ImageReadError as exc:
            errors.append(exc)
    if not arrays:
        return np.empty((0, 3, cfg.img_size, cfg.img_size), dtype=np.float32), kept, errors
    return np.stack(arrays), kept, errors
