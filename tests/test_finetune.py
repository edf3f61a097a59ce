"""Fine-tuning with frozen feature blocks (--freeze-blocks): the frozen blocks keep the --init-from weights and
BatchNorm statistics, the rest trains, a resumed run freezes the same blocks, and so does each process under DDP."""

import pytest
import torch
from conftest import tiny_run_config

from mnv2export.checkpoint import load_checkpoint
from mnv2export.config import FEATURE_BLOCKS, ModelConfig, TrainConfig
from mnv2export.errors import ConfigError
from mnv2export.model import build_model, freeze_blocks, train_mode
from mnv2export.train import fit


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A torchvision-format state dict of 1,000 classes whose BatchNorm statistics are far from the (0, 1) a fresh
    model has, as ImageNet weights' are: kept statistics can be told from re-estimated ones."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(num_classes=1000, width_mult=0.35))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("init") / "imagenet.pth"
    torch.save(model.state_dict(), path)
    return path


def _block(key: str) -> int | None:
    parts = key.split(".")
    return int(parts[1]) if parts[0] == "features" else None


@pytest.mark.parametrize("n", [5, FEATURE_BLOCKS])
def test_frozen_blocks_keep_weights_and_statistics_and_the_rest_trains(tmp_path, pretrained, n):
    start = torch.load(pretrained, weights_only=True)
    result = fit(tiny_run_config(epochs=1, init_from=str(pretrained), freeze_blocks=n), run_dir=tmp_path / "run")
    trained = load_checkpoint(result.last).state_dict
    for key, value in trained.items():
        block = _block(key)
        if key.endswith("num_batches_tracked"):
            continue
        if block is not None and block < n:
            assert torch.equal(value, start[key]), key  # weights and running statistics as given
    changed = {
        _block(k)
        for k, v in trained.items()
        if k in start and start[k].shape == v.shape and not torch.equal(v, start[k])
    }
    if n < FEATURE_BLOCKS:
        assert set(range(n, FEATURE_BLOCKS)) <= changed  # every block after the frozen ones trained
    else:
        assert changed == set()  # a linear probe: nothing of the features moved
    assert not torch.equal(trained["classifier.1.weight"], torch.zeros_like(trained["classifier.1.weight"]))
    assert load_checkpoint(result.last).extra["train_config"]["freeze_blocks"] == n


def test_frozen_blocks_stay_in_eval_mode_in_training():
    model = build_model(ModelConfig(num_classes=4, width_mult=0.35))
    frozen = freeze_blocks(model, 3)
    assert frozen == sum(p.numel() for b in model.features[:3] for p in b.parameters())
    assert all(not p.requires_grad for p in model.features[:3].parameters())
    assert all(p.requires_grad for p in model.features[3:].parameters())
    train_mode(torch.nn.Sequential(model))  # inside a wrapper, as DDP or torch.compile hold it
    assert not any(m.training for b in model.features[:3] for m in b.modules())
    assert all(m.training for b in model.features[3:] for m in b.modules()) and model.classifier.training
    model.eval()
    train_mode(model)  # again, after an evaluation
    assert not model.features[0].training and model.features[3].training


def test_a_frozen_run_resumes_exactly(tmp_path, pretrained, monkeypatch):
    """The blocks are frozen again on resume: the optimizer's parameter groups match the saved state, and the run ends
    where the uninterrupted run ends."""
    from test_train import _cut_after_first_epoch_then_resume, _same, _weights

    cfg = tiny_run_config(epochs=2, init_from=str(pretrained), freeze_blocks=8)
    whole = fit(cfg, run_dir=tmp_path / "whole")
    _cut_after_first_epoch_then_resume(cfg, tmp_path / "cut", monkeypatch)
    _same(_weights(tmp_path / "cut" / "last.pt"), _weights(whole.last))


def test_freezing_needs_starting_weights_and_a_block_count_in_range():
    with pytest.raises(ConfigError, match="freeze_blocks keeps the starting weights, and none are given"):
        TrainConfig(freeze_blocks=4)
    with pytest.raises(ConfigError, match=f"use a whole number between 0 and {FEATURE_BLOCKS}"):
        TrainConfig(freeze_blocks=FEATURE_BLOCKS + 1, init_from="w.pth")
    assert len(build_model(ModelConfig(small_input=True, output_stride=8)).features) == FEATURE_BLOCKS


def test_frozen_blocks_batch_mixing_and_clipping_under_ddp(tmp_path, pretrained):
    """Two processes on gloo: DDP leaves the frozen parameters out of its gradient reduction, and the rest trains with
    mixed batches and clipped gradients; the frozen blocks end as they started."""
    from test_train import TINY_FLAGS, _torchrun

    out = tmp_path / "run"
    r = _torchrun(
        "-m",
        "mnv2export",
        "train",
        *TINY_FLAGS,
        "--epochs",
        "1",
        "--init-from",
        str(pretrained),
        "--freeze-blocks",
        "8",
        "--mixup-alpha",
        "0.2",
        "--cutmix-alpha",
        "1.0",
        "--clip-grad-norm",
        "5",
        "--out",
        str(out),
        port=39500,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.train_summary["world_size"] == 2
    start, trained = torch.load(pretrained, weights_only=True), ckpt.state_dict
    frozen = [
        k for k in trained if k.startswith("features.") and _block(k) < 8 and not k.endswith("num_batches_tracked")
    ]
    assert frozen and all(torch.equal(trained[k], start[k]) for k in frozen)
    assert not torch.equal(trained["features.8.conv.0.0.weight"], start["features.8.conv.0.0.weight"])


def test_loading_initial_weights_is_said_and_untrained_ones_are_warned_about(tmp_path, pretrained, caplog):
    """One line says what --init-from took (how many tensors, the classifier replaced for another class count); a file
    whose every BatchNorm holds its initial statistics (running_mean 0, running_var 1) is a model never trained (a
    fresh torchvision model saved by mistake): fine-tuning it is training from scratch, so it is warned about."""
    import logging

    from mnv2export.model import load_pretrained

    caplog.set_level(logging.INFO, logger="mnv2export")
    model = build_model(ModelConfig(num_classes=4, width_mult=0.35))
    load_pretrained(model, pretrained)
    said = [r for r in caplog.records if r.name == "mnv2export.model"]
    tensors = len(model.state_dict()) - 2
    expected = (
        f"initialised from {pretrained}: {tensors} tensors loaded; the classifier replaced (classifier.1.bias, classifier.1.weight: "
        "the file's is for 1000 classes, this model has 4)"
    )
    assert [r.getMessage() for r in said] == [expected], [r.getMessage() for r in said]
    caplog.clear()
    fresh = tmp_path / "fresh.pth"
    torch.save(build_model(ModelConfig(num_classes=4, width_mult=0.35)).state_dict(), fresh)
    load_pretrained(build_model(ModelConfig(num_classes=4, width_mult=0.35)), fresh)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mnv2export.model"]
    assert said[0] == ("INFO", f"initialised from {fresh}: {tensors + 2} tensors loaded"), said
    assert said[1][0] == "WARNING" and said[1][1].startswith(
        f"the initial weights in {fresh} look untrained: every BatchNorm layer holds its initial statistics (running_mean 0, running_var 1)"
    ), said
