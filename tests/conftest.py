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
    """synth, 4 classes, 32 px, width 0.35: a model that trains in seconds on 2 cores."""
    from mnv2export.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    train = {"epochs": 1, "batch_size": 16, "lr": 0.05, "workers": 0, "plots": False, "progress": False, "seed": 0, "warmup_epochs": 0.0}
    train.update(train_overrides)
    return RunConfig(
        model=ModelConfig(num_classes=4, width_mult=0.35),
        data=DataConfig(source="synth", img_size=32, synth_classes=4, synth_train_per_class=48, synth_val_per_class=12),
        train=TrainConfig(**train),
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained tiny run folder (2 epochs): best.pt, last.pt, metrics.csv, config.json."""
    from mnv2export.train import fit

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return fit(tiny_run_config(epochs=2), run_dir=out)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run.best
