"""The trainer: ``fit()`` runs a whole training run, ``train_one_epoch()`` and ``evaluate()`` one pass each.

CUDA when present (mixed precision: bf16 where supported, else fp16 with a gradient scaler; channels_last; pinned
memory and non-blocking copies; optional torch.compile), CPU otherwise (channels_last, which oneDNN runs faster).
DDP-aware: under ``torchrun`` each rank sees its shard (DistributedSampler), metrics are summed over ranks, and only
rank 0 writes files and logs.

Reproducibility: the data order and the augmentation / dropout randomness of epoch ``e`` are drawn from generators
seeded by ``(seed, e)``, so a run resumed from ``last.pt`` at an epoch boundary continues exactly as the uninterrupted
run would have (bit for bit on CPU; :mod:`~mnv2export.train_state`). The optimizer, schedule and EMA are built in
:mod:`~mnv2export.optim`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from . import distributed as D
from .checkpoint import Checkpoint, provenance, save_checkpoint
from .config import RunConfig, TrainConfig
from .data import DataBundle, SkipTracker, build_datasets, collate, warn_if_sideways
from .data.memory import MemoryImages, MemoryLoader
from .data.transforms import batch_mix
from .device import cpu_threads, resolve_device, warn_if_oversubscribed
from .errors import ConfigError, DataError, DistributedError, Mnv2Error, Terminated, TrainingDiverged
from .fileio import write_text
from .model import build_model, collapse_warning, freeze_blocks, load_pretrained, train_mode, zero_init_residual
from .optim import build_optimizer, build_scheduler, make_ema
from .run_folder import (
    RUN_CONFIG_FILE,
    check_same_data,
    check_same_world_size,
    claim_run_folder,
    default_run_dir,
    remove_run_outputs,
    resume_hint,
    run_config_json,
)
from .signals import raise_if_terminated, sigint_deferred, sigterm_as_interrupt, sigterm_noted, worker_quiet_on_sigterm
from .train_state import epoch_seed, restore_training_state, rng_state, seed_everything

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds")


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    summary: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    is_main: bool = True  # False on the other ranks of a torchrun job


# --------------------------------------------------------------------------------------------------- set-up pieces
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


# --------------------------------------------------------------------------------------------------- the loops
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
            opt.zero_grad(set_to_none=True)
            if ctx.scaler is not None:
                ctx.scaler.scale(loss).backward()
                ctx.clip(model, opt)
                ctx.scaler.step(opt)
                scale = ctx.scaler._scale  # private, but a tensor: reading it does not make the CPU wait for the GPU
                before = scale.clone() if scale is not None else None
                ctx.scaler.update()
                if before is not None:  # the scale drops exactly when the step was passed over
                    passed_over = (ctx.scaler._scale < before).to(torch.int64)
                    ctx.scaler_skipped = passed_over if ctx.scaler_skipped is None else ctx.scaler_skipped + passed_over
            else:
                loss.backward()
                ctx.clip(model, opt)
                opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            finite = torch.isfinite(loss.detach())
            loss_sum += torch.where(finite, loss.detach().double() * labels.shape[0], 0.0)
            bad = (~finite).to(torch.int64)
            bad = torch.stack((bad, bad * labels.shape[0]))  # device ops only: no host copy, no sync
            ctx.nonfinite_loss = bad if ctx.nonfinite_loss is None else ctx.nonfinite_loss + bad
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


# --------------------------------------------------------------------------------------------------- the run
def fit(
    cfg: RunConfig, *, run_dir: str | Path | None = None, resume_from: Checkpoint | None = None, overwrite: bool = False
) -> TrainResult:
    """Train ``cfg``; files go to ``run_dir`` (default ``weights/<source>-<time>/``).

    ``resume_from`` (see :func:`~mnv2export.run_folder.resume_config`) continues that run's ``last.pt`` from its last completed epoch. A new run
    refuses a folder that already holds files unless ``overwrite`` (then the folder's config.json must prove it a run's,
    whose outputs are removed once the data and model are ready), or unless the run there saved no checkpoint (stopped
    while starting: :func:`~mnv2export.run_folder.check_run_folder`). The folder is locked for the run: a second
    ``fit`` into it fails (after waiting :data:`~mnv2export.run_folder.RUN_LOCK_WAIT_S` for a killed run's DataLoader workers to let go).
    """
    if overwrite and resume_from is not None:
        raise ConfigError(
            "--overwrite and --resume contradict each other",
            hint="--resume continues the run, --overwrite replaces it: pass one",
        )
    run_dir = Path(run_dir or cfg.train.out or default_run_dir(cfg))
    cfg = cfg.with_absolute_paths()  # the checkpoint says where the data is, wherever export and check run from
    device_type = "cuda" if cfg.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    info = D.init(device_type)
    try:
        with contextlib.ExitStack() as stack:
            created, refused = False, None
            try:
                check_settings(cfg, info, resume_from)  # before the data is read
                if info.is_main:
                    created = claim_run_folder(run_dir, stack, resume_from=resume_from, overwrite=overwrite)
            except Mnv2Error as exc:
                refused = exc
            # every rank stops when one refused; an error of the settings (the same on every rank) is said by rank 0
            # alone, one that a single rank met (its device) by that rank
            D.stop_together(refused, info)
            if device_type == "cpu" and info.is_main:
                warn_if_oversubscribed(cfg.train.threads, setting="--threads (train.threads in a recipe)")
            stack.enter_context(cpu_threads(cfg.train.threads if device_type == "cpu" else 0))
            stack.enter_context(sigterm_as_interrupt())
            try:
                return _fit(cfg, info, run_dir, resume_from, overwrite)
            except RuntimeError as exc:
                reason = D.peer_failure(exc) if info.enabled else None
                if reason is None:
                    raise
                raise DistributedError(
                    f"another process of the job stopped ({reason})", hint=resume_hint(run_dir / "last.pt")
                ) from exc
            except BaseException:
                if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()  # a run that fails before writing anything (bad data, device, weights) leaves no folder
                raise
    finally:
        D.shutdown()


def check_settings(cfg: RunConfig, info: D.DistInfo, resume_from: Checkpoint | None) -> None:
    """The checks of the settings that need no data: the device, SyncBatchNorm, a resume's number of processes."""
    device = resolve_device(cfg.train.device, info.local_rank)  # ProviderUnavailable: cuda asked for, none here
    if (
        cfg.train.sync_bn and device.type != "cuda"
    ):  # refused in one process too: else recorded, and not resumable under torchrun
        raise ConfigError(
            "SyncBatchNorm runs on CUDA only, this run is on the CPU",
            hint="drop --sync-bn (--resume of a CPU run that recorded it: pass --no-sync-bn)"
            if resume_from is not None
            else "drop --sync-bn",
        )
    if resume_from is not None:
        check_same_world_size(resume_from, info)


def _fit(
    cfg: RunConfig, info: D.DistInfo, run_dir: Path, resume_from: Checkpoint | None, overwrite: bool
) -> TrainResult:
    t = cfg.train
    device = resolve_device(t.device, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not info.is_main:
        logging.getLogger("mnv2export").setLevel(logging.WARNING)
    seed_everything(t.seed)

    data: DataBundle = build_datasets(cfg.data)
    if resume_from is not None:
        check_same_data(resume_from, data, cfg.data.source)
    elif info.is_main:
        warn_if_sideways(data, cfg.data)  # a new run only: the setting cannot change on resume
    cfg = cfg.with_classes(len(data.class_names))
    model = build_model(cfg.model)
    if info.is_main and resume_from is None and (collapsed := collapse_warning(cfg.model, cfg.data.img_size)):
        log.warning(collapsed)
    if t.init_from and resume_from is None:
        load_pretrained(model, t.init_from, report=info.is_main)
        if t.zero_init_residual and info.is_main:  # asked for, and not done: said (it was a -v notice)
            log.warning(
                "--zero-init-residual not applied: the weights come from %s (it is for a fresh model only)", t.init_from
            )
    elif t.zero_init_residual and resume_from is None:
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
    ctx = StepContext(
        device=device,
        dtype=amp_dtype(t.amp, device),
        channels_last=t.channels_last != "off",
        mix=batch_mix(t.mixup_alpha, t.cutmix_alpha, len(data.class_names)),
        clip_grad_norm=t.clip_grad_norm,
    )
    model.to(device)
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    train_module: nn.Module = model
    if info.enabled:
        train_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile:
        train_module = torch.compile(train_module)
    ema = make_ema(model, t)

    if data.train_memory is not None:
        log.info(
            "data held in memory, preprocessed a batch at a time%s",
            f" (workers = {t.workers} not needed)" if t.workers else "",
        )
    steps = len(make_loader(data.train, t, info, device, train=True, memory=data.train_memory))
    if steps == 0:
        raise DataError("the training set is empty", path=cfg.data.source, hint="add training images")
    opt = build_optimizer(model, t)
    sched = build_scheduler(opt, t, steps)
    if ctx.dtype == torch.float16:
        ctx.scaler = torch.amp.GradScaler(device.type)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)

    history: list[dict[str, float]] = []
    start_epoch, best_acc, best_epoch = 0, -1.0, 0
    skips = SkipTracker(defer=info.enabled)  # under DDP: gathered from every rank to all after each pass (gather_skips)

    def gather_skips() -> None:
        if info.enabled:  # each rank met its own share of the images: the summary and warnings cover every rank's
            skips.merge(D.all_gather_objects(skips.pending, info), warn=info.is_main)

    if resume_from is not None:
        history, start_epoch, best_acc, best_epoch = restore_training_state(
            resume_from, model, opt, sched, ctx.scaler, ema, steps, t.epochs
        )
        skips.paths.update(resume_from.train_summary.get("skipped_images", {}))
        if start_epoch >= t.epochs:
            log.info(
                "the run in %s already has %d epoch(s) of %d: nothing to train; pass a larger --epochs to train further",
                run_dir,
                start_epoch,
                t.epochs,
            )
        else:
            log.info("resuming %s at epoch %d of %d", run_dir, start_epoch + 1, t.epochs)

    eval_model = ema.module if ema is not None else model
    val_loader = make_loader(data.val, t, info, device, train=False, memory=data.val_memory)
    summary: dict[str, Any] = {}
    started = time.perf_counter()
    tag = f"amp={ctx.dtype} channels_last={ctx.channels_last} world_size={info.world_size}"
    extras = cfg.training_extras()
    log.info(
        "training on %s (%s), %d steps per epoch%s", device, tag, steps, f"; {', '.join(extras)}" if extras else ""
    )

    def update_summary(epoch: int) -> None:
        summary.update(
            {
                "epoch": epoch,
                "epochs": t.epochs,
                "best_val_acc": best_acc,
                "best_epoch": best_epoch,
                "final": history[-1] if history else {},
                "history": history,
                "images_skipped": skips.count,
                "skipped_images": dict(list(skips.paths.items())[:1000]),
                "device": str(device),
                "world_size": info.world_size,
                "amp": str(ctx.dtype).removeprefix("torch.") if ctx.dtype else "off",
                "data": data.summary,
            }
        )

    def snapshot(epoch: int, with_resume: bool) -> Checkpoint:
        update_summary(epoch)
        extra: dict[str, Any] = {}
        if with_resume:
            extra = {
                "train_config": t.to_dict(),
                "resume": {
                    "model": _cpu_state(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": ctx.scaler.state_dict() if ctx.scaler else {},
                    "ema": _cpu_state(ema) if ema is not None else {},
                    "rng": rng_state(),
                },
            }
        return Checkpoint(
            model_config=cfg.model,
            data_config=cfg.data,
            class_names=data.class_names,
            state_dict=_cpu_state(eval_model),
            train_summary=dict(summary),
            provenance=provenance(data.fingerprint),
            extra=extra,
        )

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if info.is_main:
        if overwrite:  # only now that this run is ready: an error of its data or settings left the earlier run whole
            remove_run_outputs(run_dir)
            log.info("--overwrite: removed the earlier run's files from %s", run_dir)
        write_text(
            run_dir / RUN_CONFIG_FILE, run_config_json(cfg)
        )  # replaces the earlier run's (left by remove_run_outputs)
        if not last_path.exists():
            save_checkpoint(snapshot(start_epoch, True), last_path)  # a loadable last.pt from the first moment on
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, t.epochs):
            raise_if_terminated()  # one that came while the last epoch's files were written
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(t.seed, epoch))  # augmentation and dropout randomness of this epoch
            loader = make_loader(data.train, t, info, device, train=True, epoch=epoch, memory=data.train_memory)
            with _progress(info.is_main and t.progress, f"epoch {epoch + 1}/{t.epochs}", len(loader)) as advance:
                loss_sum, n = train_one_epoch(
                    train_module, loader, opt, sched, criterion, ctx, ema=ema, skips=skips, progress=advance
                )
            nonfinite = ctx.nonfinite_loss.tolist() if ctx.nonfinite_loss is not None else [0, 0]
            ctx.nonfinite_loss = None
            sums = D.all_reduce_sum(
                torch.tensor([loss_sum, float(n), *map(float, nonfinite)], dtype=torch.float64, device=device), info
            )
            nonfinite_batches, finite_images = int(sums[2]), float(sums[1] - sums[3])
            train_loss = float(sums[0]) / finite_images if finite_images else math.nan
            gather_skips()
            if float(sums[1]) == 0:  # every batch passed over: nothing was trained, so no checkpoint may say it was
                raise DataError(
                    f"no training batch in epoch {epoch + 1} had two readable images: nothing was trained",
                    path=cfg.data.source,
                    hint="fix or remove the unreadable images (each was named in a warning above)",
                )
            # rank 0's BatchNorm statistics (model and EMA) on every rank: each rank's are those of its own last
            # batches, and rank 0's are saved, so the metrics logged are those of the saved weights
            D.broadcast_buffers(model, info)
            if ema is not None:
                D.broadcast_buffers(ema, info)
            try:
                check_finite(
                    model,
                    ema,
                    epoch + 1,
                    train_loss,
                    t,
                    len(history),
                    mixed=ctx.dtype is not None,
                    nonfinite_batches=nonfinite_batches,
                    every_batch_nonfinite=finite_images == 0,
                    scaled=ctx.scaler is not None,
                )
                diverged = None
            except TrainingDiverged as exc:
                diverged = exc
            D.stop_together(diverged, info)  # the same weights on every rank: said once, by rank 0
            metrics = evaluate(eval_model, val_loader, ctx, cfg.model.num_classes, info, skips=skips)
            gather_skips()
            if metrics["count"] == 0:  # no accuracy to judge the epoch by: no checkpoint may say 'val_acc 0.00% (best)'
                raise DataError(
                    f"no validation image could be read in epoch {epoch + 1}: nothing was validated",
                    path=cfg.data.source,
                    hint="fix or remove the unreadable images (each was named in a warning above)",
                )
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": metrics["val_loss"],
                "val_acc": metrics["val_acc"],
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            scaler_skipped = int(ctx.scaler_skipped.item()) if ctx.scaler_skipped is not None else 0
            ctx.scaler_skipped = None
            summary["confusion"] = metrics["confusion"]
            if metrics["val_acc"] > best_acc:
                best_acc, best_epoch = metrics["val_acc"], epoch + 1
            log.info(
                "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.2f%%  lr %.2e  %.1fs%s",
                epoch + 1,
                t.epochs,
                row["train_loss"],
                row["val_loss"],
                100 * row["val_acc"],
                row["lr"],
                row["seconds"],
                "  (best)" if best_epoch == epoch + 1 else "",
            )
            if nonfinite_batches:  # some only (every one raised above): the scaler passed over their steps
                log.warning(
                    "epoch %d: the loss was NaN or infinite in %d batch(es) (%s; their optimizer steps were passed over): "
                    "train_loss is the mean of the others",
                    epoch + 1,
                    nonfinite_batches,
                    "fp16 overflow in the forward pass" if ctx.scaler is not None else "non-finite loss",
                )
            if scaler_skipped:
                log.warning(
                    "epoch %d: the fp16 gradient scaler passed over the optimizer step of %d of %d batches (inf/NaN gradients while it "
                    "lowers its scale): those batches did not train",
                    epoch + 1,
                    scaler_skipped,
                    len(loader),
                )
            update_summary(epoch + 1)
            if info.is_main:
                # last.pt first, metrics.csv last: a metrics row means its epoch is in last.pt. Ctrl-C waits for the
                # three writes (a SIGTERM is acted on only between batches), so an interrupt never leaves them telling
                # different epochs.
                with sigint_deferred():
                    save_checkpoint(snapshot(epoch + 1, True), last_path)
                    if best_epoch == epoch + 1:
                        save_checkpoint(snapshot(epoch + 1, False), best_path)
                    write_text(run_dir / "metrics.csv", _csv(history))
            D.barrier(info)
    except BaseException as exc:
        # after a SIGTERM, an error is its consequence: the signal reached the DataLoader's workers (a process group
        # terminated) or the other ranks too, and their end was seen before the next batch
        consequence = isinstance(exc, Exception) and sigterm_noted()
        terminated = consequence or isinstance(exc, Terminated)
        if not (terminated or isinstance(exc, KeyboardInterrupt)):
            raise
        if info.is_main:
            log.warning(
                "%s in epoch %d; %s holds epoch %d: continue with --resume",
                Terminated.what if terminated else "interrupted",
                epoch + 1,
                last_path,
                len(history),
            )
        if consequence:
            raise Terminated from exc
        raise
    update_summary(len(history))
    summary["wall_seconds"] = time.perf_counter() - started
    if info.is_main and not best_path.exists():
        save_checkpoint(snapshot(len(history), False), best_path)
    if info.is_main and t.plots and history:
        from .plots import training_pictures

        training_pictures(run_dir, history, best_path, data, summary.get("confusion"))
    return TrainResult(
        run_dir=run_dir, best=best_path, last=last_path, summary=summary, history=history, is_main=info.is_main
    )


def check_finite(
    model: nn.Module,
    ema,
    epoch: int,
    train_loss: float,
    t: TrainConfig,
    epochs_saved: int,
    *,
    mixed: bool = False,
    nonfinite_batches: int = 0,
    every_batch_nonfinite: bool = False,
    scaled: bool = False,
) -> None:
    """:class:`TrainingDiverged` when a weight or BatchNorm statistic of the model (or of its EMA) is NaN or infinite
    after ``epoch``, or when the loss was NaN or infinite in every batch of it (``every_batch_nonfinite``; at fp16 the
    gradient scaler then passes over every step, so the weights stay finite and nothing is trained): such an epoch
    would be validated at chance, and saved as ``best.pt`` when it is the first. Raised before any file of the epoch is
    written, on every rank alike (the weights and the summed counts are the same on every rank). ``mixed``: the run
    trained under autocast (the hint then suggests fp32 too); ``scaled``: with fp16's gradient scaler."""
    held = f"last.pt holds epoch {epochs_saved}" if epochs_saved else "no epoch was saved"
    hint = (
        f"lower the learning rate (lr = {t.lr:g}) or warm up longer (warmup_epochs = {t.warmup_epochs:g})"
        + (", or train in fp32 (--amp off)" if mixed else "")
        + ", and train again"
    )
    loss_note = (
        f"the loss NaN or infinite in {nonfinite_batches:,} batches"
        if nonfinite_batches
        else f"train_loss {train_loss:.4g}"
    )
    modules = [("model", model)] + ([("EMA", ema)] if ema is not None else [])
    for name, module in modules:
        tensors = [v for v in module.state_dict().values() if v.is_floating_point()]
        bad = sum(int((~torch.isfinite(v)).sum()) for v in tensors)
        if bad:
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: {bad:,} {name} weights and statistics are NaN or infinite "
                f"({loss_note}); {held}",
                hint=hint,
            )
    if every_batch_nonfinite:
        raise TrainingDiverged(
            f"training diverged in epoch {epoch}: the loss was NaN or infinite in every one of its {nonfinite_batches:,} batches, "
            f"so no step trained the model{' (the fp16 gradient scaler passed over each)' if scaled else ''}; {held}",
            hint=(
                "the model's outputs overflow fp16: train in fp32 (--amp off) or bf16 (--amp bf16), or start from smaller "
                "weights, and train again"
            )
            if scaled
            else hint,
        )


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _csv(rows: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int):
    """A rich progress bar for one epoch (to stderr); yields a callable that advances it by one step."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
