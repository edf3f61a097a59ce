"""The recipes in train/: every one loads and validates, and the Fashion-MNIST one trains end to end (1 epoch on a
tiny generated IDX data set, through the CLI)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fashion_idx

from mnv2export.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, RunConfig, load_recipe, run_config
from mnv2export.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "train").glob("*.toml"))
FASHION = ROOT / "train" / "fashion_mnist_cpu.toml"
IMAGENET20 = ROOT / "train" / "imagenet20_224.toml"


def test_the_two_reference_recipes_exist():
    assert FASHION in RECIPES and IMAGENET20 in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_and_builds(path):
    import torch

    from mnv2export.model import build_model

    recipe = load_recipe(path)
    assert isinstance(recipe, RunConfig)
    cfg = run_config(recipe, {}, {}, {})  # as `mnv2 train --config` resolves it, no flags
    assert cfg == recipe
    # a recipe round-trips through the dict form that config.json and checkpoints hold
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, cfg.data.img_size, cfg.data.img_size))
    assert out.shape == (1, cfg.model.num_classes)


def test_imagenet20_recipe_is_the_reference_workload():
    cfg = load_recipe(IMAGENET20)
    m, d, t = cfg.model, cfg.data, cfg.train
    assert (m.num_classes, m.width_mult, m.small_input) == (20, 1.0, False)
    assert d.source.rstrip("/").endswith("imagenet20") and d.img_size == 224 and d.resize_size == 256
    assert d.mean == pytest.approx(IMAGENET_MEAN) and d.std == pytest.approx(IMAGENET_STD)
    assert d.train_aug == "rrc" and d.hflip
    assert 16 <= t.batch_size <= 64 and 70 <= t.epochs <= 90
    assert t.device == "cuda" and t.amp != "off"
    assert t.optimizer == "sgd" and t.nesterov and t.momentum > 0 and t.warmup_epochs > 0
    assert t.label_smoothing > 0 and t.ema


def test_fashion_recipe_fits_28px_on_a_cpu():
    from mnv2export.model import output_stride

    cfg = load_recipe(FASHION)
    assert cfg.data.source == "fashion-mnist" and cfg.data.img_size == 28 and cfg.model.num_classes == 10
    assert cfg.train.device == "cpu"
    # the small-input variant: a 28 px image must not shrink to 1x1 before the classifier
    assert output_stride(cfg.model) <= 16


def test_recipe_flags_override(tmp_path):
    cfg = run_config(load_recipe(FASHION), {"width_mult": 0.75}, {}, {"epochs": 1, "workers": 0})
    assert cfg.model.width_mult == 0.75 and cfg.train.epochs == 1 and cfg.train.workers == 0
    assert cfg.model.stem_stride == load_recipe(FASHION).model.stem_stride


def test_stem_stride_is_validated_and_changes_the_output_stride():
    import torch

    from mnv2export.model import build_model, output_stride

    assert output_stride(ModelConfig(small_input=True)) == 8  # as before: stem stride 1 with small_input
    assert output_stride(ModelConfig()) == 32
    cfg = ModelConfig(num_classes=10, width_mult=0.35, small_input=True, stem_stride=2)
    assert output_stride(cfg) == 16
    model = build_model(cfg).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (2, 2)
    for bad in (0, 3, True, 1.0, "2"):
        with pytest.raises(ConfigError, match="stem_stride"):
            ModelConfig(stem_stride=bad)


def test_output_stride_runs_the_last_stride_2_stages_at_stride_1():
    import torch

    from mnv2export.model import build_model, output_stride

    cfg = ModelConfig(num_classes=10, width_mult=0.35, small_input=True, stem_stride=2, output_stride=8)
    assert output_stride(cfg) == 8
    model = build_model(cfg).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 28, 28)).shape[-2:] == (4, 4)  # 28 px ends at 4x4, not 2x2
    strides = [block.stride for block in model.features[1:-1]]  # torchvision's InvertedResidual blocks
    # stem 2, then the 32- and 64-channel stages keep their stride 2; the 160-channel stage (block 14) runs at 1
    assert strides == [1] * 3 + [2] + [1] * 2 + [2] + [1] * 10 and build_model(
        cfg.replace(output_stride=None)
    ).features(torch.zeros(1, 3, 28, 28)).shape[-2:] == (2, 2)
    assert output_stride(ModelConfig(output_stride=16)) == 16 and output_stride(ModelConfig(output_stride=8)) == 8
    for bad in (
        dict(output_stride=4),
        dict(output_stride=64),
        dict(small_input=True, stem_stride=2, output_stride=32),
        dict(output_stride=True),
    ):
        with pytest.raises(ConfigError, match="output_stride"):
            ModelConfig(**bad)


def test_a_bad_recipe_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nstem_stride = 4\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(bad)
    assert "stem_stride" in str(info.value) and "bad.toml" in str(info.value)


# ------------------------------------------------------------------------------------ 1 epoch on generated IDX files
def test_fashion_recipe_trains_one_epoch_on_generated_idx(tmp_path):
    data = write_fashion_idx(tmp_path / "idx", n_train=320, n_test=60)
    out = tmp_path / "run"
    env = {**os.environ, "MNV2_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "mnv2export",
        "train",
        "--config",
        str(FASHION),
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-plots",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best val_acc" in proc.stdout

    from mnv2export.checkpoint import load_checkpoint

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert np.isfinite(float(rows[0]["train_loss"]))
    recipe = load_recipe(FASHION)
    best = load_checkpoint(out / "best.pt")
    # 320 images at the recipe's batch 256 make one optimizer step: the residual blocks' last BatchNorm scales, which
    # the recipe zero-initialises, have moved off zero by that one small step (1.0 if zero_init were not applied)
    from torchvision.models.mobilenetv2 import InvertedResidual

    scales = [
        b.conv[-1].weight.detach()
        for b in best.build_model().modules()
        if isinstance(b, InvertedResidual) and b.use_res_connect
    ]
    assert len(scales) == 10 and all(0 < float(g.abs().max()) < 0.1 for g in scales), [
        float(g.abs().max()) for g in scales
    ]
    assert best.model_config == recipe.model
    assert best.data_config.source == "fashion-mnist" and best.data_config.img_size == 28
    assert best.train_summary["data"]["train_images"] == 320 and best.train_summary["data"]["val_images"] == 60
    assert (out / "last.pt").is_file() and (out / "config.json").is_file()
