"""``mnv2 pipeline``: data -> train -> export (all formats, INT8, FP16) -> check -> bench -> report, in runs/<name>/."""

from __future__ import annotations

import dataclasses

import typer

from .options import (
    BatchSize,
    BenchBatch,
    BenchIters,
    BenchWarmup,
    CalibData,
    CalibSize,
    CheckProviders,
    CheckSamples,
    ClassIndex,
    Data,
    DataDir,
    Device,
    Epochs,
    ExifOrientation,
    FreezeBlocks,
    ImgSize,
    InitFrom,
    PipelineFormats,
    PipelineOut,
    PipelineOverwrite,
    PipelineThreads,
    Progress,
    Recipe,
    RunName,
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
    *(
        "format",
        "calib_data",
        "calib_size",
        "samples",
        "provider",
        "bench_batch",
        "bench_iters",
        "bench_warmup",
        "threads",
    ),
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
    name: RunName = None,
    out: PipelineOut = None,
    overwrite: PipelineOverwrite = False,
    format: PipelineFormats = "all",
    calib_data: CalibData = None,
    calib_size: CalibSize = 128,
    samples: CheckSamples = None,
    provider: CheckProviders = None,
    bench_batch: BenchBatch = "1,32",
    bench_iters: BenchIters = 30,
    bench_warmup: BenchWarmup = 5,
    threads: PipelineThreads = None,
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
    options = dataclasses.replace(options, export_formats=format)
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
    _say_result(result)


def _say_result(result) -> None:
    """Each step's status and time, then the outcome: the validation accuracy and where the report is."""
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
