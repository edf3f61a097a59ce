"""``mnv2 export``: a checkpoint to TorchScript, ONNX (FP32, INT8, FP16), .pt2 and .pte files and a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..export.names import DEFAULT_GROUPS
from .options import CheckpointArg, default_checkpoint

# the options, declared once here so that the command reads as its parameters
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="torchscript, onnx, pt2 (AOTInductor), executorch (.pte, needs the mobile extra) or all (those "
        "installed here); comma-separated.",
    ),
]
QuantizeOpt = Annotated[
    bool,
    typer.Option(
        "--quantize",
        help="Also write model.int8.onnx (ONNX Runtime static INT8, QDQ, per-channel) and, with executorch, "
        "model.int8.pte (XNNPACKQuantizer, per-channel).",
    ),
]
Fp16Opt = Annotated[
    bool, typer.Option("--fp16", help="Also write model.fp16.onnx (for GPUs; float32 input and output).")
]
CalibDataOpt = Annotated[
    Optional[str],
    typer.Option(
        "--calib-data",
        help="Calibration images: synth, fashion-mnist, an ImageFolder root or a folder of images (default: the checkpoint's own training data).",
    ),
]
CalibSizeOpt = Annotated[int, typer.Option("--calib-size", help="Number of calibration images.")]
CalibMethodOpt = Annotated[
    str,
    typer.Option("--calib-method", help="minmax, entropy or percentile, for the ONNX INT8 (the .pte: a histogram)."),
]
OpsetOpt = Annotated[
    Optional[int],
    typer.Option(
        "--opset",
        help="ONNX opset, 18 to the newest the installed ONNX Runtime loads (26 with onnxruntime 1.31); default 18.",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="What the .pt2 is compiled for: cpu or cuda (on a GPU machine).")
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default export/<run>).")]


def export(
    checkpoint: CheckpointArg = None,
    format: FormatOpt = DEFAULT_GROUPS,
    quantize: QuantizeOpt = False,
    fp16: Fp16Opt = False,
    calib_data: CalibDataOpt = None,
    calib_size: CalibSizeOpt = 256,
    calib_method: CalibMethodOpt = "minmax",
    opset: OpsetOpt = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
) -> None:
    """Export a checkpoint, BatchNorm folded: TorchScript and ONNX (optionally INT8, FP16), .pt2 and .pte when named.

    Without CHECKPOINT: the best.pt of the newest run under weights/ (said on the first line).
    """
    from ..export import export_all

    if checkpoint is None:
        checkpoint = default_checkpoint("export")
    if quantize and calib_data is not None:
        _require_calib_data(checkpoint, calib_data)

    manifest = export_all(
        checkpoint,
        out_dir=out,
        formats=format,
        quantize=quantize,
        fp16=fp16,
        calib_data=calib_data,
        calib_size=calib_size,
        calib_method=calib_method.lower(),
        opset=opset,
        device=device,
    )
    _print(manifest)


def _print(manifest) -> None:
    """One row per file written, then the manifest's path."""
    rows = [("file", "format", "precision", "size", "sha256", "seconds")]
    for name, a in manifest.artifacts.items():
        size = f"{a['size_bytes'] / 1e6:.1f} MB"
        rows.append((name, a["format"], a["precision"], size, a["sha256"][:12], f"{a['seconds']:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    typer.echo(f"-> {manifest.path}")


def _require_calib_data(checkpoint: Path, calib_data: str) -> None:
    """A ``--calib-data`` folder that is not there, said before torch is imported (the export reads it only after
    loading the checkpoint): the checkpoint's own file checks first, as the export makes them."""
    from ..config import BUILTIN_SOURCES
    from ..errors import DataError
    from ..fileio import require_checkpoint_file

    if calib_data in BUILTIN_SOURCES:
        return
    require_checkpoint_file(checkpoint)
    root, hint = Path(calib_data), "pass --calib-data with a folder of images (or synth)"  # the export's own words
    if not root.exists():
        raise DataError("calibration data not found", path=root, hint=hint)
    if not root.is_dir():
        raise DataError("calibration data is a file, not a folder of images", path=root, hint=hint)
