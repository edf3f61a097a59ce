"""The trainer: ``fit()`` runs a whole training run: its set-up (:mod:`~mnv2export.train.run`), the epoch loop, and
the recorder of each epoch (history, log, ``last.pt`` / ``best.pt`` / ``metrics.csv``).

CUDA when present (mixed precision: bf16 where supported, else fp16 with a gradient scaler; channels_last; pinned
memory and non-blocking copies; optional torch.compile), CPU otherwise (channels_last, which oneDNN runs faster).
DDP-aware: under ``torchrun`` each rank sees its shard (DistributedSampler), metrics are summed over ranks, and only
rank 0 writes files and logs.

Reproducibility: the data order and the augmentation / dropout randomness of epoch ``e`` are drawn from generators
seeded by ``(seed, e)``, so a run resumed from ``last.pt`` at an epoch boundary continues exactly as the uninterrupted
run would have (bit for bit on CPU; :mod:`~mnv2export.train.state`). The optimizer, schedule and EMA are built in
:mod:`~mnv2export.train.optim`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as D
from ..checkpoint import Checkpoint, save_checkpoint
from ..config import RunConfig, TrainConfig
from ..device import cpu_threads, resolve_device, warn_if_oversubscribed
from ..errors import ConfigError, DataError, DistributedError, Mnv2Error, Terminated, TrainingDiverged
from ..fileio import write_text
from .run import TrainingRun, set_up_run
from .run_folder import (
    RUN_CONFIG_FILE,
    check_same_world_size,
    claim_run_folder,
    default_run_dir,
    remove_run_outputs,
    resume_hint,
    run_config_json,
)
from .signals import raise_if_terminated, sigint_deferred, sigterm_as_interrupt, sigterm_noted
from .state import epoch_seed
from .steps import evaluate, make_loader, train_one_epoch

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


# --------------------------------------------------------------------------------------------------- the run
def fit(
    cfg: RunConfig, *, run_dir: str | Path | None = None, resume_from: Checkpoint | None = None, overwrite: bool = False
) -> TrainResult:
    """Train ``cfg``; files go to ``run_dir`` (default ``weights/<source>-<time>/``).

    ``resume_from`` (see :func:`~mnv2export.train.run_folder.resume_config`) continues that run's ``last.pt`` from its last completed epoch. A new run
    refuses a folder that already holds files unless ``overwrite`` (then the folder's config.json must prove it a run's,
    whose outputs are removed once the data and model are ready), or unless the run there saved no checkpoint (stopped
    while starting: :func:`~mnv2export.train.run_folder.check_run_folder`). The folder is locked for the run: a second
    ``fit`` into it fails (after waiting :data:`~mnv2export.train.run_folder.RUN_LOCK_WAIT_S` for a killed run's DataLoader workers to let go).
    """
    if overwrite and resume_from is not None:
        raise ConfigError(
            "{overwrite} and {resume_from} contradict each other",
            hint="{resume_from} continues the run, {overwrite} replaces it: pass one",
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
    # refused in one process too: else recorded, and not resumable under torchrun
    if cfg.train.sync_bn and device.type != "cuda":
        resumed = " (the resumed run recorded it: it may change)" if resume_from is not None else ""
        raise ConfigError(
            "SyncBatchNorm runs on CUDA only, this run is on the CPU", hint="turn {sync_bn} off" + resumed
        )
    if resume_from is not None:
        check_same_world_size(resume_from, info)


def _fit(
    cfg: RunConfig, info: D.DistInfo, run_dir: Path, resume_from: Checkpoint | None, overwrite: bool
) -> TrainResult:
    """The run itself: its set-up, the epochs, then best.pt (if no epoch saved one) and the training pictures."""
    run = set_up_run(cfg, info, run_dir, resume_from)
    started = time.perf_counter()
    _open_run_folder(run, overwrite)
    _train_epochs(run)
    run.update_summary(len(run.history))
    run.summary["wall_seconds"] = time.perf_counter() - started
    if info.is_main and not run.best_path.exists():
        save_checkpoint(run.snapshot(len(run.history), False), run.best_path)
    if info.is_main and cfg.train.plots and run.history:
        from ..plots import training_pictures

        training_pictures(run_dir, run.history, run.best_path, run.data, run.summary.get("confusion"))
    return TrainResult(
        run_dir=run_dir,
        best=run.best_path,
        last=run.last_path,
        summary=run.summary,
        history=run.history,
        is_main=info.is_main,
    )


def _open_run_folder(run: TrainingRun, overwrite: bool) -> None:
    """Rank 0: the run's config.json, and a loadable last.pt from the first moment on (a new run); with ``overwrite``,
    the earlier run's files removed first."""
    if not run.info.is_main:
        return
    if overwrite:  # only now that this run is ready: an error of its data or settings left the earlier run whole
        remove_run_outputs(run.run_dir)
        log.info("--overwrite: removed the earlier run's files from %s", run.run_dir)
    write_text(run.run_dir / RUN_CONFIG_FILE, run_config_json(run.cfg))  # replaces the one remove_run_outputs left
    if not run.last_path.exists():
        save_checkpoint(run.snapshot(run.start_epoch, True), run.last_path)


# --------------------------------------------------------------------------------------------------- the epochs
def _train_epochs(run: TrainingRun) -> None:
    """Train, validate and record each epoch from ``run.start_epoch`` on. An interrupt (Ctrl-C, SIGTERM) is said with
    the epoch last.pt holds, and raised; an error that a SIGTERM caused is raised as :class:`Terminated`."""
    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch, run.cfg.train.epochs):
            raise_if_terminated()  # one that came while the last epoch's files were written
            t0 = time.perf_counter()
            train_loss, nonfinite_batches, batches = _train_pass(run, epoch)
            metrics = _validate(run, epoch)
            seconds = time.perf_counter() - t0
            _record_epoch(
                run, epoch, train_loss, metrics, seconds, nonfinite_batches=nonfinite_batches, batches=batches
            )
            D.barrier(run.info)
    except BaseException as exc:
        # after a SIGTERM, an error is its consequence: the signal reached the DataLoader's workers (a process group
        # terminated) or the other ranks too, and their end was seen before the next batch
        consequence = isinstance(exc, Exception) and sigterm_noted()
        terminated = consequence or isinstance(exc, Terminated)
        if not (terminated or isinstance(exc, KeyboardInterrupt)):
            raise
        if run.info.is_main:
            log.warning(
                "%s in epoch %d; %s holds epoch %d: continue with --resume",
                Terminated.what if terminated else "interrupted",
                epoch + 1,
                run.last_path,
                len(run.history),
            )
        if consequence:
            raise Terminated from exc
        raise


def _train_pass(run: TrainingRun, epoch: int) -> tuple[float, int, int]:
    """Train one epoch; returns (mean training loss over every rank, batches whose loss was NaN or infinite, batches).
    Raises before anything of the epoch is saved when no batch trained or the weights diverged, on every rank."""
    t, info, ctx = run.cfg.train, run.info, run.ctx
    torch.manual_seed(epoch_seed(t.seed, epoch))  # augmentation and dropout randomness of this epoch
    loader = make_loader(run.data.train, t, info, run.device, train=True, epoch=epoch, memory=run.data.train_memory)
    with _progress(info.is_main and t.progress, f"epoch {epoch + 1}/{t.epochs}", len(loader)) as advance:
        loss_sum, n = train_one_epoch(
            run.train_module,
            loader,
            run.opt,
            run.sched,
            run.criterion,
            ctx,
            ema=run.ema,
            skips=run.skips,
            progress=advance,
        )
    nonfinite = ctx.nonfinite_loss.tolist() if ctx.nonfinite_loss is not None else [0, 0]
    ctx.nonfinite_loss = None
    sums = D.all_reduce_sum(
        torch.tensor([loss_sum, float(n), *map(float, nonfinite)], dtype=torch.float64, device=run.device), info
    )
    nonfinite_batches, finite_images = int(sums[2]), float(sums[1] - sums[3])
    train_loss = float(sums[0]) / finite_images if finite_images else math.nan
    run.gather_skips()
    if float(sums[1]) == 0:  # every batch passed over: nothing was trained, so no checkpoint may say it was
        raise DataError(
            f"no training batch in epoch {epoch + 1} had two readable images: nothing was trained",
            path=run.cfg.data.source,
            hint="fix or remove the unreadable images (each was named in a warning above)",
        )
    # rank 0's BatchNorm statistics (model and EMA) on every rank: each rank's are those of its own last batches, and
    # rank 0's are saved, so the metrics logged are those of the saved weights
    D.broadcast_buffers(run.model, info)
    if run.ema is not None:
        D.broadcast_buffers(run.ema, info)
    _stop_if_diverged(run, epoch, train_loss, nonfinite_batches, every_batch_nonfinite=finite_images == 0)
    return train_loss, nonfinite_batches, len(loader)


def _stop_if_diverged(
    run: TrainingRun, epoch: int, train_loss: float, nonfinite_batches: int, *, every_batch_nonfinite: bool
) -> None:
    """:func:`check_finite` on every rank, its :class:`TrainingDiverged` raised on all (said once, by rank 0)."""
    try:
        check_finite(
            run.model,
            run.ema,
            epoch + 1,
            train_loss,
            run.cfg.train,
            len(run.history),
            mixed=run.ctx.dtype is not None,
            nonfinite_batches=nonfinite_batches,
            every_batch_nonfinite=every_batch_nonfinite,
            scaled=run.ctx.scaler is not None,
        )
        diverged = None
    except TrainingDiverged as exc:
        diverged = exc
    D.stop_together(diverged, run.info)  # the same weights on every rank


def _validate(run: TrainingRun, epoch: int) -> dict[str, Any]:
    """:func:`evaluate` of the weights to be saved; a :class:`DataError` when no validation image could be read."""
    metrics = evaluate(run.eval_model, run.val_loader, run.ctx, run.cfg.model.num_classes, run.info, skips=run.skips)
    run.gather_skips()
    if metrics["count"] == 0:  # no accuracy to judge the epoch by: no checkpoint may say 'val_acc 0.00% (best)'
        raise DataError(
            f"no validation image could be read in epoch {epoch + 1}: nothing was validated",
            path=run.cfg.data.source,
            hint="fix or remove the unreadable images (each was named in a warning above)",
        )
    return metrics


# --------------------------------------------------------------------------------------------------- the record
def _record_epoch(
    run: TrainingRun,
    epoch: int,
    train_loss: float,
    metrics: dict[str, Any],
    seconds: float,
    *,
    nonfinite_batches: int,
    batches: int,
) -> None:
    """The epoch's metrics row in the history, said in the log, and its files (rank 0): last.pt, best.pt when it is the
    best so far, metrics.csv."""
    row = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": metrics["val_loss"],
        "val_acc": metrics["val_acc"],
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": seconds,
    }
    run.history.append(row)
    run.summary["confusion"] = metrics["confusion"]
    if metrics["val_acc"] > run.best_acc:
        run.best_acc, run.best_epoch = metrics["val_acc"], epoch + 1
    _log_epoch(run, row, nonfinite_batches, batches)
    run.update_summary(epoch + 1)
    if run.info.is_main:
        # last.pt first, metrics.csv last: a metrics row means its epoch is in last.pt. Ctrl-C waits for the three
        # writes (a SIGTERM is acted on only between batches), so an interrupt never leaves them telling different epochs.
        with sigint_deferred():
            save_checkpoint(run.snapshot(epoch + 1, True), run.last_path)
            if run.best_epoch == epoch + 1:
                save_checkpoint(run.snapshot(epoch + 1, False), run.best_path)
            write_text(run.run_dir / "metrics.csv", _csv(run.history))


def _log_epoch(run: TrainingRun, row: dict[str, float], nonfinite_batches: int, batches: int) -> None:
    """The epoch's line, and a warning for the batches that did not train (NaN / inf loss, steps the scaler passed)."""
    epoch = int(row["epoch"])
    scaler_skipped = int(run.ctx.scaler_skipped.item()) if run.ctx.scaler_skipped is not None else 0
    run.ctx.scaler_skipped = None
    log.info(
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.2f%%  lr %.2e  %.1fs%s",
        epoch,
        run.cfg.train.epochs,
        row["train_loss"],
        row["val_loss"],
        100 * row["val_acc"],
        row["lr"],
        row["seconds"],
        "  (best)" if run.best_epoch == epoch else "",
    )
    if nonfinite_batches:  # some only (every one raised above): the scaler passed over their steps
        log.warning(
            "epoch %d: the loss was NaN or infinite in %d batch(es) (%s; their optimizer steps were passed over): "
            "train_loss is the mean of the others",
            epoch,
            nonfinite_batches,
            "fp16 overflow in the forward pass" if run.ctx.scaler is not None else "non-finite loss",
        )
    if scaler_skipped:
        log.warning(
            "epoch %d: the fp16 gradient scaler passed over the optimizer step of %d of %d batches (inf/NaN gradients "
            "while it lowers its scale): those batches did not train",
            epoch,
            scaler_skipped,
            batches,
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
        + (", or train in fp32 ({amp} off)" if mixed else "")
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
                "the model's outputs overflow fp16: train in fp32 ({amp} off) or bf16 ({amp} bf16), or start from smaller "
                "weights, and train again"
            )
            if scaled
            else hint,
        )


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
