"""``mnv2 pipeline``: data -> train -> export (all formats, INT8, FP16) -> check -> bench -> report, in runs/<name>/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    CHECKS,
    DATA,
    HARDWARE,
    MODEL,
    RUN,
    TRAINING,
    Data,
    DataDir,
    Device,
    Epochs,
    ExifOrientation,
    FreezeBlocks,
    ImgSize,
    SmallInput,
    ValSplit,
    Width,
    csv_list,
)


def pipeline(
    data: Data = None,
    data_dir: DataDir = None,
    val_split: ValSplit = None,
    exif_orientation: ExifOrientation = None,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            "-c",
            help="Training recipe (TOML); flags override it. Without one, the pipeline's defaults apply.",
            rich_help_panel=RUN,
        ),
    ] = None,
    epochs: Epochs = None,
    width: Width = None,
    img_size: ImgSize = None,
    small_input: SmallInput = None,
    device: Device = None,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", "-b", help="Training batch size.", rich_help_panel=TRAINING)
    ] = None,
    class_index: Annotated[
        Optional[str],
        typer.Option(
            help="JSON naming the classes (wnid -> name, as imagenet_class_index.json).", rich_help_panel=DATA
        ),
    ] = None,
    init_from: Annotated[
        Optional[str],
        typer.Option(
            help="Start from a torchvision MobileNetV2 state dict (fine-tuning; classifier replaced if the class count differs).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    freeze_blocks: FreezeBlocks = None,
    synth_classes: Annotated[
        Optional[int], typer.Option(help="synth: number of classes (default 10).", rich_help_panel=DATA)
    ] = None,
    synth_per_class: Annotated[
        Optional[int], typer.Option(help="synth: training images per class (default 150).", rich_help_panel=DATA)
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option(
            "--name", help="Run name: the run goes to runs/NAME (default <data>-<time>).", rich_help_panel=RUN
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Run folder, instead of runs/NAME.", rich_help_panel=RUN)
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an earlier pipeline run in the same folder.", rich_help_panel=RUN),
    ] = False,
    calib_data: Annotated[
        Optional[str],
        typer.Option(
            "--calib-data", help="INT8 calibration images (default: the run's training data).", rich_help_panel=CHECKS
        ),
    ] = None,
    calib_size: Annotated[
        int, typer.Option("--calib-size", help="Number of calibration images.", rich_help_panel=CHECKS)
    ] = 128,
    samples: Annotated[
        Optional[int],
        typer.Option(
            "--samples", help="Real images for the parity check (default: the check's own).", rich_help_panel=CHECKS
        ),
    ] = None,
    provider: Annotated[
        Optional[str],
        typer.Option(
            "--provider",
            help="Check / bench providers, cpu,cuda (default: cpu, plus cuda when training runs there).",
            rich_help_panel=CHECKS,
        ),
    ] = None,
    bench_batch: Annotated[
        str, typer.Option("--bench-batch", help="Benchmark batch sizes, comma-separated.", rich_help_panel=CHECKS)
    ] = "1,32",
    bench_iters: Annotated[
        int, typer.Option("--bench-iters", help="Timed calls per benchmark row.", rich_help_panel=CHECKS)
    ] = 30,
    bench_warmup: Annotated[
        int, typer.Option("--bench-warmup", help="Warm-up calls per benchmark row.", rich_help_panel=CHECKS)
    ] = 5,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            help="Intra-op threads for training (CPU), check and bench (default: every usable core but one).",
            rich_help_panel=HARDWARE,
        ),
    ] = None,
    progress: Annotated[
        Optional[bool],
        typer.Option("--progress/--no-progress", help="Progress bar per training epoch.", rich_help_panel=RUN),
    ] = None,
) -> None:
    """The main job: train, export every format, check, benchmark, write runs/<name>/report.md.

    Data: --data (default: the built-in synth set). A failed step stops the run with the step named; the earlier
    steps' outputs stay.
    """
    from ..config import load_recipe
    from ..pipeline import PipelineOptions, run_pipeline

    try:
        batches = tuple(int(b) for b in csv_list(bench_batch, "--bench-batch"))
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated whole numbers, got {bench_batch!r}", param_hint="--bench-batch"
        ) from None
    options = PipelineOptions(
        calib_data=calib_data,
        calib_size=calib_size,
        check_samples=samples,
        providers=tuple(p.lower() for p in csv_list(provider, "--provider"))
        if provider is not None
        else None,  # "" is a usage error
        bench_batches=batches,
        bench_iters=bench_iters,
        bench_warmup=bench_warmup,
        threads=threads,
    )
    result = run_pipeline(
        data,
        epochs=epochs,
        width=width,
        img_size=img_size,
        device=device,
        data_dir=data_dir,
        name=name,
        out=out,
        overwrite=overwrite,
        recipe=load_recipe(config) if config else None,
        model={"small_input": small_input},
        data_settings={
            "synth_classes": synth_classes,
            "synth_train_per_class": synth_per_class,
            "class_index": class_index,
            "val_split": val_split,
            "exif_orientation": exif_orientation,
        },
        train={"batch_size": batch_size, "progress": progress, "init_from": init_from, "freeze_blocks": freeze_blocks},
        options=options,
    )
    for s in result.steps:
        typer.echo(f"  {s.name:<7} {s.status:<4} {s.seconds:7.1f} s")
    acc = result.train.summary.get("best_val_acc") if result.train else None
    typer.echo(
        f"passed in {result.wall_seconds:.0f} s (val top-1 {100 * acc:.2f}%) -> {result.report}"
        if acc is not None
        else f"passed in {result.wall_seconds:.0f} s -> {result.report}"
    )
