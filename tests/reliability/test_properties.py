"""Property-based tests (hypothesis): numeric settings and the image decoder never fail in an unplanned way."""

import io
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnv2export.config import DataConfig, ModelConfig, TrainConfig
from mnv2export.errors import ConfigError
from mnv2export.images import ImageReadError, open_rgb

numbers = st.one_of(
    st.integers(min_value=-(10**9), max_value=10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(width=numbers, classes=numbers, dropout=numbers)
def test_model_settings_are_valid_or_a_config_error(width, classes, dropout):
    try:
        cfg = ModelConfig(num_classes=classes, width_mult=width, dropout=dropout)
    except ConfigError as exc:
        assert exc.hint
        return
    assert 0.35 <= cfg.width_mult <= 1.4 and 2 <= cfg.num_classes and 0 <= cfg.dropout < 1


@settings(max_examples=300, deadline=None)
@given(epochs=numbers, batch=numbers, lr=numbers, wd=numbers, smoothing=numbers, workers=numbers)
def test_train_settings_are_valid_or_a_config_error(epochs, batch, lr, wd, smoothing, workers):
    try:
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch,
            lr=lr,
            weight_decay=wd,
            label_smoothing=smoothing,
            workers=workers,
            warmup_epochs=0.0,
        )
    except ConfigError as exc:
        assert exc.hint
        return
    assert cfg.epochs >= 1 and cfg.batch_size >= 1 and math.isfinite(cfg.lr) and cfg.lr > 0 and cfg.workers >= 0


@settings(max_examples=200, deadline=None)
@given(size=numbers, resize=numbers, mean=st.lists(numbers, max_size=4), std=st.lists(numbers, max_size=4))
def test_data_settings_are_valid_or_a_config_error(size, resize, mean, std):
    try:
        cfg = DataConfig(img_size=size, resize_size=resize, mean=mean, std=std)
    except ConfigError as exc:
        assert exc.hint
        return
    assert 16 <= cfg.img_size <= cfg.resize <= 4 * cfg.img_size and all(s > 0 for s in cfg.std) and len(cfg.mean) == 3


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_decoder_on_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    try:
        img = open_rgb(path)
    except ImageReadError as exc:
        assert exc.reason
        return
    assert img.mode == "RGB"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    channels=st.sampled_from([0, 3, 4]),
    fmt=st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "WEBP"]),
    cut=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_decoder_on_real_images_cut_anywhere(tmp_path, h, w, channels, fmt, cut, seed):
    """A valid image of any mode and format, truncated at any point: RGB of the right size, or an ImageReadError."""
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 0 else (h, w, channels)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    if fmt == "JPEG" and channels == 4:
        arr = arr[..., :3]
    blob = _encode(arr, fmt)
    path = tmp_path / "img.bin"
    path.write_bytes(blob[: int(len(blob) * cut)] if cut < 1.0 else blob)
    try:
        img = open_rgb(path)
    except ImageReadError:
        assert cut < 1.0  # only a cut file may fail
        return
    assert img.mode == "RGB" and img.size == (w, h)
