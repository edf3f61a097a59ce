"""BatchNorm folding: every BatchNorm goes into the convolution before it, on a copy of the model.

torchvision's MobileNetV2 keeps each ``Conv2d`` and its ``BatchNorm2d`` side by side in an ``nn.Sequential``
(``Conv2dNormActivation`` and the projection of each ``InvertedResidual``), so folding is: for every pair of
neighbours (Conv2d, BatchNorm2d) in a Sequential, replace the convolution by torch's own
:func:`torch.nn.utils.fusion.fuse_conv_bn_eval` of the two and the BatchNorm by ``nn.Identity``. The module tree
(and so every state-dict name but the BatchNorm ones) stays as it was. Any BatchNorm left over is an error: an
exporter would otherwise carry it into the graph.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import ExportError

log = logging.getLogger(__name__)

FOLD_ATOL = 1e-4  # max abs difference of logits allowed between the folded and the unfolded model

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def fold_bn(model: nn.Module) -> nn.Module:
    """A folded copy of ``model`` in eval mode; ``model`` itself is not changed."""
    folded = copy.deepcopy(model).eval()
    pairs = 0
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[first] = fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = nn.Identity()
                pairs += 1
    left = [name for name, m in folded.named_modules() if isinstance(m, _BN)]
    if left:
        raise ExportError(
            f"{len(left)} BatchNorm layer(s) could not be folded (e.g. {left[0]}): no convolution right before them",
            hint="this model is not a torchvision MobileNetV2; export the checkpoint as written by `mnv2 train`",
        )
    log.debug("folded %d Conv+BatchNorm pairs", pairs)
    return folded


@torch.inference_mode()
def check_fold(model: nn.Module, folded: nn.Module, inputs: torch.Tensor, atol: float = FOLD_ATOL) -> float:
    """Max abs difference of logits between ``model`` and ``folded`` on ``inputs``; ExportError above ``atol``."""
    return check_fold_logits(model.eval()(inputs), folded.eval()(inputs), atol)


def check_fold_logits(logits: torch.Tensor, folded_logits: torch.Tensor, atol: float = FOLD_ATOL) -> float:
    """The same check on logits already computed (the exporter reuses the folded model's logits afterwards)."""
    diff = (logits - folded_logits).abs().max().item()
    if not diff < atol:  # also catches NaN
        raise ExportError(
            f"the BatchNorm-folded model differs from the checkpoint's model by {diff:.3g} (max abs logit, limit {atol:g})",
            hint="the checkpoint's BatchNorm statistics are probably degenerate (e.g. zero variance); re-train or report it",
        )
    return diff
