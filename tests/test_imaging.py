"""mnv2export.imaging (Pillow + NumPy) gives the input tensor of the torchvision eval transform it stands in for."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mnv2export.config import DataConfig
from mnv2export.imaging import center_crop, load_batch, resize_shorter, resized_size

MODES = ["L", "RGB", "RGBA", "CMYK", "I;16", "I", "P", "P+transparency", "LA", "1", "F"]
# the data tests' sizes (30x20, 20x20, 36x36, 300x300), and smaller than the crop, equal, wide, tall, odd
SIZES = [(30, 20), (20, 20), (36, 36), (300, 300), (32, 32), (50, 37), (23, 61), (33, 32), (17, 45)]
CONFIGS = {
    "as-trained-32": {"img_size": 32},  # resize 32: only the longer side changes, then the crop
    "resize-41-bicubic": {"img_size": 32, "resize_size": 41, "interpolation": "bicubic"},
    "nearest-odd-crop": {"img_size": 33, "resize_size": 40, "interpolation": "nearest"},
    "imagenet-72": {"img_size": 72},  # resize floor(72 / 0.875) = 82, ImageNet mean / std
    "own-mean-std": {"img_size": 28, "mean": [0.286] * 3, "std": [0.353] * 3},
}


def _image(mode: str, size: tuple[int, int]) -> Image.Image:
    """A gradient with texture (so resizing and cropping show) in ``mode``, from 8-bit, 16-bit, int32 or float data."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    gray = (x * 7 + y * 13 + (x * y) % 11) / (w * 7 + h * 13 + 10)
    if mode == "RGB":
        return Image.fromarray((np.stack([gray, 1 - gray, (x % 5) / 4], axis=-1) * 255).astype(np.uint8))
    if mode == "I;16":
        return Image.fromarray((gray * 65535).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((gray * 65535).astype(np.int32))
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32))
    rgb = _image("RGB", size)
    if mode == "P+transparency":
        img = rgb.convert("P")
        img.info["transparency"] = 0
        return img
    if mode in ("L", "LA", "1", "RGBA", "CMYK", "P"):
        return rgb.convert(mode)
    raise AssertionError(mode)


def _save(img: Image.Image, path, exif_tag: int | None = None):
    kw = {}
    if exif_tag is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_tag
        kw["exif"] = exif
    img.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    """Every mode at every size (TIFF for the 16-bit, 32-bit and CMYK modes, PNG else), JPEGs of three modes, and
    photos stored sideways with EXIF orientation tags 3, 6 and 8 (PNG and JPEG)."""
    folder = tmp_path_factory.mktemp("imaging")
    files = []
    for mode in MODES:
        for w, h in SIZES:
            ext = "tif" if mode in ("I;16", "I", "F", "CMYK") else "png"
            files.append(
                _save(_image(mode, (w, h)), folder / f"{mode.replace(';', '_').replace('+', '_')}_{w}x{h}.{ext}")
            )
    for mode in ("RGB", "L", "CMYK"):
        _image(mode, (45, 31)).save(folder / f"jpeg_{mode}.jpg", quality=90)
        files.append(folder / f"jpeg_{mode}.jpg")
    for tag, turn in ((3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)):
        sideways = _image("RGB", (30, 47)).transpose(turn)
        files.append(_save(sideways, folder / f"phone_{tag}.png", tag))
        files.append(_save(sideways, folder / f"phone_{tag}.jpg", tag))
    return [str(f) for f in files]


@pytest.mark.parametrize("exif_orientation", [False, True], ids=["exif-off", "exif-on"])
@pytest.mark.parametrize("settings", CONFIGS.values(), ids=CONFIGS.keys())
def test_load_batch_is_the_torchvision_eval_transform(image_files, settings, exif_orientation):
    """Every mode, size and EXIF orientation of the data tests: the same decoded files, the same kept paths, the same
    float32 tensor to 1e-6, as data.load_images (torchvision's Resize, CenterCrop, ToDtype, Normalize)."""
    from mnv2export.data import load_images

    cfg = DataConfig(source="photos", exif_orientation=exif_orientation, **settings)
    mine, kept, errors = load_batch(image_files, cfg)
    theirs, their_kept, their_errors = load_images(image_files, cfg)
    assert kept == their_kept == image_files and not errors and not their_errors
    assert mine.dtype == np.float32 and mine.shape == tuple(theirs.shape) == (
        len(image_files),
        3,
        cfg.img_size,
        cfg.img_size,
    )
    assert mine.flags["C_CONTIGUOUS"]
    worst = np.abs(mine - theirs.numpy()).max()
    assert worst <= 1e-6, (
        f"{worst:.3g} at {image_files[int(np.abs(mine - theirs.numpy()).reshape(len(mine), -1).max(1).argmax())]}"
    )


def test_unreadable_files_are_named_as_data_load_images_names_them(tmp_path, image_files):
    from mnv2export.data import load_images

    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    paths = [str(tmp_path / "empty.png"), image_files[0], str(tmp_path / "missing.png"), str(tmp_path / "text.jpg")]
    cfg = DataConfig(source="photos", img_size=32)
    batch, kept, errors = load_batch(paths, cfg)
    _, their_kept, their_errors = load_images(paths, cfg)
    assert batch.shape == (1, 3, 32, 32) and kept == their_kept == [image_files[0]]
    assert [(e.path, e.reason) for e in errors] == [(e.path, e.reason) for e in their_errors] and len(errors) == 3
    nothing, kept, errors = load_batch(paths[2:], cfg)
    assert nothing.shape == (0, 3, 32, 32) and nothing.dtype == np.float32 and kept == [] and len(errors) == 2


def test_resize_and_crop_sizes_and_offsets_are_torchvisions():
    """Sizes 1-40 px against 16-40 px targets: the truncated longer side, the half-to-even crop offsets (an odd
    difference lands on x.5) and the black padding of a crop larger than the image, pixel for pixel."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(0)
    for w in range(1, 41, 3):
        for h in range(1, 41, 4):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for size in (16, 23, 32, 40):
                theirs = F.resize(img, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
                assert resized_size(w, h, size) == theirs.size
                assert np.array_equal(np.asarray(resize_shorter(img, size, "bilinear")), np.asarray(theirs))
                assert np.array_equal(
                    np.asarray(center_crop(img, size)), np.asarray(F.center_crop(img, [size, size]))
                ), (w, h, size)
