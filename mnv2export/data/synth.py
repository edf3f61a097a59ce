"""``synth``: a deterministic, learnable synthetic image set the package generates itself.

Each class is a (shape, texture, hue) triple: 8 shapes x 4 textures, hues spread by the golden ratio, so every pair of
classes differs by colour and most by shape or texture as well. Each image draws its position, scale, rotation,
colour jitter, background and noise from a generator seeded by (seed, split, class, index): the same image comes out
on every machine and in every worker process, and train and val never share an image.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import OutputError
from ..fileio import ensure_dir

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")
TEXTURES = ("solid", "stripes", "dots", "checker")
_SPLITS = {"train": 0, "val": 1}
_GOLDEN = 0.6180339887498949


def class_names(num_classes: int) -> list[str]:
    return [f"{k:02d}-{SHAPES[k % 8]}-{TEXTURES[(k // 8) % 4]}" for k in range(num_classes)]


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    rad = np.hypot(x, y)
    if shape == "circle":
        return rad < r
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) < r * 0.85
    if shape == "triangle":  # equilateral, pointing up in its own frame
        return (y < r * 0.5) & (np.sqrt(3) * x - y < r) & (-np.sqrt(3) * x - y < r)
    if shape == "cross":
        w = r * 0.3
        return ((np.abs(x) < w) & (np.abs(y) < r)) | ((np.abs(y) < w) & (np.abs(x) < r))
    if shape == "ring":
        return (rad < r) & (rad > r * 0.55)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) < r
    if shape == "bar":
        return (np.abs(x) < r) & (np.abs(y) < r * 0.3)
    if shape == "star":
        theta = np.arctan2(y, x)
        return rad < r * (0.55 + 0.45 * np.abs(np.cos(2.5 * theta)))
    raise ValueError(shape)


def _texture(texture: str, x: np.ndarray, y: np.ndarray, period: float, phase: float) -> np.ndarray:
    if texture == "solid":
        return np.ones_like(x)
    if texture == "stripes":
        return 0.55 + 0.45 * (np.sin((x + phase) * 2 * math.pi / period) > 0)
    if texture == "dots":
        u = np.mod(x + phase, period) - period / 2
        v = np.mod(y + phase, period) - period / 2
        return 0.5 + 0.5 * (np.hypot(u, v) < period * 0.3)
    if texture == "checker":
        return 0.55 + 0.45 * ((np.floor((x + phase) / period) + np.floor((y + phase) / period)) % 2)
    raise ValueError(texture)


def render(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``label``, ``size`` x ``size`` pixels."""
    shape, texture = SHAPES[label % 8], TEXTURES[(label // 8) % 4]
    hue = (label * _GOLDEN) % 1.0
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # [-1, 1]
    gx, gy = np.meshgrid(coords, coords)
    # the object's frame: shifted, rotated, scaled
    cx, cy = rng.uniform(-0.25, 0.25, size=2)
    angle = rng.uniform(-math.pi / 6, math.pi / 6)
    r = rng.uniform(0.45, 0.7)
    xs, ys = gx - cx, gy - cy
    x = xs * math.cos(angle) + ys * math.sin(angle)
    y = -xs * math.sin(angle) + ys * math.cos(angle)
    mask = _shape_mask(shape, x, y, r)

    fg = np.array(
        colorsys.hsv_to_rgb((hue + rng.uniform(-0.03, 0.03)) % 1.0, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)),
        dtype=np.float32,
    )
    shade = _texture(texture, x, y, period=rng.uniform(0.22, 0.32), phase=rng.uniform(0, 1))
    bg = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.1, 0.5)), dtype=np.float32)
    img = np.where(mask[..., None], fg * shade[..., None], bg)
    img = img + rng.normal(0.0, 0.06, size=img.shape).astype(np.float32)
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))


class SynthDataset(Dataset):
    """``per_class`` images of each of ``num_classes`` classes, rendered on demand (nothing kept in memory)."""

    def __init__(
        self, num_classes: int, per_class: int, size: int, split: str = "train", seed: int = 0, transform=None
    ):
        self.num_classes, self.per_class, self.size = num_classes, per_class, size
        self.split, self.seed, self.transform = split, seed, transform
        self.classes = class_names(num_classes)
        self.targets = [i // per_class for i in range(num_classes * per_class)]

    def __len__(self) -> int:
        return self.num_classes * self.per_class

    def image(self, index: int) -> Image.Image:
        label, i = divmod(index, self.per_class)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], label, i])
        return render(label, self.size, rng)

    def __getitem__(self, index: int):
        img = self.image(index)
        return (self.transform(img) if self.transform else img), self.targets[index]


def write_synth(
    out: str | Path, num_classes: int, per_class: int, size: int, val_per_class: int | None = None, seed: int = 0
) -> dict[str, int]:
    """Write the synthetic set to disk as an ImageFolder (``out/train/<class>/*.png``, ``out/val/<class>/*.png``)."""
    from ..config import DataConfig  # validates the numbers with the same bounds as --data synth

    if val_per_class is None:
        val_per_class = max(1, per_class * 3 // 10)
    DataConfig(
        synth_classes=num_classes,
        synth_train_per_class=per_class,
        synth_val_per_class=val_per_class,
        img_size=size,
        synth_seed=seed,
    )
    if Path(out).is_dir() and any(Path(out).iterdir()):  # another set's images would stay and mix with these
        raise OutputError(
            "output folder already holds files",
            path=out,
            hint="choose a new or empty folder (or remove this one first)",
        )
    root = ensure_dir(out)
    counts = {}
    for split, n in (("train", per_class), ("val", val_per_class)):
        ds = SynthDataset(num_classes, n, size, split=split, seed=seed)
        for index in range(len(ds)):
            folder = ensure_dir(root / split / ds.classes[ds.targets[index]])
            ds.image(index).save(folder / f"{index % n:05d}.png")
        counts[split] = len(ds)
    return counts
