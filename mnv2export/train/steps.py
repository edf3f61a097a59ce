"""One pass each: :func:`train_one_epoch` and :func:`evaluate`, with what they run under (:class:`StepContext`: the
device, autocast dtype, gradient scaler, MixUp / CutMix, clipping) and the loader of an epoch (:func:`make_loader`).

The data order and the augmentation / dropout randomness of epoch ``e`` are drawn from generators seeded by
``(seed, e)`` (:func:`~mnv2export.train.state.epoch_seed`), so a resumed run sees the batches the whole run would have.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from .. import distributed as D
from ..config import TrainConfig
from ..data import SkipTracker, collate
from ..data.memory import MemoryImages, MemoryLoader
from ..model import train_mode
from .signals import raise_if_terminated, worker_quiet_on_sigterm
from .state import epoch_seed


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None: full fp32)."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None  # bf16 autocast trains at 0.58x fp32 channels_last on a Zen 4 CPU (benchmarks/RESULTS.md)
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def make_loader(
    ds,
    cfg: TrainConfig,
    info: D.DistInfo,
    device: torch.device,
    *,
    train: bool,
    epoch: int = 0,
    memory: MemoryImages | None = None,
) -> DataLoader | MemoryLoader:
    """A loader for one epoch; its shuffling and worker seeds derive from (seed, epoch). With ``memory`` (the same
    split held in memory) batches are gathered and preprocessed batch-wise in this process, in the same order."""
    g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    if info.enabled and train:
        sampler = DistributedSampler(
            ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=False
        )
        sampler.set_epoch(epoch)
    elif info.enabled:  # evaluation: every image exactly once over the ranks (DistributedSampler pads with repeats,
        sampler = range(info.rank, len(ds), info.world_size)  # which the reduced metrics would count twice)
    else:
        sampler = RandomSampler(ds, generator=g) if train else SequentialSampler(ds)
    per_rank = math.ceil(len(ds) / info.world_size)
    drop_last = train and per_rank > cfg.batch_size
    if memory is not None:
        return MemoryLoader(memory, sampler, cfg.batch_size, drop_last=drop_last, pin_memory=device.type == "cuda")
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=g,
        persistent_workers=False,
        worker_init_fn=worker_quiet_on_sigterm if cfg.workers else None,
    )


@dataclass
class StepContext:
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    scaler: torch.amp.GradScaler | None = None
    # optimizer steps the gradient scaler passed over (inf/NaN gradients at fp16), counted on the device (no sync)
    scaler_skipped: torch.Tensor | None = None
    # batches whose loss was NaN or infinite, and their images, counted on the device (no sync); left out of the mean
    nonfinite_loss: torch.Tensor | None = None
    # training batches only: MixUp / CutMix of (images, labels) on the device (soft labels out), and the gradient norm
    # to clip to before each optimizer step
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    clip_grad_norm: float | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(
        self, images: torch.Tensor, labels: torch.Tensor, *, mix: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if mix and self.mix is not None:
            images, labels = self.mix(images, labels)  # before channels_last: the mix's roll gives a contiguous batch
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def clip(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Scale the gradients down to ``clip_grad_norm`` (their total L2 norm), after unscaling them at fp16."""
        if self.clip_grad_norm is None:
            return
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad_norm)

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Backward and optimizer step for ``loss``, through the gradient scaler at fp16 (its passed-over steps counted)."""
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.clip(model, opt)
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.clip(model, opt)
        self.scaler.step(opt)
        scale = self.scaler._scale  # private, but a tensor: reading it does not make the CPU wait for the GPU
        before = scale.clone() if scale is not None else None
        self.scaler.update()
        if before is not None:  # the scale drops exactly when the step was passed over
            passed_over = (self.scaler._scale < before).to(torch.int64)
            self.scaler_skipped = passed_over if self.scaler_skipped is None else self.scaler_skipped + passed_over

    def finite_loss_sum(self, loss: torch.Tensor, images: int) -> torch.Tensor:
        """``loss`` times ``images`` when finite, else 0 with the batch counted in ``nonfinite_loss``."""
        finite = torch.isfinite(loss.detach())
        bad = (~finite).to(torch.int64)
        bad = torch.stack((bad, bad * images))  # device ops only: no host copy, no sync
        self.nonfinite_loss = bad if self.nonfinite_loss is None else self.nonfinite_loss + bad
        return torch.where(finite, loss.detach().double() * images, 0.0)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    sched,
    criterion: nn.Module,
    ctx: StepContext,
    *,
    ema=None,
    skips: SkipTracker | None = None,
    progress=None,
) -> tuple[float, int]:
    """One pass over ``loader``; returns (sum of losses over samples, sample count) for this rank. A batch whose loss is
    NaN or infinite is counted in ``ctx.nonfinite_loss`` (batches, images) and adds nothing to the sum; its images are
    in the count."""
    train_mode(model)  # blocks frozen for fine-tuning stay in eval mode
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = 0
    with warnings.catch_warnings():
        if ctx.scaler is not None:  # a step the scaler passed over: torch's order warning is about that skip
            warnings.filterwarnings(
                "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"
            )
        for images, labels, skipped in loader:
            raise_if_terminated()
            if skips is not None:
                skips.add(skipped)
            # every image unreadable, or one left, which BatchNorm cannot train on (1x1 maps): passed over, on every rank
            if D.fewest_over_ranks(labels.numel()) < 2:
                with warnings.catch_warnings():  # before the first optimizer step torch warns; the order is intended
                    warnings.simplefilter("ignore", UserWarning)
                    sched.step()  # the schedule counts batches: it still reaches its last step at the end
                continue
            images, labels = ctx.to_device(images, labels, mix=True)
            with ctx.autocast():
                loss = criterion(model(images), labels)
            ctx.step(model, opt, loss)
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += ctx.finite_loss_sum(loss, labels.shape[0])
            count += labels.shape[0]
            if progress is not None:
                progress()
    return float(loss_sum.item()), count


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    ctx: StepContext,
    num_classes: int,
    info: D.DistInfo = D.DistInfo(),
    *,
    skips: SkipTracker | None = None,
) -> dict[str, Any]:
    """Loss, top-1 accuracy and confusion matrix on ``loader``, summed over ranks."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss sum, correct
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=ctx.device)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for images, labels, skipped in loader:
        raise_if_terminated()
        if skips is not None:
            skips.add(skipped)
        if labels.numel() == 0:
            continue
        images, labels = ctx.to_device(images, labels)
        with ctx.autocast():
            logits = model(images)
        logits = logits.float()
        pred = logits.argmax(1)
        totals[0] += criterion(logits, labels).double()
        totals[1] += (pred == labels).sum().double()
        count += labels.shape[0]
        confusion += torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).double()
    totals = D.all_reduce_sum(totals, info)
    count = D.all_reduce_sum(count, info)
    confusion = D.all_reduce_sum(confusion, info)
    n = max(1.0, float(count.item()))
    return {
        "val_loss": float(totals[0].item()) / n,
        "val_acc": float(totals[1].item()) / n,
        "count": int(count.item()),
        "confusion": confusion.view(num_classes, num_classes).long().cpu().tolist(),
    }
