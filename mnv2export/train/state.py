"""The state a ``last.pt`` carries so that ``--resume`` continues exactly: the random generators, and the restore of
the model, optimizer, schedule, gradient scaler and EMA into a resumed run's objects.

The data order and the augmentation / dropout randomness of epoch ``e`` are drawn from generators seeded by
:func:`epoch_seed` ``(seed, e)``, so a run resumed at an epoch boundary continues as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint
from .optim import fast_forward

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _listify(random.getstate())}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def training_state(model: nn.Module, opt: torch.optim.Optimizer, sched, scaler, ema) -> dict[str, Any]:
    """What a ``last.pt`` carries to resume from (its ``extra["resume"]``), as :func:`restore_training_state` reads it."""
    return {
        "model": cpu_state(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler else {},
        "ema": cpu_state(ema) if ema is not None else {},
        "rng": rng_state(),
    }


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state on the CPU, whatever device trains it (a checkpoint's tensors)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def restore_training_state(
    resume_from: Checkpoint,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    scaler,
    ema,
    steps_per_epoch: int,
    epochs: int,
) -> tuple[list[dict[str, float]], int, float, int]:
    """Load a ``last.pt``'s training state into the run's objects (model, optimizer, schedule, gradient scaler, EMA,
    random generators); returns (history, epochs done, best validation accuracy, its epoch). With another ``epochs``
    than the run planned, the schedule is the new length's, fast-forwarded to the step the run has reached."""
    r = resume_from.extra["resume"]
    model.load_state_dict(r["model"])
    planned = int(resume_from.extra.get("train_config", {}).get("epochs", epochs))
    if planned == epochs:
        opt.load_state_dict(r["optimizer"])
        sched.load_state_dict(r["scheduler"])
    else:  # extended (or shortened): the schedule of the new length, at the step the run has reached
        fast_forward(sched, int(resume_from.train_summary["epoch"]) * steps_per_epoch)
        lrs = [g["lr"] for g in opt.param_groups]
        opt.load_state_dict(r["optimizer"])  # momentum buffers; the learning rate is the new schedule's
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
        log.info(
            "learning-rate schedule of %d epochs (the run was planned for %d), continued at its step", epochs, planned
        )
    if scaler is not None and r.get("scaler"):
        scaler.load_state_dict(r["scaler"])
    if ema is not None and r.get("ema"):
        ema.load_state_dict(r["ema"])
    set_rng_state(r["rng"])
    s = resume_from.train_summary
    history = [dict(row) for row in s.get("history", [])]
    return history, int(s["epoch"]), float(s.get("best_val_acc", -1.0)), int(s.get("best_epoch", 0))
