"""``mnv2 visualize CHECKPOINT``: first-layer kernels and shallow / deep feature maps for an image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import CheckpointArg, default_checkpoint


def visualize(
    checkpoint: CheckpointArg = None,
    image: Annotated[
        Optional[Path],
        typer.Option(
            "--image",
            "-i",
            help="Image to show the feature maps of (default: the first validation image of the checkpoint's data, when at hand).",
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output folder (default <checkpoint folder>/visualize).")
    ] = None,
) -> None:
    """Draw the first convolution's kernels and the feature maps of a shallow and a deep block."""
    from ..fileio import require_checkpoint_file

    if checkpoint is None:
        checkpoint = default_checkpoint("visualize")
    require_checkpoint_file(checkpoint)  # before torch is imported (with ..plots): a wrong path is said at once
    from ..plots import visualize as draw

    result = draw(checkpoint, image=image, out_dir=out)
    if result.image:
        typer.echo(f"image: {result.image}")
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    for f in result.files:
        typer.echo(f"-> {f}")
