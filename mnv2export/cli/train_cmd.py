"""``mnv2 train``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from .options import (
    Amp,
    AutoAugment,
    BatchSize,
    ChannelsLast,
    ClassIndex,
    ClipGradNorm,
    Compile,
    CutmixAlpha,
    Data,
    DataDir,
    DepthwiseWeightDecay,
    Device,
    Dropout,
    Ema,
    Epochs,
    ExifOrientation,
    FreezeBlocks,
    ImgSize,
    InitFrom,
    LabelSmoothing,
    LearningRate,
    Mean,
    MixupAlpha,
    Optimizer,
    OutputStride,
    Plots,
    Progress,
    RandomErase,
    Recipe,
    ResizeSize,
    Resume,
    Schedule,
    Seed,
    SmallInput,
    Std,
    SyncBn,
    SynthClasses,
    SynthPerClass,
    TrainAug,
    TrainOut,
    TrainOverwrite,
    TrainThreads,
    ValSplit,
    WarmupEpochs,
    WeightDecay,
    Width,
    Workers,
    ZeroInitResidual,
    config_flags,
    took,
)

RUN_PARAMS = ("config", "resume", "overwrite")  # how to run, not what: every other parameter is a config field


def train(
    config: Recipe = None,
    source: Data = None,
    data_dir: DataDir = None,
    val_split: ValSplit = None,
    exif_orientation: ExifOrientation = None,
    class_index: ClassIndex = None,
    img_size: ImgSize = None,
    resize_size: ResizeSize = None,
    width_mult: Width = None,
    small_input: SmallInput = None,
    output_stride: OutputStride = None,
    dropout: Dropout = None,
    mean: Mean = None,
    std: Std = None,
    train_aug: TrainAug = None,
    auto_augment: AutoAugment = None,
    random_erase: RandomErase = None,
    synth_classes: SynthClasses = None,
    synth_train_per_class: SynthPerClass = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    optimizer: Optimizer = None,
    weight_decay: WeightDecay = None,
    depthwise_weight_decay: DepthwiseWeightDecay = None,
    warmup_epochs: WarmupEpochs = None,
    schedule: Schedule = None,
    label_smoothing: LabelSmoothing = None,
    mixup_alpha: MixupAlpha = None,
    cutmix_alpha: CutmixAlpha = None,
    clip_grad_norm: ClipGradNorm = None,
    ema: Ema = None,
    amp: Amp = None,
    channels_last: ChannelsLast = None,
    compile: Compile = None,
    device: Device = None,
    seed: Seed = None,
    workers: Workers = None,
    threads: TrainThreads = None,
    sync_bn: SyncBn = None,
    init_from: InitFrom = None,
    freeze_blocks: FreezeBlocks = None,
    zero_init_residual: ZeroInitResidual = None,
    out: TrainOut = None,
    resume: Resume = False,
    overwrite: TrainOverwrite = False,
    plots: Plots = None,
    progress: Progress = None,
) -> None:
    """Train MobileNetV2 (CUDA when present, else CPU). Under torchrun: DistributedDataParallel.

    Without --data (and no source in --config): data/ when it holds an ImageFolder (train/<class>/, val/<class>/).
    """
    # locals() before any other name is bound: the parameters alone
    flags = config_flags({name: value for name, value in locals().items() if name not in RUN_PARAMS})
    _train_and_say(flags, config, out, resume=resume, overwrite=overwrite)


def _train_and_say(
    flags: dict[str, dict[str, Any]], config: Path | None, out: str | None, *, resume: bool, overwrite: bool
) -> None:
    """Check the settings, train, and say the best accuracy (the main process alone, under torchrun)."""
    cfg, ckpt = _run_settings(flags, config, resume=resume, overwrite=overwrite)
    from ..train import fit  # torch is imported here, after the flags and the recipe passed: their errors come at once

    result = fit(cfg, run_dir=out, resume_from=ckpt) if resume else fit(cfg, overwrite=overwrite)
    s = result.summary
    if result.is_main:
        typer.echo(
            f"best val_acc {100 * s['best_val_acc']:.2f}% (epoch {s['best_epoch']}), {s['epoch']} epochs, "
            f"{s.get('images_skipped', 0)} images skipped -> {result.best}"
        )


def _run_settings(flags: dict[str, dict[str, Any]], config: Path | None, *, resume: bool, overwrite: bool):
    """The run's configuration and, with ``resume``, the checkpoint it continues (None: a new run)."""
    from ..errors import Mnv2Error

    try:
        if resume:
            return _resume_settings(flags, config, overwrite=overwrite)
        return _new_run_settings(flags, config), None
    except Mnv2Error:
        # the flags, recipe or run folder refused: every process of a torchrun job on this machine read the same, and
        # the first says it; the others leave without a word (before joining the process group, so no collective)
        if int(os.environ.get("LOCAL_RANK", "0")) != 0:
            raise SystemExit(1) from None
        raise


def _resume_settings(flags: dict[str, dict[str, Any]], config: Path | None, *, overwrite: bool):
    """``--resume``: the configuration stored in the run folder (``--out``), with the flags that may change."""
    from ..errors import ConfigError

    out = flags["train"]["out"]
    if overwrite:
        raise ConfigError(
            "--overwrite and --resume contradict each other",
            hint="--resume continues the run, --overwrite replaces it: pass one",
        )
    if not out:
        raise ConfigError("--resume needs the run folder", hint="pass --out weights/<run>")
    if config:
        raise ConfigError(
            "--config is not read with --resume: a run continues with its own settings",
            path=config,
            hint="drop --config (--epochs, --workers, --threads, --device and the progress and plot switches may change)",
        )
    from ..train import resume_config  # reads a checkpoint: imports torch

    return resume_config(Path(out), flags)


def _new_run_settings(flags: dict[str, dict[str, Any]], config: Path | None):
    """A new run's configuration: the flags over the recipe (``--config``) over the data source's defaults."""
    from ..config import load_recipe, run_config

    recipe = load_recipe(config) if config else None
    if flags["data"]["source"] is None and not (recipe and (recipe.given or {}).get("data", {}).get("source")):
        flags["data"]["source"] = _default_data()
    cfg = run_config(recipe, flags["model"], flags["data"], flags["train"], recipe_path=config)
    if cfg.train.device != "cuda" and not cfg.train.sync_bn:
        # the paths, said at once rather than after torch's import; --device cuda and --sync-bn have errors of their
        # own that need torch and come first (in fit, before the data is read), so then the paths wait too
        from ..fileio import require_data_folder, require_init_weights

        if not cfg.data.is_builtin:
            require_data_folder(cfg.data.source)
        if cfg.train.init_from:
            require_init_weights(cfg.train.init_from)
    return cfg


def _default_data() -> str | None:
    """``data/`` when it holds an ImageFolder (train/<class>/, val/<class>/), said once (rank 0 under torchrun);
    else None: the command asks for --data, as without this default."""
    from ..default_targets import default_data_folder

    found = default_data_folder()
    if found is None:
        return None
    if int(os.environ.get("RANK", "0")) == 0:
        took("train", "--data", f"{found}/", "an ImageFolder: train/ and val/ hold class folders")
    return str(found)
