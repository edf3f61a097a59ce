"""MobileNetV2 built from a :class:`ModelConfig`, on top of torchvision's implementation."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2

from .architecture import feature_map_size, inverted_residual_setting, output_stride
from .config import FEATURE_BLOCKS, ModelConfig
from .errors import CheckpointError
from .fileio import require_init_weights
from .safe_load import refuse_non_finite, torch_load_safely

log = logging.getLogger(__name__)


def build_model(cfg: ModelConfig) -> MobileNetV2:
    """torchvision's MobileNetV2 for ``cfg`` (random initialisation, torchvision's own init scheme)."""
    model = MobileNetV2(
        num_classes=cfg.num_classes,
        width_mult=cfg.width_mult,
        inverted_residual_setting=inverted_residual_setting(cfg),
        dropout=cfg.dropout,
    )
    if cfg.effective_stem_stride != 2:
        stem_conv = model.features[0][0]
        assert isinstance(stem_conv, nn.Conv2d)
        stem_conv.stride = (cfg.effective_stem_stride, cfg.effective_stem_stride)
    return model


class ReshapeHead(nn.Module):
    """``model``'s layers and weights (a torchvision MobileNetV2, BatchNorm folded or not), the same function, with the
    flatten before the classifier written as ``reshape(-1, channels)``.

    Why: under a dynamic batch, ``torch.flatten`` traces to a view whose batch size is symbolic, which XNNPACK does not
    take; ExecuTorch then splits the program into two delegates with a portable view between them. With ``-1`` the
    whole network lowers to one XNNPACK delegate.
    """

    def __init__(self, model: MobileNetV2) -> None:
        super().__init__()
        self.features, self.classifier = model.features, model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).reshape(-1, x.shape[1])
        return self.classifier(x)


def zero_init_residual(model: MobileNetV2) -> int:
    """Set the last BatchNorm scale of every residual block to 0, so each block starts as the identity.

    torchvision's ResNet ``zero_init_residual`` (Goyal et al. 2017, "Accurate, Large Minibatch SGD", 5.1) applied to
    MobileNetV2's inverted residuals: the signal first flows through the shortcuts, and the blocks learn to add to it.
    Returns the number of blocks changed.
    """
    n = 0
    for block in model.modules():
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            bn = block.conv[-1]
            assert isinstance(bn, nn.BatchNorm2d), type(bn)
            nn.init.zeros_(bn.weight)
            n += 1
    return n


_FROZEN = "_mnv2_frozen"


def freeze_blocks(model: MobileNetV2, n: int) -> int:
    """Freeze ``model.features[:n]`` for fine-tuning: no gradients, and their BatchNorm layers kept in eval mode while
    the rest trains (:func:`train_mode`), so that they normalise with the pretrained statistics and keep them, as
    torchvision's detection models do with their frozen backbone layers. ``n = FEATURE_BLOCKS``: every feature block, a
    linear probe (the classifier alone trains). Returns the number of parameters frozen."""
    assert len(model.features) == FEATURE_BLOCKS, len(model.features)
    frozen = 0
    for block in model.features[:n]:
        block.requires_grad_(False)
        setattr(block, _FROZEN, True)
        frozen += sum(p.numel() for p in block.parameters())
    return frozen


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except the blocks :func:`freeze_blocks` froze, which stay in eval mode (also through a DDP or
    ``torch.compile`` wrapper)."""
    model.train()
    for m in model.modules():
        if getattr(m, _FROZEN, False):
            m.eval()


def collapse_warning(cfg: ModelConfig, img_size: int) -> str | None:
    """What to say when the inputs end at 1x1 before the pooling (the deep layers then see no spatial layout at all;
    ``--small-input`` exists for 28-64 px images), else None."""
    if feature_map_size(cfg, img_size) > 1:
        return None
    how = (
        "for 28-64 px images pass --small-input (total stride 8: 28 px ends at 4x4)"
        if not cfg.small_input
        else "use larger images, or a smaller total stride (stem_stride 1, output_stride 8)"
    )
    return (
        f"the model's total stride is {output_stride(cfg)}: {img_size} px images end at 1x1 before the classifier's pooling, "
        f"so its deepest layers see no spatial layout; {how}"
    )


def load_pretrained(model: MobileNetV2, path: str | Path, *, report: bool = True) -> list[str]:
    """Initialise ``model`` from a torchvision-format MobileNetV2 state dict (e.g. ImageNet weights).

    The classifier is replaced (left at its fresh initialisation) when the class count differs. Any other shape
    mismatch (another width multiplier, another architecture) is an error, and so are NaN or infinite weights.
    ``report``: log what was taken, and warn when the weights look untrained (one process of a torchrun job says
    it). Returns the names of the tensors that were not taken from the file.
    """
    p = require_init_weights(path)  # not found, a folder, empty
    state = torch_load_safely(p, "initial weights file", "pass a state dict saved with torch.save(model.state_dict())")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # our own checkpoints, and the common {"state_dict": ...} wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            "initial weights are not a state dict of tensors", path=p, hint="pass torch.save(model.state_dict()) output"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    taken, skipped = _fitting_tensors(state, own, p)
    refuse_non_finite(
        taken, "initial weights", p, "their training diverged, or the file was edited: pass weights that are finite"
    )
    model.load_state_dict(taken, strict=False)
    if report:
        log.info(_init_summary(p, taken, skipped, state, own))
        if _untrained(taken):
            log.warning(
                "the initial weights in %s look untrained: every BatchNorm layer holds its initial statistics (running_mean 0, "
                "running_var 1), so fine-tuning them is training from scratch; pass trained weights (e.g. ImageNet's)",
                p,
            )
    return skipped


def _fitting_tensors(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], p: Path
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``state`` to load into a model whose state dict is ``own``, and the names of the model's tensors
    left as they are (the classifier, when the file lacks it or has it for another class count)."""
    # BatchNorm's step counters: older torchvision files lack them, and load_state_dict itself accepts their absence
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(".num_batches_tracked"))
    if any(not k.startswith("classifier.") for k in missing):
        raise CheckpointError(
            f"initial weights are not a torchvision MobileNetV2 (missing {missing[0]})",
            path=p,
            hint="pass a state dict of torchvision.models.mobilenet_v2",
        )
    skipped: list[str] = list(missing)
    taken = {}
    for name, tensor in state.items():
        if name not in own:
            raise CheckpointError(
                f"initial weights hold an unexpected tensor {name}",
                path=p,
                hint="pass a torchvision MobileNetV2 state dict",
            )
        if own[name].shape != tensor.shape:
            if name.startswith("classifier."):
                skipped.append(name)
                continue
            raise CheckpointError(
                f"initial weights do not fit: {name} is {tuple(tensor.shape)}, the model needs {tuple(own[name].shape)}",
                path=p,
                hint="use the same {width} (and {small_input} setting) as the weights were trained with",
            )
        taken[name] = tensor
    return taken, sorted(set(skipped))


def _init_summary(p: Path, taken: dict, skipped: list[str], state: dict, own: dict) -> str:
    """What ``--init-from`` took, in one line."""
    line = f"initialised from {p}: {len(taken)} tensors loaded"
    if not skipped:
        return line
    file_w, own_w = state.get("classifier.1.weight"), own["classifier.1.weight"]
    if file_w is not None and file_w.shape != own_w.shape:
        return f"{line}; the classifier replaced ({', '.join(skipped)}: the file's is for {file_w.shape[0]} classes, this model has {own_w.shape[0]})"
    return f"{line}; the classifier freshly initialised ({', '.join(skipped)}: not in the file)"


def _untrained(taken: dict[str, torch.Tensor]) -> bool:
    """Every BatchNorm's running statistics at their initial values (mean 0, variance 1): a model never trained."""
    means = [v for k, v in taken.items() if k.endswith(".running_mean")]
    variances = [v for k, v in taken.items() if k.endswith(".running_var")]
    return bool(means) and all(bool((m == 0).all()) for m in means) and all(bool((v == 1).all()) for v in variances)
