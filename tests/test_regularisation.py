"""Training-time regularisation from torchvision: automatic augmentation policies, Random Erasing, MixUp / CutMix of
each batch, and gradient clipping; each recorded in the run's configuration and exact on resume."""

import json

import pytest
import torch
from conftest import TINY_FLAGS, tiny_run_config
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from mnv2export.checkpoint import load_checkpoint
from mnv2export.config import AUTO_AUGMENTATIONS, DataConfig, run_config
from mnv2export.data.transforms import batch_mix, train_transform
from mnv2export.train import StepContext, fit, train_one_epoch


def _image(seed=0, size=40):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy())


@pytest.mark.parametrize("name", [n for n in AUTO_AUGMENTATIONS if n != "none"])
def test_each_policy_is_torchvisions_and_changes_the_pixels(name):
    policy = {"ta_wide": v2.TrivialAugmentWide, "ra": v2.RandAugment, "augmix": v2.AugMix}.get(name, v2.AutoAugment)
    plain, auto = (DataConfig(img_size=32, train_aug="crop_pad", pad=2, auto_augment=a) for a in ("none", name))
    steps = train_transform(auto).transforms
    assert sum(isinstance(s, policy) for s in steps) == 1
    at = [isinstance(s, policy) for s in steps].index(True)
    scaled = [isinstance(s, v2.ToDtype) for s in steps].index(True)
    assert isinstance(steps[at - 1], v2.RandomHorizontalFlip) and at < scaled  # after the flip, on 8-bit images
    if policy is v2.AutoAugment:
        assert steps[at].policy.value == name
    changed = 0
    for seed in range(6):  # the same crop and flip (the policy draws after them): only the policy differs
        torch.manual_seed(seed)
        a = train_transform(plain)(_image(seed))
        torch.manual_seed(seed)
        b = train_transform(auto)(_image(seed))
        assert b.shape == a.shape == (3, 32, 32) and b.dtype == torch.float32
        changed += not torch.equal(a, b)
    assert changed >= 3, changed  # an identity op can be drawn (TrivialAugment's), but not every time


def test_random_erasing_sets_one_rectangle_to_the_mean():
    """With p = 1: the image of the same draw without erasing, except one rectangle, 0 in every channel (0 after the
    normalisation is the mean), covering 2-33% of the image (torchvision's default scale)."""
    plain, erase = (DataConfig(img_size=32, train_aug="crop_pad", pad=2, random_erase=p) for p in (0.0, 1.0))
    assert isinstance(train_transform(erase).transforms[-1], v2.RandomErasing)
    for seed in range(5):
        torch.manual_seed(seed)
        a = train_transform(plain)(_image(seed))
        torch.manual_seed(seed)
        b = train_transform(erase)(_image(seed))
        differs = (a != b).any(0)
        rows, cols = differs.any(1).nonzero().flatten(), differs.any(0).nonzero().flatten()
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert (b[:, box[0], box[1]] == 0).all()  # a whole rectangle erased, in every channel
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[box] = False
        assert torch.equal(a[:, outside], b[:, outside])
        assert 0.02 * 32 * 32 * 0.8 <= (~outside).sum() <= 0.33 * 32 * 32 * 1.2


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_batch_mixing_mixes_labels_as_it_mixes_images(mixup, cutmix):
    """Each image is one class's colour (channel c lit for class c); after mixing, each image's mean colour must equal
    its soft label exactly: the labels carry the same shares (MixUp's weight, CutMix's pasted area) of the same
    images (the batch's roll) as the pixels."""
    classes, batch = 5, 16
    mix = batch_mix(mixup, cutmix, classes)
    labels = torch.arange(batch) % classes
    images = nn.functional.one_hot(labels, classes).float()[:, :, None, None].expand(-1, -1, 12, 12).contiguous()
    torch.manual_seed(0)
    shares = set()
    for _ in range(20):
        x, y = mix(images.clone(), labels.clone())
        assert y.shape == (batch, classes) and torch.allclose(y.sum(1), torch.ones(batch))
        torch.testing.assert_close(x.mean((2, 3)), y, atol=1e-5, rtol=0)
        shares.add(round(float(y[1].max()), 3))  # image 1 (class 1) takes from image 0 (class 0)
    assert len(shares) > 5  # a new weight per batch: the batches are really mixed
    assert batch_mix(0.0, 0.0, classes) is None


def _one_step(ctx, clip, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    ctx.clip_grad_norm = clip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batch = [(torch.randn(8, 3, 8, 8) * 10, torch.arange(8) % 4, [])]
    train_one_epoch(model, batch, opt, sched, nn.CrossEntropyLoss(), ctx)
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])))


def test_gradient_clipping_bounds_the_step_in_fp32_and_under_the_fp16_scaler():
    """The gradient the optimizer stepped with has norm at most --clip-grad-norm; under fp16's gradient scaler it is
    unscaled first (clipping the scaled gradient would leave 1/65536 of the asked norm)."""
    cpu = torch.device("cpu")
    free = _one_step(StepContext(device=cpu, dtype=None, channels_last=False), None)
    assert free > 1.0  # so the clip below has something to clip
    assert _one_step(StepContext(device=cpu, dtype=None, channels_last=False), 0.5) == pytest.approx(0.5, rel=1e-4)
    scaled = StepContext(device=cpu, dtype=torch.float16, channels_last=False, scaler=torch.amp.GradScaler("cpu"))
    assert _one_step(scaled, 0.5) == pytest.approx(0.5, rel=1e-3)
    assert _one_step(StepContext(device=cpu, dtype=None, channels_last=False), 1e6) == pytest.approx(free, rel=1e-6)


def _regularised(**train):
    """The tiny run with every regularisation option on."""
    settings = {"epochs": 2, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "clip_grad_norm": 2.0, **train}
    return tiny_run_config(data={"auto_augment": "ta_wide", "random_erase": 0.25}, **settings)


def test_a_regularised_run_resumes_exactly_and_records_its_settings(tmp_path, monkeypatch):
    """Every option on, through worker processes (the per-image policies) and the training process (the batch mixing,
    from torch's global generator): interrupted after epoch 1 and resumed, the weights are those of the whole run."""
    from test_train import _cut_after_first_epoch_then_resume, _same, _weights

    cfg = _regularised(workers=1)
    whole = fit(cfg, run_dir=tmp_path / "whole")
    _cut_after_first_epoch_then_resume(cfg, tmp_path / "cut", monkeypatch)
    _same(_weights(tmp_path / "cut" / "last.pt"), _weights(whole.last))
    other = fit(_regularised(workers=1, mixup_alpha=0.0, cutmix_alpha=0.0), run_dir=tmp_path / "unmixed")
    assert not torch.equal(_weights(other.last)["features.0.0.weight"], _weights(whole.last)["features.0.0.weight"])
    stored = json.loads((whole.run_dir / "config.json").read_text())
    assert stored["data"]["auto_augment"] == "ta_wide" and stored["data"]["random_erase"] == 0.25
    assert (stored["train"]["mixup_alpha"], stored["train"]["cutmix_alpha"], stored["train"]["clip_grad_norm"]) == (
        0.2,
        1.0,
        2.0,
    )
    assert load_checkpoint(whole.best).data_config.auto_augment == "ta_wide"


def test_per_image_augmentation_takes_fashion_mnist_off_the_in_memory_path(tmp_path, monkeypatch):
    """The in-memory path augments a batch at a time with crops and flips only; asked for a policy or erasing,
    Fashion-MNIST's training set goes through torchvision's per-image transforms (validation stays in memory)."""
    from conftest import write_fashion_idx

    from mnv2export.data import build_datasets

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    folder = write_fashion_idx(tmp_path / "idx", n_train=40, n_test=20)
    base = {"source": "fashion-mnist", "data_dir": str(folder), "img_size": 28, "train_aug": "crop_pad", "pad": 2}
    assert build_datasets(DataConfig(**base)).train_memory is not None
    for extra in ({"auto_augment": "ra"}, {"random_erase": 0.5}):
        bundle = build_datasets(DataConfig(**base, **extra))
        assert bundle.train_memory is None and bundle.val_memory is not None
        x, _ = bundle.train[0]
        assert x.shape == (3, 28, 28)
    assert build_datasets(DataConfig(**base, auto_augment="ra"), augment=False).train_memory is not None


def test_the_cli_flags_reach_the_run(tmp_path):
    from mnv2export.cli import main

    out = tmp_path / "run"
    flags = [
        "--auto-augment",
        "augmix",
        "--random-erase",
        "0.1",
        "--mixup-alpha",
        "0.3",
        "--cutmix-alpha",
        "0.5",
        "--clip-grad-norm",
        "5",
    ]
    assert main(["train", *TINY_FLAGS, *flags, "--epochs", "1", "--out", str(out)]) == 0
    stored = json.loads((out / "config.json").read_text())
    assert (stored["data"]["auto_augment"], stored["data"]["random_erase"]) == ("augmix", 0.1)
    assert (stored["train"]["mixup_alpha"], stored["train"]["cutmix_alpha"], stored["train"]["clip_grad_norm"]) == (
        0.3,
        0.5,
        5.0,
    )


def test_the_report_and_the_log_name_what_the_training_used(tmp_path, caplog):
    import logging

    assert _regularised().training_extras() == [
        "auto-augment ta_wide",
        "random erasing p=0.25",
        "MixUp alpha 0.2",
        "CutMix alpha 1",
        "gradients clipped to norm 2",
    ]
    assert run_config(None, {}, {"source": "synth"}, {}).training_extras() == []
    assert run_config(None, {}, {"source": "synth"}, {"init_from": "w.pth", "freeze_blocks": 19}).training_extras() == [
        "the first 19 feature blocks frozen"
    ]
    with caplog.at_level(logging.INFO, logger="mnv2export"):
        fit(_regularised(epochs=1, workers=0), run_dir=tmp_path / "run")
    assert (
        "12 steps per epoch; auto-augment ta_wide, random erasing p=0.25, MixUp alpha 0.2, CutMix alpha 1, gradients clipped to norm 2"
        in caplog.text
    )
