"""``mnv2 data``: data set helpers (the built-in synthetic data written to disk as an ImageFolder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def data_synth(
    out: Annotated[
        Path, typer.Argument(metavar="OUT", help="Output folder (ImageFolder layout: train/<class>/, val/<class>/).")
    ],
    classes: Annotated[int, typer.Option("--classes", help="Number of classes.")] = 10,
    per_class: Annotated[int, typer.Option("--per-class", help="Training images per class.")] = 100,
    val_per_class: Annotated[
        Optional[int], typer.Option("--val-per-class", help="Validation images per class (default 30% of --per-class).")
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Image size in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed (the same seed gives the same images).")] = 0,
) -> None:
    """Write the built-in synthetic data set to disk as an ImageFolder."""
    from ..data.synth import write_synth

    counts = write_synth(out, classes, per_class, size, val_per_class=val_per_class, seed=seed)
    typer.echo(f"wrote {counts['train']} train and {counts['val']} val images of {classes} classes to {out}")
