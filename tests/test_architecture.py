"""mnv2export.architecture computes MobileNetV2 without torch: every figure equals what torch measures on the model
that build_model builds (parameters, MACs from FlopCounterMode, shapes, block descriptions, kernel elements), and
the activation peak equals the one a forward with hooks on every module measures (what bench.memory weighs)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mnv2export.architecture import activation_peak, describe_architecture, kernel_params
from mnv2export.config import ModelConfig
from mnv2export.fold import fold_bn
from mnv2export.info import summarize_model
from mnv2export.model import build_model

CONFIGS = [
    (ModelConfig(num_classes=4, width_mult=0.35), [3, 32, 32]),
    (ModelConfig(num_classes=10, width_mult=0.5, small_input=True), [3, 28, 28]),
    (ModelConfig(num_classes=1000, width_mult=1.0), [3, 224, 224]),
    (ModelConfig(num_classes=7, width_mult=1.4, small_input=True, output_stride=8), [3, 28, 30]),
    (ModelConfig(num_classes=3, width_mult=0.5, stem_stride=1), [3, 33, 28]),
    (ModelConfig(num_classes=2, width_mult=0.75, small_input=True, stem_stride=2, output_stride=16), [3, 32, 32]),
    (ModelConfig(num_classes=20, width_mult=1.0, output_stride=16), [3, 64, 48]),
]
IDS = [f"w{c.width_mult}-s{c.small_input}-st{c.stem_stride}-os{c.output_stride}-{s[1]}x{s[2]}" for c, s in CONFIGS]


@pytest.mark.parametrize("folded", [False, True], ids=["checkpoint", "folded"])
@pytest.mark.parametrize("cfg,size", CONFIGS, ids=IDS)
def test_the_summary_is_torchs_own(cfg, size, folded):
    model = build_model(cfg)
    measured = summarize_model(fold_bn(model) if folded else model, size)
    computed = describe_architecture(cfg, size, folded=folded)
    assert dataclasses.replace(computed, macs_note=measured.macs_note) == measured
    assert "FlopCounterMode" in computed.macs_note and "counted from the architecture" in computed.macs_note


def test_mobilenet_v2_at_224_has_its_published_size():
    s = describe_architecture(ModelConfig(num_classes=1000), [3, 224, 224], folded=False)
    assert s.params == 3_504_872 and round(s.macs / 1e6, 1) == 300.8


@pytest.mark.parametrize("cfg,size", CONFIGS, ids=IDS)
def test_kernel_params_are_the_models_rank_2_weights(cfg, size):
    with torch.device("meta"):
        want = sum(t.numel() for t in build_model(cfg).parameters() if t.dim() >= 2)
    assert kernel_params(cfg) == want


def _hook_peak(cfg: ModelConfig, size: list[int]) -> tuple[int, int]:
    """One forward of one zero image with hooks on every module: while a layer runs, its input and output are
    alive, and so is the input of every module around it; (peak, largest layer) in float32 elements."""
    model = build_model(cfg).eval()
    around: list[list] = []
    peak = layer = 0

    def tensors(t) -> list:
        if isinstance(t, torch.Tensor):
            return [t]
        return [x for v in t for x in tensors(v)] if isinstance(t, (tuple, list)) else []

    def elements(ts) -> int:  # distinct storages: a module that returns its input adds nothing
        return sum(t.numel() for t in {t.untyped_storage().data_ptr(): t for t in ts}.values())

    def leaf(_m, args, out):
        nonlocal peak, layer
        layer = max(layer, elements(tensors(args) + tensors(out)))
        peak = max(peak, elements([t for ts in around for t in ts] + tensors(args) + tensors(out)))

    def enter(_m, args) -> None:
        around.append(tensors(args))

    def leave(_m, _args, _out) -> None:  # a hook that returned something would replace the module's output
        around.pop()

    hooks = []
    for m in model.modules():
        if any(True for _ in m.children()):
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
        else:
            hooks.append(m.register_forward_hook(leaf))
    with torch.inference_mode():
        model(torch.zeros(1, *size))
    for h in hooks:
        h.remove()
    return peak, layer


@pytest.mark.parametrize("cfg,size", CONFIGS, ids=IDS)
def test_the_activation_peak_is_the_hooks_measure(cfg, size):
    peak, layer = activation_peak(cfg, size)
    assert (peak, layer) == _hook_peak(cfg, size)
    assert peak > math.prod(size)  # the image and at least one feature map
