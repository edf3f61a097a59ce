"""A training run's objects and its record so far (:class:`TrainingRun`), and their set-up (:func:`set_up_run`):
the device, data, model, optimizer, schedule and EMA, restored from a ``last.pt`` on resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import distributed as D
from ..checkpoint import Checkpoint, provenance
from ..config import RunConfig, TrainConfig
from ..data import DataBundle, SkipTracker, build_datasets, warn_if_sideways
from ..data.memory import MemoryLoader
from ..data.transforms import batch_mix
from ..device import resolve_device
from ..errors import DataError
from ..model import build_model, collapse_warning, freeze_blocks, load_pretrained, zero_init_residual
from .optim import build_optimizer, build_scheduler, make_ema
from .run_folder import check_same_data
from .state import cpu_state, restore_training_state, seed_everything, training_state
from .steps import StepContext, amp_dtype, make_loader

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What the set-up builds and the epoch loop and its recorder share: the run's objects and its record so far."""

    cfg: RunConfig  # with the data's class count
    info: D.DistInfo
    run_dir: Path
    device: torch.device
    data: DataBundle
    model: nn.Module  # the weights the optimizer steps; train_module wraps them (DDP, torch.compile)
    train_module: nn.Module
    ema: Any
    ctx: StepContext
    opt: torch.optim.Optimizer
    sched: Any
    criterion: nn.Module
    steps: int  # optimizer steps per epoch
    val_loader: DataLoader | MemoryLoader
    skips: SkipTracker
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def eval_model(self) -> nn.Module:
        """The weights validated and saved: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    def gather_skips(self) -> None:
        """Under DDP, the unreadable images every rank met in the last pass, to all (summary and warnings cover all)."""
        if self.info.enabled:
            self.skips.merge(D.all_gather_objects(self.skips.pending, self.info), warn=self.info.is_main)

    def update_summary(self, epoch: int) -> None:
        self.summary.update(
            {
                "epoch": epoch,
                "epochs": self.cfg.train.epochs,
                "best_val_acc": self.best_acc,
                "best_epoch": self.best_epoch,
                "final": self.history[-1] if self.history else {},
                "history": self.history,
                "images_skipped": self.skips.count,
                "skipped_images": dict(list(self.skips.paths.items())[:1000]),
                "device": str(self.device),
                "world_size": self.info.world_size,
                "amp": str(self.ctx.dtype).removeprefix("torch.") if self.ctx.dtype else "off",
                "data": self.data.summary,
            }
        )

    def snapshot(self, epoch: int, with_resume: bool) -> Checkpoint:
        """The checkpoint of the run after ``epoch`` epochs; ``with_resume``: with what ``--resume`` needs (last.pt)."""
        self.update_summary(epoch)
        extra: dict[str, Any] = {}
        if with_resume:
            resume = training_state(self.model, self.opt, self.sched, self.ctx.scaler, self.ema)
            extra = {"train_config": self.cfg.train.to_dict(), "resume": resume}
        return Checkpoint(
            model_config=self.cfg.model,
            data_config=self.cfg.data,
            class_names=self.data.class_names,
            state_dict=cpu_state(self.eval_model),
            train_summary=dict(self.summary),
            provenance=provenance(self.data.fingerprint),
            extra=extra,
        )


# --------------------------------------------------------------------------------------------------- set-up
def set_up_run(cfg: RunConfig, info: D.DistInfo, run_dir: Path, resume_from: Checkpoint | None) -> TrainingRun:
    """The device, data, model, optimizer and schedule of the run, restored from ``resume_from`` when given. The order
    is the run's reproducibility: the model's random initialisation follows the seed."""
    t = cfg.train
    device = _set_up_process(t, info)
    data: DataBundle = build_datasets(cfg.data)
    if resume_from is not None:
        check_same_data(resume_from, data, cfg.data.source)
    elif info.is_main:
        warn_if_sideways(data, cfg.data)  # a new run only: the setting cannot change on resume
    cfg = cfg.with_classes(len(data.class_names))
    model = _build_model(cfg, info, fresh=resume_from is None)
    ctx = StepContext(
        device=device,
        dtype=amp_dtype(t.amp, device),
        channels_last=t.channels_last != "off",
        mix=batch_mix(t.mixup_alpha, t.cutmix_alpha, len(data.class_names)),
        clip_grad_norm=t.clip_grad_norm,
    )
    train_module = _place_model(model, ctx, t, info)
    ema = make_ema(model, t)
    steps = _steps_per_epoch(data, cfg, info, device)
    opt = build_optimizer(model, t)
    sched = build_scheduler(opt, t, steps)
    if ctx.dtype == torch.float16:
        ctx.scaler = torch.amp.GradScaler(device.type)
    run = TrainingRun(
        cfg=cfg,
        info=info,
        run_dir=run_dir,
        device=device,
        data=data,
        model=model,
        train_module=train_module,
        ema=ema,
        ctx=ctx,
        opt=opt,
        sched=sched,
        criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        steps=steps,
        val_loader=make_loader(data.val, t, info, device, train=False, memory=data.val_memory),
        skips=SkipTracker(defer=info.enabled),  # under DDP: gathered from every rank after each pass (gather_skips)
    )
    if resume_from is not None:
        _resume(run, resume_from)
    tag = f"amp={ctx.dtype} channels_last={ctx.channels_last} world_size={info.world_size}"
    extras = cfg.training_extras()
    log.info(
        "training on %s (%s), %d steps per epoch%s", device, tag, steps, f"; {', '.join(extras)}" if extras else ""
    )
    return run


def _set_up_process(t: TrainConfig, info: D.DistInfo) -> torch.device:
    """This process's device (CUDA: cuDNN autotuning and TF32 on), its log level (rank 0 alone says notices) and
    random generators (seeded)."""
    device = resolve_device(t.device, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not info.is_main:
        logging.getLogger("mnv2export").setLevel(logging.WARNING)
    seed_everything(t.seed)
    return device


def _build_model(cfg: RunConfig, info: D.DistInfo, *, fresh: bool) -> nn.Module:
    """The model as training starts: ``--init-from``'s weights or zero-initialised residual blocks when ``fresh`` (not
    resumed: last.pt's weights replace them), frozen blocks, SyncBatchNorm under DDP."""
    t = cfg.train
    model = build_model(cfg.model)
    if info.is_main and fresh and (collapsed := collapse_warning(cfg.model, cfg.data.img_size)):
        log.warning(collapsed)
    if t.init_from and fresh:
        load_pretrained(model, t.init_from, report=info.is_main)
        if t.zero_init_residual and info.is_main:  # asked for, and not done: said (it was a -v notice)
            log.warning(
                "--zero-init-residual not applied: the weights come from %s (it is for a fresh model only)", t.init_from
            )
    elif t.zero_init_residual and fresh:
        log.info("zero-initialised the last BatchNorm of %d residual blocks", zero_init_residual(model))
    if t.freeze_blocks:  # on resume too: the optimizer state and the training mode of the blocks depend on it
        frozen = freeze_blocks(model, t.freeze_blocks)
        if info.is_main:
            total = sum(p.numel() for p in model.parameters())
            log.info(
                "froze the first %d of %d feature blocks (%s of %s parameters, BatchNorm statistics kept)",
                t.freeze_blocks,
                len(model.features),
                f"{frozen:,}",
                f"{total:,}",
            )
    if t.sync_bn and info.enabled:  # on CUDA only (check_settings)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _place_model(model: nn.Module, ctx: StepContext, t: TrainConfig, info: D.DistInfo) -> nn.Module:
    """Move ``model`` to the device (channels_last when on); returns the module the training steps call: ``model``
    wrapped in DistributedDataParallel under torchrun, compiled with ``t.compile``."""
    model.to(ctx.device)
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    train_module: nn.Module = model
    if info.enabled:
        train_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    if t.compile:
        train_module = torch.compile(train_module)
    return train_module


def _steps_per_epoch(data: DataBundle, cfg: RunConfig, info: D.DistInfo, device: torch.device) -> int:
    """The optimizer steps of one epoch on this rank; a :class:`DataError` when the training set is empty."""
    t = cfg.train
    if data.train_memory is not None:
        log.info(
            "data held in memory, preprocessed a batch at a time%s",
            f" (workers = {t.workers} not needed)" if t.workers else "",
        )
    steps = len(make_loader(data.train, t, info, device, train=True, memory=data.train_memory))
    if steps == 0:
        raise DataError("the training set is empty", path=cfg.data.source, hint="add training images")
    return steps


def _resume(run: TrainingRun, resume_from: Checkpoint) -> None:
    """Continue ``resume_from`` (a last.pt): its weights, optimizer, schedule, generators, history and skipped images."""
    t = run.cfg.train
    run.history, run.start_epoch, run.best_acc, run.best_epoch = restore_training_state(
        resume_from, run.model, run.opt, run.sched, run.ctx.scaler, run.ema, run.steps, t.epochs
    )
    run.skips.paths.update(resume_from.train_summary.get("skipped_images", {}))
    if run.start_epoch >= t.epochs:
        log.info(
            "the run in %s already has %d epoch(s) of %d: nothing to train; pass a larger --epochs to train further",
            run.run_dir,
            run.start_epoch,
            t.epochs,
        )
    else:
        log.info("resuming %s at epoch %d of %d", run.run_dir, run.start_epoch + 1, t.epochs)
