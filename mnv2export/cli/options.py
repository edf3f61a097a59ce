"""CLI options shared by several commands, declared once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

# --help panels of train and pipeline (as timm's train.py groups its arguments)
DATA, MODEL, TRAINING, HARDWARE, RUN, CHECKS = "Data", "Model", "Training", "Hardware", "Run", "Export, check and bench"

Device = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        help="auto (CUDA when present), cuda or cpu. Asking for cuda where there is none is an error.",
        rich_help_panel=HARDWARE,
    ),
]
Provider = Annotated[str, typer.Option("--provider", help="Execution provider(s): cpu, cuda or all (comma-separated).")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Training epochs.", rich_help_panel=TRAINING)]
Width = Annotated[
    Optional[float], typer.Option("--width", help="Width multiplier (0.35 to 1.4).", rich_help_panel=MODEL)
]
ImgSize = Annotated[
    Optional[int], typer.Option("--img-size", help="Input size in pixels (square).", rich_help_panel=DATA)
]
SmallInput = Annotated[
    Optional[bool],
    typer.Option(
        "--small-input/--no-small-input",
        help="Keep resolution for 28-64 px inputs (total stride 8).",
        rich_help_panel=MODEL,
    ),
]
Data = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="synth, fashion-mnist, or an ImageFolder folder (train/<class>/, val/<class>/; or <class>/ alone with --val-split).",
        rich_help_panel=DATA,
    ),
]
ValSplit = Annotated[
    Optional[float],
    typer.Option(
        "--val-split",
        help="A --data folder of class folders without train/ and val/: hold out this share of each class's images for validation (0 < x <= 0.5; chosen by a hash of each file's path, so the same every run).",
        show_default=False,
        rich_help_panel=DATA,
    ),
]
ExifOrientation = Annotated[
    Optional[bool],
    typer.Option(
        "--exif-orientation/--no-exif-orientation",
        help="A --data folder of photos: decode each image upright as its EXIF orientation tag says (phone photos are often stored sideways); stored in the checkpoint, so check, export and predict decode alike (default: off, the pixels as stored).",
        show_default=False,
        rich_help_panel=DATA,
    ),
]
FreezeBlocks = Annotated[
    Optional[int],
    typer.Option(
        "--freeze-blocks",
        help="Fine-tuning: keep the first N of the 19 feature blocks as --init-from gave them (weights and BatchNorm statistics); 19: the classifier alone trains.",
        show_default=False,
        rich_help_panel=MODEL,
    ),
]
DataDir = Annotated[
    Optional[str],
    typer.Option(
        "--data-dir",
        help="Folder holding the Fashion-MNIST IDX files (default: Debian's dataset-fashion-mnist).",
        rich_help_panel=DATA,
    ),
]
Recipe = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        "-c",
        help="Training recipe (TOML with \\[model], \\[data], \\[train]); flags override it.",
        rich_help_panel=RUN,
    ),
]
BatchSize = Annotated[
    Optional[int], typer.Option("--batch-size", "-b", help="Batch size per process.", rich_help_panel=TRAINING)
]
ClassIndex = Annotated[
    Optional[str],
    typer.Option(
        "--class-index",
        help="JSON naming the classes (wnid -> name, as imagenet_class_index.json).",
        rich_help_panel=DATA,
    ),
]
InitFrom = Annotated[
    Optional[str],
    typer.Option(
        "--init-from",
        help="Start from a torchvision MobileNetV2 state dict (classifier replaced if the class count differs).",
        rich_help_panel=MODEL,
    ),
]
SynthClasses = Annotated[
    Optional[int], typer.Option("--synth-classes", help="synth: number of classes.", rich_help_panel=DATA)
]
SynthPerClass = Annotated[
    Optional[int], typer.Option("--synth-per-class", help="synth: training images per class.", rich_help_panel=DATA)
]
Progress = Annotated[
    Optional[bool],
    typer.Option("--progress/--no-progress", help="Show a progress bar per training epoch.", rich_help_panel=RUN),
]

# train's own options (the pipeline takes the shared ones above)
ResizeSize = Annotated[
    Optional[int],
    typer.Option(
        "--resize-size",
        help="Validation resize of the shorter side before the centre crop (default img_size / 0.875; none at 64 px and below).",
        rich_help_panel=DATA,
    ),
]
OutputStride = Annotated[
    Optional[int],
    typer.Option(
        "--output-stride",
        help="Total stride 8, 16 or 32: the last stride-2 stages run at stride 1 (larger deep maps, more compute).",
        rich_help_panel=MODEL,
    ),
]
Dropout = Annotated[
    Optional[float], typer.Option("--dropout", help="Dropout before the classifier.", rich_help_panel=MODEL)
]
Mean = Annotated[Optional[str], typer.Option("--mean", help="Normalisation mean R,G,B.", rich_help_panel=DATA)]
Std = Annotated[Optional[str], typer.Option("--std", help="Normalisation std R,G,B.", rich_help_panel=DATA)]
TrainAug = Annotated[
    Optional[str],
    typer.Option(
        "--train-aug", help="Train augmentation: rrc (random resized crop), crop_pad, none.", rich_help_panel=DATA
    ),
]
AutoAugment = Annotated[
    Optional[str],
    typer.Option(
        "--auto-augment",
        help="Automatic augmentation after the crop and flip (torchvision's): ta_wide (TrivialAugmentWide), ra (RandAugment), augmix, imagenet / cifar10 / svhn (AutoAugment's policies), none.",
        rich_help_panel=DATA,
    ),
]
RandomErase = Annotated[
    Optional[float],
    typer.Option(
        "--random-erase",
        help="Random Erasing probability (a rectangle of the normalised image set to 0).",
        rich_help_panel=DATA,
    ),
]
LearningRate = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", rich_help_panel=TRAINING)]
Optimizer = Annotated[
    Optional[str], typer.Option("--optimizer", help="sgd (momentum, nesterov) or adamw.", rich_help_panel=TRAINING)
]
WeightDecay = Annotated[
    Optional[float],
    typer.Option(
        "--weight-decay", help="Weight decay (not applied to norm and bias parameters).", rich_help_panel=TRAINING
    ),
]
DepthwiseWeightDecay = Annotated[
    Optional[float],
    typer.Option(
        "--depthwise-weight-decay",
        help="Weight decay of the depthwise convolutions' weights (default: --weight-decay).",
        rich_help_panel=TRAINING,
    ),
]
WarmupEpochs = Annotated[
    Optional[float],
    typer.Option(
        "--warmup-epochs",
        help="Linear warm-up length in epochs, then the decay of --schedule.",
        rich_help_panel=TRAINING,
    ),
]
Schedule = Annotated[
    Optional[str],
    typer.Option(
        "--schedule", help="Learning-rate decay to zero after the warm-up: cosine or linear.", rich_help_panel=TRAINING
    ),
]
LabelSmoothing = Annotated[
    Optional[float], typer.Option("--label-smoothing", help="Label smoothing.", rich_help_panel=TRAINING)
]
MixupAlpha = Annotated[
    Optional[float],
    typer.Option(
        "--mixup-alpha",
        help="MixUp of each batch, Beta(alpha, alpha) weights (0: off; 0.2 is usual).",
        rich_help_panel=TRAINING,
    ),
]
CutmixAlpha = Annotated[
    Optional[float],
    typer.Option(
        "--cutmix-alpha",
        help="CutMix of each batch (0: off; 1.0 is usual); with --mixup-alpha, one of the two per batch.",
        rich_help_panel=TRAINING,
    ),
]
ClipGradNorm = Annotated[
    Optional[float],
    typer.Option(
        "--clip-grad-norm",
        help="Clip the gradients' total L2 norm to this before each step (default: no clipping).",
        rich_help_panel=TRAINING,
    ),
]
Ema = Annotated[
    Optional[bool],
    typer.Option(
        "--ema/--no-ema",
        help="Keep an exponential moving average of the weights (evaluated and saved).",
        rich_help_panel=TRAINING,
    ),
]
Amp = Annotated[
    Optional[str],
    typer.Option(
        "--amp",
        help="Mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16.",
        rich_help_panel=HARDWARE,
    ),
]
ChannelsLast = Annotated[
    Optional[str],
    typer.Option("--channels-last", help="channels_last memory format: auto, on, off.", rich_help_panel=HARDWARE),
]
Compile = Annotated[
    Optional[bool],
    typer.Option("--compile/--no-compile", help="torch.compile the model.", rich_help_panel=HARDWARE),
]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed.", rich_help_panel=TRAINING)]
Workers = Annotated[
    Optional[int], typer.Option("--workers", help="Data loader worker processes.", rich_help_panel=HARDWARE)
]
TrainThreads = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        help="CPU: intra-op threads of the training process (0: torch's default, one per core).",
        rich_help_panel=HARDWARE,
    ),
]
SyncBn = Annotated[
    Optional[bool],
    typer.Option("--sync-bn/--no-sync-bn", help="SyncBatchNorm under torchrun.", rich_help_panel=HARDWARE),
]
ZeroInitResidual = Annotated[
    Optional[bool],
    typer.Option(
        "--zero-init-residual/--no-zero-init-residual",
        help="Start each residual block as the identity (its last BatchNorm scale 0); not with --init-from.",
        rich_help_panel=MODEL,
    ),
]
TrainOut = Annotated[
    Optional[str],
    typer.Option("--out", "-o", help="Run folder (default weights/<data>-<time>).", rich_help_panel=RUN),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.", rich_help_panel=RUN)
]
TrainOverwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace the run already in --out (without it, a folder holding files is refused).",
        rich_help_panel=RUN,
    ),
]
Plots = Annotated[
    Optional[bool],
    typer.Option("--plots/--no-plots", help="Write the training pictures at the end.", rich_help_panel=RUN),
]

# the pipeline's own options: where the run goes, and the steps after training
RunName = Annotated[
    Optional[str],
    typer.Option("--name", help="Run name: the run goes to runs/NAME (default <data>-<time>).", rich_help_panel=RUN),
]
PipelineOut = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Run folder, instead of runs/NAME.", rich_help_panel=RUN)
]
PipelineOverwrite = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace an earlier pipeline run in the same folder.", rich_help_panel=RUN),
]
CalibData = Annotated[
    Optional[str],
    typer.Option(
        "--calib-data", help="INT8 calibration images (default: the run's training data).", rich_help_panel=CHECKS
    ),
]
CalibSize = Annotated[int, typer.Option("--calib-size", help="Number of calibration images.", rich_help_panel=CHECKS)]
PipelineFormats = Annotated[
    str,
    typer.Option(
        "--format",
        help="What the export step writes: torchscript, onnx, pt2, executorch, comma-separated, or all (every "
        "format installed here; one that is not is skipped, and the report says why).",
        rich_help_panel=CHECKS,
    ),
]
CheckSamples = Annotated[
    Optional[int],
    typer.Option(
        "--samples", help="Real images for the parity check (default: the check's own).", rich_help_panel=CHECKS
    ),
]
CheckProviders = Annotated[
    Optional[str],
    typer.Option(
        "--provider",
        help="Check / bench providers, cpu,cuda (default: cpu, plus cuda when training runs there).",
        rich_help_panel=CHECKS,
    ),
]
BenchBatch = Annotated[
    str, typer.Option("--bench-batch", help="Benchmark batch sizes, comma-separated.", rich_help_panel=CHECKS)
]
BenchIters = Annotated[
    int, typer.Option("--bench-iters", help="Timed calls per benchmark row.", rich_help_panel=CHECKS)
]
BenchWarmup = Annotated[
    int, typer.Option("--bench-warmup", help="Warm-up calls per benchmark row.", rich_help_panel=CHECKS)
]
PipelineThreads = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        help="Intra-op threads for training (CPU), check and bench (default: every usable core but one).",
        rich_help_panel=HARDWARE,
    ),
]
JsonOut = Annotated[
    Optional[Path],
    typer.Option(
        "--json",
        metavar="PATH",
        help="Also write the result as JSON to PATH; '-' prints the JSON instead of the text.",
    ),
]
JSON_TO_SCREEN = Path("-")


def check_json_out(path: Path | None) -> Path | None:
    """``--json PATH`` checked before any work (a folder, an unwritable place: the error comes before minutes of
    work, not after); ``-`` (print it) needs no check."""
    from ..fileio import check_output_file

    if path is not None and path != JSON_TO_SCREEN:
        check_output_file(path, "--json")
    return path


def write_json_out(path: Path | None, data: dict) -> bool:
    """What ``--json PATH`` means in every command: write ``data`` to PATH, or print it for ``-`` (strict JSON: a NaN
    is null). True when it was printed: the command then prints no text of its own."""
    from ..fileio import json_text, write_text

    if path is None:
        return False
    if path == JSON_TO_SCREEN:
        typer.echo(json_text(data, default=str))
        return True
    write_text(path, json_text(data, default=str) + "\n")
    return False


def said_written(*paths: Path | None) -> None:
    """``-> PATH`` for each file a command wrote, after its text."""
    for path in paths:
        if path is not None and path != JSON_TO_SCREEN:
            typer.echo(f"-> {path}")


CheckpointArg = Annotated[
    Optional[Path],
    typer.Argument(
        metavar="CHECKPOINT",
        help="A checkpoint written by `mnv2 train` (best.pt / last.pt); default: the best.pt of the newest run under weights/.",
        show_default=False,
    ),
]


def took(command: str, what: str, path: Path | str, why: str) -> None:
    """Say, first, which target a command took by default (on stderr: stdout stays the command's result)."""
    typer.echo(f"mnv2 {command}: no {what} given, taking {path} ({why})", err=True)


def default_checkpoint(command: str) -> Path:
    """The newest run's best.pt under weights/, said; a one-line error when there is none (torch-free)."""
    from ..default_targets import WEIGHTS_DIR, require_newest_run

    found = require_newest_run(command)
    took(command, "checkpoint", found, f"the newest run under {WEIGHTS_DIR}/")
    return found


def default_export(command: str) -> Path:
    """The newest export folder under export/, said; a one-line error when there is none (torch-free)."""
    from ..default_targets import EXPORT_DIR, require_newest_export

    found = require_newest_export(command)
    took(command, "target", found, f"the newest export under {EXPORT_DIR}/")
    return found


def default_model_file(command: str) -> Path:
    """The model file of the newest export folder (FP32 ONNX first), said; a one-line error when there is none."""
    from ..default_targets import EXPORT_DIR, export_model_file, require_newest_export

    found = export_model_file(require_newest_export(command))
    took(command, "model", found, f"from the newest export under {EXPORT_DIR}/")
    return found


def floats(text: str | None, name: str) -> list[float] | None:
    """Parse ``R,G,B`` style lists; a malformed value is a usage error."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None


def csv_list(text: str, name: str) -> list[str]:
    """``"1, 8,32"`` -> ``["1", "8", "32"]``; an empty item (``1,,2``, a trailing comma) is a usage error, not dropped."""
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise typer.BadParameter(f"empty item in the comma-separated list {text!r}", param_hint=name)
    return items


LIST_FLAGS = ("mean", "std")  # R,G,B on the command line, a list of floats in the config


def config_flags(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A command's settings flags by config section, as :func:`~mnv2export.config.run_config` takes them: each
    parameter is named as its field of ModelConfig, DataConfig or TrainConfig (None: not given)."""
    from ..config import DataConfig, ModelConfig, TrainConfig

    sections = {c.section: {f.name for f in dataclasses.fields(c)} for c in (ModelConfig, DataConfig, TrainConfig)}
    flags: dict[str, dict[str, Any]] = {section: {} for section in sections}
    for name, value in params.items():
        section = next((s for s, names in sections.items() if name in names), None)
        if section is None:  # a programming error: a settings parameter must be named as its field
            raise TypeError(f"parameter {name!r} names no field of the config dataclasses")
        flags[section][name] = floats(value, f"--{name}") if name in LIST_FLAGS else value
    return flags
