"""``mnv2 pipeline``: data -> train -> export (all formats, INT8, FP16) -> check -> bench -> report, in runs/<name>/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    CHECKS,
    HARDWARE,
    RUN,
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
    csv_list,
)

# where the run goes and what the steps after training do: every other parameter is a config field
RUN_PARAMS = (
    *("config", "name", "out", "overwrite"),
    *("calib_data", "calib_size", "samples", "provider", "bench_batch", "bench_iters", "bench_warmup", "threads"),
)


def pipeline(
    source: Data = None,
    data_dir: DataDir = None,
    val_split: ValSplit = None,
    exif_orientation: ExifOrientation = None,
    config: Recipe = None,
    epochs: Epochs = None,
    width_mult: Width = None,
    img_size: ImgSize = None,
    small_input: SmallInput = None,
    device: Device = None,
    batch_size: BatchSize = None,
    class_index: ClassIndex = None,
    init_from: InitFrom = None,
    freeze_blocks: FreezeBlocks = None,
    synth_classes: SynthClasses = None,
    synth_train_per_class: SynthPerClass = None,
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
    progress: Progress = None,
) -> None:
    """The main job: train, export every format, check, benchmark, write runs/<name>/report.md.

    Data: --data (default: the built-in synth set, 10 classes of 150 training images). Without --config, the
    pipeline's defaults apply (width 0.5, 4 epochs). A failed step stops the run with the step named; the earlier
    steps' outputs stay.
    """
    # locals() before any other name is bound: the parameters alone
    flags = config_flags({name: value for name, value in locals().items() if name not in RUN_PARAMS})
    from ..config import load_recipe
    from ..pipeline import run_pipeline

    options = _step_options(calib_data, calib_size, samples, provider, bench_batch, bench_iters, bench_warmup, threads)
    source = flags["data"].pop("source")
    recipe = load_recipe(config) if config else None
    result = run_pipeline(
        source,
        name=name,
        out=out,
        overwrite=overwrite,
        recipe=recipe,
        model=flags["model"],
        data_settings=flags["data"],
        train=flags["train"],
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


def _step_options(calib_data, calib_size, samples, provider, bench_batch, bench_iters, bench_warmup, threads):
    """The options of the steps after training; a malformed list is a usage error (exit 2)."""
    from ..pipeline import PipelineOptions

    try:
        batches = tuple(int(b) for b in csv_list(bench_batch, "--bench-batch"))
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated whole numbers, got {bench_batch!r}", param_hint="--bench-batch"
        ) from None
    providers = None if provider is None else tuple(p.lower() for p in csv_list(provider, "--provider"))  # "": usage
    return PipelineOptions(
        calib_data=calib_data,
        calib_size=calib_size,
        check_samples=samples,
        providers=providers,
        bench_batches=batches,
        bench_iters=bench_iters,
        bench_warmup=bench_warmup,
        threads=threads,
    )
