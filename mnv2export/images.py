"""Decoding one image file into an RGB PIL image, whatever its mode; a clear reason when it cannot be read.

Pillow's decompression-bomb limit stays on: an image over it is refused like any unreadable file. EXIF orientation
(a phone photo stored sideways with a tag saying how to turn it) is applied only when asked (``exif_orientation``, the
data config's setting of that name), as torchvision's ImageFolder loader leaves it and Hugging Face's ``load_image``
applies it: every reader of one model (training, check, calibration, predict) decodes alike.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# torchvision's ImageFolder list, and the formats it leaves out that Pillow reads as well: GIF (its first frame), the
# other JPEG and Netpbm names. A file with any other extension is left out, and said so (see warn_not_images).
IMG_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".gif",
    ".bmp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tif",
    ".tiff",
    ".webp",
)
EXAMPLES = 5  # files named in the warning about files that are not images

log = logging.getLogger(__name__)


class ImageReadError(Exception):
    """An image file that cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under ``folder`` (recursively) and the other files (their extension is none of
    :data:`IMG_EXTENSIONS`), each sorted; hidden files and those in hidden folders (``.ipynb_checkpoints/``) are in
    neither."""
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            (images if is_image_file(p) else others).append(p)
    return images, others


def warn_not_images(others: list[Path], root: Path) -> None:
    """One warning naming how many files were left out for their extension, the extensions and a few of the files
    (relative to ``root``): a format left out silently is a class or a share of the data missing without a word."""
    if not others:
        return
    exts = sorted({p.suffix.lower() or "(none)" for p in others})
    names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in others[:EXAMPLES]]
    more = f" and {len(others) - EXAMPLES} more" if len(others) > EXAMPLES else ""
    log.warning(
        "skipped %d file(s) with extension(s) %s in %s, not read as images: %s%s (images are the files ending in %s)",
        len(others),
        ", ".join(exts),
        root,
        ", ".join(names),
        more,
        " ".join(IMG_EXTENSIONS),
    )


def find_images(folder: Path, *, warn: bool = True) -> list[Path]:
    """The image files under ``folder`` (see :func:`list_files`); the other files named in one warning when ``warn``."""
    images, others = list_files(folder)
    if warn:
        warn_not_images(others, folder)
    return images


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: grayscale, palette, RGBA / LA (alpha dropped), CMYK, 16-bit, float."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr, initial=0.0)), float(np.nanmax(arr, initial=1.0))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(np.nan_to_num((arr - lo) * scale).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_rgb(path: str | Path, *, exif_orientation: bool = False) -> Image.Image:
    """Open, fully decode and convert to RGB; with ``exif_orientation``, turned upright as its EXIF orientation tag says
    (an unreadable EXIF block leaves the pixels as stored). Raises :class:`ImageReadError` for anything unreadable."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("error", message="Truncated File Read")  # TIFF: Pillow only warns
            with Image.open(p) as img:
                img.load()
                if exif_orientation:
                    _exif_upright(img)
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(
            p, f"image is larger than Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(p, "not an image Pillow can identify (empty, corrupt, or another format)") from None
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(p, "is a folder, not an image") from None
    except (OSError, SyntaxError, ValueError, UserWarning) as exc:
        text = str(exc).strip().splitlines()
        raise ImageReadError(p, f"cannot decode ({text[0] if text else type(exc).__name__})") from None


def _exif_upright(img: Image.Image) -> None:
    """Turn ``img`` (loaded) upright in place as its EXIF orientation tag says; no tag, or a broken one: unchanged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data": a tag it cannot read is no tag
            ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is not a corrupt image: the pixels stay as stored
        pass


SIDEWAYS_LOOK = 64  # images whose EXIF tag a training run reads to see whether the set holds sideways photos


def exif_orientation_of(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1: upright or no tag), read from its header without decoding the
    pixels; 1 for a file Pillow cannot open or an EXIF block it cannot read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - unreadable files are named when the data is read, not here
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def sideways_photos(paths: list[str], look: int = SIDEWAYS_LOOK) -> tuple[int, int]:
    """(how many carry an EXIF orientation other than upright, how many were looked at) among up to ``look`` of
    ``paths`` spread evenly over the list (a class-sorted list: every class is looked at)."""
    if not paths:
        return 0, 0
    n = min(look, len(paths))
    picked = sorted({round(i * (len(paths) - 1) / max(1, n - 1)) for i in range(n)})
    return sum(exif_orientation_of(paths[i]) != 1 for i in picked), len(picked)
