"""``mnv2 train``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (
    DATA,
    HARDWARE,
    MODEL,
    RUN,
    TRAINING,
    BatchSize,
    ClassIndex,
    Data,
    DataDir,
    Device,
    Epochs,
    ExifOrientation,
    FreezeBlocks,
    ImgSize,
    InitFrom,
    Progress,
    Recipe,
    SmallInput,
    SynthClasses,
    SynthPerClass,
    ValSplit,
    Width,
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
    resize_size: Annotated[
        Optional[int],
        typer.Option(
            help="Validation resize of the shorter side before the centre crop (default img_size / 0.875; none at 64 px and below).",
            rich_help_panel=DATA,
        ),
    ] = None,
    width_mult: Width = None,
    small_input: SmallInput = None,
    output_stride: Annotated[
        Optional[int],
        typer.Option(
            help="Total stride 8, 16 or 32: the last stride-2 stages run at stride 1 (larger deep maps, more compute).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    dropout: Annotated[
        Optional[float], typer.Option(help="Dropout before the classifier.", rich_help_panel=MODEL)
    ] = None,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean R,G,B.", rich_help_panel=DATA)] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std R,G,B.", rich_help_panel=DATA)] = None,
    train_aug: Annotated[
        Optional[str],
        typer.Option(help="Train augmentation: rrc (random resized crop), crop_pad, none.", rich_help_panel=DATA),
    ] = None,
    auto_augment: Annotated[
        Optional[str],
        typer.Option(
            help="Automatic augmentation after the crop and flip (torchvision's): ta_wide (TrivialAugmentWide), ra (RandAugment), augmix, imagenet / cifar10 / svhn (AutoAugment's policies), none.",
            rich_help_panel=DATA,
        ),
    ] = None,
    random_erase: Annotated[
        Optional[float],
        typer.Option(
            help="Random Erasing probability (a rectangle of the normalised image set to 0).", rich_help_panel=DATA
        ),
    ] = None,
    synth_classes: SynthClasses = None,
    synth_train_per_class: SynthPerClass = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.", rich_help_panel=TRAINING)] = None,
    optimizer: Annotated[
        Optional[str], typer.Option(help="sgd (momentum, nesterov) or adamw.", rich_help_panel=TRAINING)
    ] = None,
    weight_decay: Annotated[
        Optional[float],
        typer.Option(help="Weight decay (not applied to norm and bias parameters).", rich_help_panel=TRAINING),
    ] = None,
    depthwise_weight_decay: Annotated[
        Optional[float],
        typer.Option(
            help="Weight decay of the depthwise convolutions' weights (default: --weight-decay).",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    warmup_epochs: Annotated[
        Optional[float],
        typer.Option(help="Linear warm-up length in epochs, then the decay of --schedule.", rich_help_panel=TRAINING),
    ] = None,
    schedule: Annotated[
        Optional[str],
        typer.Option(help="Learning-rate decay to zero after the warm-up: cosine or linear.", rich_help_panel=TRAINING),
    ] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing.", rich_help_panel=TRAINING)] = None,
    mixup_alpha: Annotated[
        Optional[float],
        typer.Option(
            help="MixUp of each batch, Beta(alpha, alpha) weights (0: off; 0.2 is usual).", rich_help_panel=TRAINING
        ),
    ] = None,
    cutmix_alpha: Annotated[
        Optional[float],
        typer.Option(
            help="CutMix of each batch (0: off; 1.0 is usual); with --mixup-alpha, one of the two per batch.",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    clip_grad_norm: Annotated[
        Optional[float],
        typer.Option(
            help="Clip the gradients' total L2 norm to this before each step (default: no clipping).",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    ema: Annotated[
        Optional[bool],
        typer.Option(
            "--ema/--no-ema",
            help="Keep an exponential moving average of the weights (evaluated and saved).",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    amp: Annotated[
        Optional[str],
        typer.Option(
            help="Mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16.", rich_help_panel=HARDWARE
        ),
    ] = None,
    channels_last: Annotated[
        Optional[str], typer.Option(help="channels_last memory format: auto, on, off.", rich_help_panel=HARDWARE)
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option("--compile/--no-compile", help="torch.compile the model.", rich_help_panel=HARDWARE),
    ] = None,
    device: Device = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.", rich_help_panel=TRAINING)] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="Data loader worker processes.", rich_help_panel=HARDWARE)
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            help="CPU: intra-op threads of the training process (0: torch's default, one per core).",
            rich_help_panel=HARDWARE,
        ),
    ] = None,
    sync_bn: Annotated[
        Optional[bool],
        typer.Option("--sync-bn/--no-sync-bn", help="SyncBatchNorm under torchrun.", rich_help_panel=HARDWARE),
    ] = None,
    init_from: InitFrom = None,
    freeze_blocks: FreezeBlocks = None,
    zero_init_residual: Annotated[
        Optional[bool],
        typer.Option(
            "--zero-init-residual/--no-zero-init-residual",
            help="Start each residual block as the identity (its last BatchNorm scale 0); not with --init-from.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    out: Annotated[
        Optional[str],
        typer.Option("--out", "-o", help="Run folder (default weights/<data>-<time>).", rich_help_panel=RUN),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.", rich_help_panel=RUN)
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the run already in --out (without it, a folder holding files is refused).",
            rich_help_panel=RUN,
        ),
    ] = False,
    plots: Annotated[
        Optional[bool],
        typer.Option("--plots/--no-plots", help="Write the training pictures at the end.", rich_help_panel=RUN),
    ] = None,
    progress: Progress = None,
) -> None:
    """Train MobileNetV2 (CUDA when present, else CPU). Under torchrun: DistributedDataParallel.

    Without --data (and no source in --config): data/ when it holds an ImageFolder (train/<class>/, val/<class>/).
    """
    # locals() before any other name is bound: the parameters alone
    flags = config_flags({name: value for name, value in locals().items() if name not in RUN_PARAMS})
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
