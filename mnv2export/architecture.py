"""MobileNetV2 as arithmetic: every layer's name, type, output shape, parameters and MACs computed from a
:class:`ModelConfig`, without torch, so that ``info`` and ``bench`` of an exported file run on an install without it.

The layers are torchvision's ``MobileNetV2`` as :func:`mnv2export.model.build_model` builds it, named as its modules
are (``features.N.conv.K...``, ``classifier.1``). MACs are those torch's FlopCounterMode counts: a convolution
``out_h * out_w * out_c * (in_c / groups) * k * k``, a linear layer ``in * out``; element-wise work (BatchNorm,
ReLU6, the residual additions, the pooling) is not counted. tests/test_architecture.py holds every figure equal to
the ones measured on the torch model (``info.summarize_model``), and the activation peak to ``bench.memory``'s hooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import ModelConfig

# torchvision's default setting: expansion t, output channels c, repeats n, first stride s
_DEFAULT_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
STEM_CHANNELS, LAST_CHANNELS, ROUND = 32, 1280, 8  # torchvision's MobileNetV2 constants

MACS_NOTE = (
    "MACs = FLOPs / 2, FLOPs from torch.utils.flop_counter.FlopCounterMode on one image "
    "(convolutions and matrix products; element-wise ops not counted)"
)
COUNTED_NOTE = (
    "MACs counted from the architecture (convolutions and linear layers; element-wise ops not counted), "
    "equal to torch's FlopCounterMode"
)


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]  # batch of one
    params: int
    macs: int


@dataclass
class BlockRow:
    name: str
    description: str
    output_shape: list[int]
    params: int
    macs: int


@dataclass
class ModelSummary:
    """The network at a given input size (from :func:`describe_architecture` or ``info.summarize_model``)."""

    input_size: list[int]  # [3, H, W]
    params: int
    macs: int
    blocks: list[BlockRow]
    layers: list[LayerRow]
    macs_note: str = MACS_NOTE
    kernel_params: int = (
        0  # weights of rank 2 or more (convolution and linear kernels): what an export keeps as they are
    )


def inverted_residual_setting(cfg: ModelConfig) -> list[list[int]]:
    setting = [list(row) for row in _DEFAULT_SETTING]
    if cfg.small_input:
        setting[1][3] = 1  # the first 24-channel stage keeps the stem's resolution
    if cfg.output_stride is not None:
        total = cfg.effective_stem_stride * math.prod(row[3] for row in setting)
        for row in reversed(setting):  # the last stride-2 stages first
            if total <= cfg.output_stride:
                break
            if row[3] == 2:
                row[3], total = 1, total // 2
    return setting


def output_stride(cfg: ModelConfig) -> int:
    stride = cfg.effective_stem_stride
    for _, _, _, s in inverted_residual_setting(cfg):
        stride *= s
    return stride


def feature_map_size(cfg: ModelConfig, img_size: int) -> int:
    """The side of the last feature map (before the classifier's pooling) for ``img_size`` px inputs: each stride-2
    3x3 convolution (padding 1) takes a side n to ceil(n / 2)."""
    side = img_size
    for s in (cfg.effective_stem_stride, *(row[3] for row in inverted_residual_setting(cfg))):
        side = -(-side // s)
    return side


def make_divisible(v: float, divisor: int = ROUND) -> int:
    """torchvision's ``_make_divisible``: ``v`` rounded to a multiple of ``divisor``, never below 90 % of it."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# --------------------------------------------------------------------------------------------------- the layers
@dataclass
class Layer:
    """A leaf module: its output shape (batch of one), parameters, kernel elements (rank >= 2) and MACs."""

    name: str
    type: str
    output_shape: list[int]
    params: int
    kernels: int = 0
    macs: int = 0
    alias: bool = False  # returns its input (Dropout in eval mode): no new tensor


@dataclass
class Block:
    """A module with children (Sequential, InvertedResidual), as a tree; ``description`` for the feature blocks."""

    name: str
    children: list = field(default_factory=list)  # Layer | Block
    description: str = ""

    def leaves(self) -> list[Layer]:
        return [leaf for c in self.children for leaf in (c.leaves() if isinstance(c, Block) else [c])]


class _Builder:
    """Appends torchvision's layers to a block while it tracks the feature map's shape."""

    def __init__(self, folded: bool) -> None:
        self.folded = folded

    def conv(self, block: Block, name: str, shape: list[int], out_c: int, k: int, stride: int, groups: int = 1):
        in_c, h, w = shape
        pad = (k - 1) // 2
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        kernel = out_c * (in_c // groups) * k * k
        layer = Layer(name, "Conv2d", [1, out_c, oh, ow], kernel + (out_c if self.folded else 0), kernel)
        layer.macs = oh * ow * kernel
        block.children.append(layer)
        if not self.folded:  # folded, the BatchNorm is an Identity, which no table lists
            block.children.append(Layer(_next(name), "BatchNorm2d", layer.output_shape, 2 * out_c))
        return [out_c, oh, ow]

    def conv_bn_act(self, parent: Block, name: str, shape: list[int], out_c: int, k: int, stride: int, groups=1):
        """torchvision's Conv2dNormActivation: Conv2d, BatchNorm2d, ReLU6 in a Sequential named ``name``."""
        block = Block(name)
        parent.children.append(block)
        shape = self.conv(block, f"{name}.0", shape, out_c, k, stride, groups)
        block.children.append(Layer(f"{name}.2", "ReLU6", [1, *shape], 0))
        return shape

    def inverted_residual(self, parent: Block, name: str, shape: list[int], out_c: int, stride: int, t: int):
        in_c = shape[0]
        hidden = int(round(in_c * t))
        res = ", residual" if stride == 1 and in_c == out_c else ""
        block = Block(
            name, description=f"inverted residual {in_c}->{out_c}, expand {hidden // in_c}, stride {stride}{res}"
        )
        conv = Block(f"{name}.conv")
        block.children.append(conv)
        parent.children.append(block)
        k = 0
        if t != 1:
            shape = self.conv_bn_act(conv, f"{name}.conv.0", shape, hidden, 1, 1)
            k = 1
        shape = self.conv_bn_act(conv, f"{name}.conv.{k}", shape, hidden, 3, stride, groups=hidden)
        return self.conv(conv, f"{name}.conv.{k + 1}", shape, out_c, 1, 1)


def _next(name: str) -> str:
    """``features.1.conv.1`` -> ``features.1.conv.2``: the BatchNorm beside a convolution."""
    head, _, last = name.rpartition(".")
    return f"{head}.{int(last) + 1}"


def network(cfg: ModelConfig, input_size: list[int] | tuple[int, int, int], *, folded: bool = True) -> Block:
    """The module tree of ``build_model(cfg)`` (``folded``: with every BatchNorm folded into its convolution, as
    every export holds it) for one image of ``input_size``, as :class:`Block` and :class:`Layer` records."""
    b = _Builder(folded)
    root, features = Block(""), Block("features")
    root.children.append(features)
    c_in = make_divisible(STEM_CHANNELS * cfg.width_mult)
    last = make_divisible(LAST_CHANNELS * max(1.0, cfg.width_mult))
    s = cfg.effective_stem_stride
    shape = b.conv_bn_act(features, "features.0", list(input_size), c_in, 3, s)
    features.children[-1].description = f"conv 3x3 {input_size[0]}->{c_in}, stride {s}"
    i = 1
    for t, c, n, first_stride in inverted_residual_setting(cfg):
        out_c = make_divisible(c * cfg.width_mult)
        for r in range(n):
            shape = b.inverted_residual(features, f"features.{i}", shape, out_c, first_stride if r == 0 else 1, t)
            i += 1
    c_before = shape[0]
    shape = b.conv_bn_act(features, f"features.{i}", shape, last, 1, 1)
    features.children[-1].description = f"conv 1x1 {c_before}->{last}, stride 1"
    weights = last * cfg.num_classes
    classifier = Block("classifier", description=f"dropout + linear {last}->{cfg.num_classes}")
    classifier.children += [
        Layer("classifier.0", "Dropout", [1, last], 0, alias=True),
        Layer("classifier.1", "Linear", [1, cfg.num_classes], weights + cfg.num_classes, weights, weights),
    ]
    root.children.append(classifier)
    return root


def describe_architecture(
    cfg: ModelConfig, input_size: list[int] | tuple[int, int, int], *, folded: bool = True
) -> ModelSummary:
    """Parameters, MACs, blocks and layers of the network ``cfg`` describes, for one image of ``input_size``: what
    ``info.summarize_model`` measures on the torch model (``folded``: on ``fold_bn`` of it), computed."""
    root = network(cfg, input_size, folded=folded)
    features, classifier = root.children
    blocks = [
        BlockRow(
            blk.name,
            blk.description,
            blk.leaves()[-1].output_shape,
            sum(x.params for x in blk.leaves()),
            sum(x.macs for x in blk.leaves()),
        )
        for blk in [*features.children, classifier]
    ]
    leaves = root.leaves()
    return ModelSummary(
        input_size=[int(v) for v in input_size],
        params=sum(x.params for x in leaves),
        macs=sum(x.macs for x in leaves),
        blocks=blocks,
        layers=[LayerRow(x.name, x.type, x.output_shape, x.params, x.macs) for x in leaves],
        macs_note=COUNTED_NOTE,
        kernel_params=sum(x.kernels for x in leaves),
    )


def kernel_params(cfg: ModelConfig) -> int:
    """Elements of the convolution and linear kernels (weights of rank 2 or more) of the network ``cfg`` describes:
    what every export keeps as they are (BatchNorm folding scales them), at any input size."""
    return sum(x.kernels for x in network(cfg, [3, 32, 32]).leaves())


def activation_peak(cfg: ModelConfig, input_size: list[int] | tuple[int, int, int]) -> tuple[int, int]:
    """(peak, largest layer) in float32 elements of one image's eager forward through ``build_model(cfg)``, the way
    ``bench.memory`` counts them: while a layer runs, its input and output are alive, and so is the input of every
    module around it (the caller's frame holds it); the peak is the largest such set of distinct tensors, the largest
    layer its input and output alone."""
    root = network(cfg, input_size, folded=False)
    image = math.prod(input_size)
    peak = layer = 0

    def walk(block: Block, x: tuple[int, int], around: dict[int, int]) -> tuple[int, int]:
        """``x``: the block's input as (id, elements); ``around``: the live inputs of the enclosing modules by id."""
        nonlocal peak, layer
        around = {**around, x[0]: x[1]}
        for child in block.children:
            if isinstance(child, Block):
                out = walk(child, x, around)
            else:
                out = x if child.alias else (id(child), math.prod(child.output_shape))
                live = {**around, x[0]: x[1], out[0]: out[1]}
                peak = max(peak, sum(live.values()))
                layer = max(layer, x[1] + (out[1] if out[0] != x[0] else 0))
            if child.name == "features":  # adaptive_avg_pool2d to 1x1 and flatten, outside any module: a new tensor
                out = (-1, child.leaves()[-1].output_shape[1])
            x = out
        return x

    walk(root, (0, image), {})
    return peak, layer
