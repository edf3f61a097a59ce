"""``mnv2 predict IMAGE... --model ARTIFACT``: top-k classes with probabilities, from any artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import JsonOut, check_json_out, default_model_file, said_written, write_json_out


def predict(
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGES", help="Image files and/or folders (searched recursively).", show_default=False),
    ],
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            "-m",
            help="Checkpoint, TorchScript or ONNX file (FP32, INT8, FP16); default: model.onnx (else the first model file) of the newest folder under export/ with a manifest.json.",
            show_default=False,
        ),
    ] = None,
    provider: Annotated[
        str,
        typer.Option(
            "--provider",
            help="cpu, cuda or tensorrt (ONNX only). Asking for one that cannot run is an error, never a fallback.",
        ),
    ] = "cpu",
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", help="How many classes to show per image (at most the class count).")
    ] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per inference call.")] = 32,
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="Intra-op threads (default: torch's and ONNX Runtime's own).")
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Classify images with the artifact's own preprocessing and class names.

    Unreadable images are named on stderr and skipped; the exit code is 0 when at least one image was classified,
    1 when none could be.
    """
    from ..predict import MAX_TOP_K, percent
    from ..predict import predict as run_predict

    if model is None:
        model = default_model_file("predict")
    check_json_out(json_out)
    if 1 <= top_k <= MAX_TOP_K and batch_size >= 1:  # out of range: the library says so first, as before
        _require_an_image(images, model)
    result = run_predict(images, model, provider=provider.lower(), top_k=top_k, batch_size=batch_size, threads=threads)
    for s in result.skipped:
        typer.echo(f"skipped {s['path']}: {s['reason']}", err=True)
    if write_json_out(json_out, result.to_dict()):
        return
    typer.echo(f"# {result.model} ({result.format}, {result.precision}, {result.provider})")
    for p in result.predictions:
        typer.echo(p.path)
        for t in p.top:
            typer.echo(f"  {percent(t['probability'])}  {t['class']}")
    if result.skipped:
        typer.echo(f"{len(result.predictions)} classified, {len(result.skipped)} skipped", err=True)
    said_written(json_out)


def _require_an_image(images: list[Path], model: Path) -> None:
    """Images of which none is there, said before a checkpoint's torch or ONNX Runtime is imported, in the library's
    words; the model file's own checks first, as the library makes them."""
    from ..errors import DataError
    from ..fileio import require_artifact_file

    if images and not any(p.exists() for p in images):
        require_artifact_file(model)
        raise DataError(
            "not found",
            path=", ".join(map(str, images)),
            hint="pass image files (.jpg, .png, ...) or folders holding them",
        )
