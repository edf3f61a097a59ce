"""What the trainer builds around the model: the optimizer (weight decay by parameter kind), the learning-rate
schedule (warm-up, then cosine or linear decay, stepped every iteration) and the EMA of the weights."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig


def param_groups(
    model: nn.Module, weight_decay: float, depthwise_weight_decay: float | None = None
) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only, not on norm parameters and biases. ``depthwise_weight_decay``
    (None: the same as ``weight_decay``) gives the depthwise convolutions' weights their own rate: MobileNet's paper
    puts "very little or no weight decay" on them, as they hold few parameters."""
    depthwise = set()
    if depthwise_weight_decay is not None:
        depthwise = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
        }
    decay, dw, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            (dw if id(p) in depthwise else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if depthwise_weight_decay is not None:
        groups.append({"params": dw, "weight_decay": depthwise_weight_decay})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.depthwise_weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up, then cosine or linear decay to zero at the last step (``cfg.schedule``), stepped every iteration."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.schedule == "linear":
        decay = torch.optim.lr_scheduler.LinearLR(
            opt, start_factor=1.0, end_factor=0.0, total_iters=max(1, total - warmup)
        )
    else:
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warmup))
    if warmup <= 0:
        return decay
    ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [ramp, decay], milestones=[warmup])


def fast_forward(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Step ``sched`` ``steps`` times without training, as an uninterrupted run would have by then."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()": intended here
        for _ in range(steps):
            sched.step()


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA decay after ``updates`` updates: ``min(decay, (1 + n) / (10 + n))``, TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)`` warm-up (timm's ``ModelEmaV3(use_warmup=True)`` does the like).

    Without it the average starts at the random initial weights and, with the BatchNorm statistics averaged beside
    weights they do not belong to, stays useless for thousands of steps: a 5-epoch Fashion-MNIST run (1,560 steps,
    decay 0.998) evaluated its EMA at exactly 10% (chance) every epoch while the model itself was at 87%.
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


def make_ema(model: nn.Module, t: TrainConfig):
    """The EMA of ``model`` (weights and BatchNorm statistics) when ``t.ema``, else None."""
    if not t.ema:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=ema_update_fn(t.ema_decay), use_buffers=True)


def ema_update_fn(decay: float):
    """``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`: an EMA with :func:`ema_decay_at` warm-up."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = ema_decay_at(decay, int(n_averaged))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): follow the model
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update
