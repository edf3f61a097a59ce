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
