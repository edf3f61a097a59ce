import pytest
import torch

from mnv2export.config import ModelConfig
from mnv2export.errors import CheckpointError
from mnv2export.model import (
    build_model,
    collapse_warning,
    feature_map_size,
    load_pretrained,
    output_stride,
    zero_init_residual,
)


def test_matches_torchvision_parameter_count():
    import torchvision

    ours = build_model(ModelConfig(num_classes=1000, width_mult=1.0))
    ref = torchvision.models.mobilenet_v2(num_classes=1000)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 3_504_872
    assert ours.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize("width", [0.35, 0.75, 1.4])
def test_width_and_classes(width):
    m = build_model(ModelConfig(num_classes=13, width_mult=width, dropout=0.0)).eval()
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 13)


def test_small_input_keeps_resolution():
    small = ModelConfig(num_classes=10, width_mult=0.35, small_input=True)
    assert output_stride(small) == 8 and output_stride(ModelConfig()) == 32
    feats = build_model(small).features.eval()
    assert feats(torch.randn(1, 3, 28, 28)).shape[-2:] == (4, 4)
    assert build_model(ModelConfig(width_mult=0.35)).features.eval()(torch.randn(1, 3, 28, 28)).shape[-2:] == (1, 1)


@pytest.mark.parametrize(
    "model, size",
    [
        ({}, 224),
        ({}, 64),
        ({}, 33),
        ({}, 32),
        ({}, 28),
        ({}, 16),
        ({"small_input": True}, 28),
        ({"small_input": True}, 16),
        ({"small_input": True}, 7),
        ({"small_input": True, "stem_stride": 2}, 28),
        ({"small_input": True, "stem_stride": 2}, 16),
        ({"output_stride": 16}, 28),
        ({"output_stride": 8}, 17),
    ],
)
def test_feature_map_size_is_the_built_models(model, size):
    cfg = ModelConfig(num_classes=3, width_mult=0.35, **model)
    side = build_model(cfg).features.eval()(torch.randn(1, 3, size, size)).shape[-1]
    assert feature_map_size(cfg, size) == side
    said = collapse_warning(cfg, size)
    assert (said is not None) == (side == 1), said
    if said:
        assert said.startswith(f"the model's total stride is {output_stride(cfg)}: {size} px images end at 1x1 before")
        assert ("pass --small-input" in said) == (not cfg.small_input), said


def test_zero_init_residual_starts_each_residual_block_as_the_identity():
    from torchvision.models.mobilenetv2 import InvertedResidual

    model = build_model(ModelConfig(num_classes=10, width_mult=0.5, small_input=True, stem_stride=2)).eval()
    assert zero_init_residual(model) == 10  # the blocks after the first of each stage (1 + 2 + 3 + 2 + 2)
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    for block in blocks:
        bn = block.conv[-1]
        if block.use_res_connect:
            assert torch.count_nonzero(bn.weight) == 0
            y = torch.randn(2, block.conv[-2].out_channels, 7, 7)
            assert torch.equal(block(y), y)
        else:
            assert torch.equal(bn.weight, torch.ones_like(bn.weight))  # the other blocks keep torchvision's init
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_init_from_replaces_classifier(tmp_path):
    src = build_model(ModelConfig(num_classes=1000, width_mult=0.5))
    path = tmp_path / "imagenet.pth"
    torch.save(src.state_dict(), path)
    dst = build_model(ModelConfig(num_classes=5, width_mult=0.5))
    skipped = load_pretrained(dst, path)
    assert skipped == ["classifier.1.bias", "classifier.1.weight"]
    assert torch.equal(dst.features[3].conv[0][0].weight, src.features[3].conv[0][0].weight)
    # a state dict saved from a DataParallel / DDP model ("module." prefix) loads too
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    assert load_pretrained(build_model(ModelConfig(num_classes=1000, width_mult=0.5)), path) == []


def test_init_from_refuses_other_width_and_pickles(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_model(ModelConfig(num_classes=10, width_mult=1.0)).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained(build_model(ModelConfig(num_classes=10, width_mult=0.5)), path)
    torch.save({"model": build_model(ModelConfig(width_mult=0.35))}, path)  # a pickled module
    with pytest.raises(CheckpointError, match="initial weights file carries a pickled Python object and is refused"):
        load_pretrained(build_model(ModelConfig(width_mult=0.35)), path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="initial weights file is not a readable torch file"):
        load_pretrained(build_model(ModelConfig(width_mult=0.35)), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(build_model(ModelConfig(width_mult=0.35)), tmp_path / "nope.pth")


# --------------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("stride", [8, 16, 32])
def test_output_stride_is_the_total_stride(stride):
    from mnv2export.model import build_model, output_stride

    cfg = ModelConfig(num_classes=4, width_mult=0.35, output_stride=stride)
    assert output_stride(cfg) == stride
    assert build_model(cfg).features.eval()(torch.randn(1, 3, 64, 64)).shape[-1] == 64 // stride


def test_init_from_refuses_missing_and_unexpected_tensors(tmp_path):
    from mnv2export.model import build_model, load_pretrained

    cfg = ModelConfig(num_classes=4, width_mult=0.35)
    state = build_model(cfg).state_dict()
    path = tmp_path / "w.pth"
    torch.save({k: v for k, v in state.items() if k != "features.3.conv.0.0.weight"}, path)
    with pytest.raises(CheckpointError, match="not a torchvision MobileNetV2"):
        load_pretrained(build_model(cfg), path)
    torch.save({**state, "head.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="unexpected tensor head.weight"):
        load_pretrained(build_model(cfg), path)


def test_init_from_takes_weights_without_batchnorm_step_counters(tmp_path):
    """Older torchvision files have no `num_batches_tracked` (torch's own load_state_dict accepts that); they were
    refused as 'not a torchvision MobileNetV2'."""
    from mnv2export.model import build_model, load_pretrained

    cfg = ModelConfig(num_classes=4, width_mult=0.35)
    source = build_model(cfg)
    torch.nn.init.normal_(source.features[0][0].weight)
    path = tmp_path / "w.pth"
    torch.save({k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    model = build_model(cfg)
    assert load_pretrained(model, path) == []
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)


def test_init_from_refuses_non_finite_weights(tmp_path):
    """NaN initial weights trained into a run that diverged at once, and was told to lower its learning rate."""
    from mnv2export.model import build_model, load_pretrained

    cfg = ModelConfig(num_classes=4, width_mult=0.35)
    state = build_model(cfg).state_dict()
    state["features.2.conv.1.0.weight"][0, 0, 0, :2] = float("-inf")
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(build_model(cfg), path)
    assert (
        info.value.what == "initial weights are not finite: 2 NaN or infinite values in features.2.conv.1.0.weight"
    ), info.value.what
    assert info.value.path == str(path) and info.value.hint
