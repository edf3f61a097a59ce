"""Shared fixtures: tiny configurations and a tiny trained checkpoint, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MNV2_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "mnv2-cache"))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def tiny_run_config(**train_overrides):
    """synth, 4 classes, 32 px, width 0.35: a model that trains in seconds on 2 cores.

    Built the way `mnv2 train` builds it from flags, so that it equals a CLI run with ``TINY_FLAGS``.
    """
    from mnv2export.config import run_config

    train = {"epochs": 1, "batch_size": 16, "lr": 0.05, "workers": 0, "plots": False, "progress": False, "seed": 0, "warmup_epochs": 0.0}
    train.update(train_overrides)
    return run_config(None, {"width_mult": 0.35}, {"source": "synth", "img_size": 32, "synth_classes": 4, "synth_train_per_class": 48}, train)


TINY_FLAGS = [
    "--data", "synth", "--img-size", "32", "--width", "0.35", "--synth-classes", "4", "--synth-per-class", "48",
    "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "0", "--workers", "0", "--seed", "0", "--no-plots", "--no-progress",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained tiny run folder (2 epochs): best.pt, last.pt, metrics.csv, config.json."""
    from mnv2export.train import fit

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return fit(tiny_run_config(epochs=2), run_dir=out)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run.best
