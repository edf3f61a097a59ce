"""``run_pipeline``: data -> train -> export (TorchScript, ONNX FP32 / INT8 / FP16) -> check -> bench -> report.

Everything goes into one run folder (``runs/<name>/``)::

    pipeline.json        settings, each step's status, seconds and outputs (written after every step)
    data_samples.png     validation images as the model sees them
    weights/             the training run: best.pt, last.pt, metrics.csv, config.json, pictures
    export/              model.torchscript.pt, model.onnx, model.int8.onnx, model.fp16.onnx, manifest.json
    check.json           parity of every artifact against the checkpoint (mnv2export.check)
    bench.json/.csv/.png latency of every format (mnv2export.bench)
    report.md            what a person reads, top to bottom

Settings are all checked before the first step (a bad flag is a plain :class:`ConfigError`). Then a step that fails
stops the pipeline: :class:`PipelineError` names it, the earlier steps' outputs stay, ``pipeline.json`` records the
failure and a ``report.md`` shows what was done. A check that runs but finds an artifact out of tolerance is a
failed ``check`` step (the check is a gate: nothing is benchmarked that does not answer like the model).

The defaults (:data:`PIPELINE_DEFAULTS`) are sized so that the whole pipeline on the built-in ``synth`` data takes a
few minutes on a 2-core CPU and its check passes: width 0.5, 64 px, 10 classes x 150 training images, 4 epochs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import BUILTIN_SOURCES, RunConfig, run_config
from .errors import ConfigError, Mnv2Error, ParityError, Terminated
from .layout import (
    BENCH_CSV_FILE,
    BENCH_JSON_FILE,
    BENCH_PLOT_FILE,
    CHECK_FILE,
    DATA_SAMPLES_FILE,
    PIPELINE_FILE,
    PIPELINE_FOLDERS,
    PIPELINE_OUTPUTS,
    REPORT_FILE,
    RUNS_DIR,
)
from .params import check_int

log = logging.getLogger(__name__)

STEPS = ("data", "train", "export", "check", "bench", "report")

# under explicit flags (and a recipe, when one is given none of these apply), over the data source's defaults
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"width_mult": 0.5},
    "data": {},
    "train": {"epochs": 4},
}
SYNTH_DEFAULTS = {"synth_classes": 10, "synth_train_per_class": 150, "synth_val_per_class": 50}


@dataclass(frozen=True)
class PipelineOptions:
    """Settings of the steps after training."""

    export_formats: str = "all"  # what the export step writes: every format installed here
    calib_data: str | None = None  # INT8 calibration images (default: the run's own training data)
    calib_size: int = 128
    check_samples: int | None = None  # real images for the parity check (None: the check's own default)
    providers: tuple[str, ...] | None = None  # check / bench providers; None: cpu, plus cuda when training runs there
    bench_formats: tuple[str, ...] = ("all",)
    bench_batches: tuple[int, ...] = (1, 32)
    bench_warmup: int = 5
    bench_iters: int | None = 30
    bench_duration: float | None = None
    threads: int | None = None  # intra-op threads for training, check and bench; None: default_threads()


@dataclass
class StepRecord:
    name: str
    status: str = "not run"  # ok | failed | interrupted | not run
    seconds: float | None = None
    outputs: list[str] = field(default_factory=list)  # relative to the run folder
    error: str | None = None


@dataclass
class PipelineResult:
    run_dir: Path
    config: RunConfig
    options: PipelineOptions
    providers: tuple[str, ...]
    steps: list[StepRecord]
    started: str
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] | None = None  # data summary
    train: Any = None  # train.TrainResult
    manifest: Any = None  # export.Manifest
    parity: Any = None  # parity.ParityReport
    bench: Any = None  # bench.BenchResult
    report: Path | None = None
    wall_seconds: float = 0.0

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    @property
    def failed_step(self) -> str | None:
        return next((s.name for s in self.steps if s.status in ("failed", "interrupted")), None)

    @property
    def passed(self) -> bool:
        return all(s.status == "ok" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "started": self.started,
            "wall_seconds": round(self.wall_seconds, 2),
            "passed": self.passed,
            "failed_step": self.failed_step,
            "providers": list(self.providers),
            "notes": self.notes,
            "steps": [asdict(s) for s in self.steps],
            "config": self.config.to_dict(),
            "options": asdict(self.options),
            "data": self.data,
        }


class PipelineError(Mnv2Error):
    """A step of the pipeline failed; ``step`` names it, ``result`` holds what the earlier steps made."""

    def __init__(self, step: str, cause: BaseException, result: PipelineResult):
        self.step, self.result = step, result
        if isinstance(cause, Mnv2Error):
            what, path, hint = cause.what, cause.path, cause.hint
        else:
            text = str(cause).strip().splitlines()
            what, path, hint = (
                f"unexpected {type(cause).__name__}: {text[0] if text else ''}".rstrip(": "),
                None,
                "MNV2_DEBUG=1 shows the traceback",
            )
        self.cause = what if path is None else f"{what} ({path})"  # the step's own error, in words
        where = f"earlier steps' outputs are in {result.run_dir}"
        super().__init__(
            f"pipeline step '{step}' failed: {what}", path=path, hint=f"{hint}; {where}" if hint else where
        )


# --------------------------------------------------------------------------------------------------- settings
def pipeline_config(
    data: str | None = None,
    *,
    epochs: int | None = None,
    width: float | None = None,
    img_size: int | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    recipe: RunConfig | None = None,
    model: dict[str, Any] | None = None,
    data_settings: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
) -> RunConfig:
    """The run's settings: explicit values over the recipe (if any), else over the pipeline's defaults, over the
    data source's defaults. ``model`` / ``data_settings`` / ``train`` take any other setting of those sections."""
    model_flags = {"width_mult": width, **(model or {})}
    data_flags = {"source": data, "img_size": img_size, "data_dir": data_dir, **(data_settings or {})}
    train_flags = {"epochs": epochs, "device": device, **(train or {})}
    if recipe is None:
        source = data_flags["source"] or "synth"
        data_defaults = {**PIPELINE_DEFAULTS["data"], **(SYNTH_DEFAULTS if source == "synth" else {})}
        model_flags = _under(PIPELINE_DEFAULTS["model"], model_flags)
        data_flags = _under(data_defaults, {**data_flags, "source": source})
        train_flags = _under(PIPELINE_DEFAULTS["train"], train_flags)
    cfg = run_config(recipe, model_flags, data_flags, train_flags)  # every setting checked before torch is imported
    if recipe is None and train_flags.get("workers") is None:
        cfg = RunConfig(model=cfg.model, data=cfg.data, train=cfg.train.replace(**_cpu_defaults(cfg.train.device)))
    return cfg


def _under(defaults: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **{k: v for k, v in flags.items() if v is not None}}


def _on_cuda(device: str | None) -> bool:
    import torch

    return device == "cuda" or (device in ("auto", None) and torch.cuda.is_available())


def _cpu_defaults(device: str | None) -> dict[str, Any]:
    """Training on a CPU: one data-loader worker (the model's threads: :func:`default_threads`)."""
    return {} if _on_cuda(device) else {"workers": 1}


def default_threads() -> int:
    """Intra-op threads for the pipeline's torch and ONNX Runtime work: every usable core but one (at least one).

    The core left over runs the data loader, and keeps a busy machine usable: with two OpenMP threads on a 2-core
    machine that other processes also use, each parallel region waits for the descheduled thread; MobileNetV2 at
    64 px was measured 300x slower in eager mode there (1.5 s per image against 5 ms on one thread).
    """
    from .device import usable_cpu_count

    return max(1, usable_cpu_count() - 1)


def resolve_providers(device: str, providers: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[str]]:
    """Check / bench providers: as given, else cpu, plus cuda when training runs on CUDA and ONNX Runtime can use it.

    A provider named (``cuda``, ``cpu,cuda``; ``all`` names only cpu) must run here: checked now, as ``mnv2 bench``
    checks it before measuring, so a missing CUDA is a :class:`ProviderUnavailable` before training, never a failed
    ``check`` step hours later nor a CPU fallback. ``all`` takes CUDA only where it can run, and says so."""
    from .device import resolve_device

    if providers is not None:
        from .check import parse_providers

        wanted = parse_providers(
            providers
        )  # the check step's own parsing: an unknown provider, or none, is a ConfigError
        _require_providers([p for p, explicit in wanted if explicit])
        if all(explicit for _, explicit in wanted):
            return tuple(p for p, _ in wanted), []
        # all (without cuda named beside it): cpu, and cuda where it can run (as bench and check take it)
        from .device import cuda_unavailable_reason
        from .runtime import onnx_provider_problem

        problem = cuda_unavailable_reason() or onnx_provider_problem("cuda")
        if problem:
            return ("cpu",), [f"--provider all: check and bench on CPU only ({problem})"]
        return ("cpu", "cuda"), []
    if resolve_device(device).type != "cuda":  # ProviderUnavailable for an explicit cuda where there is none
        return ("cpu",), []
    from .runtime import onnx_provider_problem

    problem = onnx_provider_problem("cuda")
    if problem:
        return ("cpu",), [f"check and bench on CPU only: {problem}"]
    return ("cpu", "cuda"), []


def _require_providers(providers: list[str]) -> None:
    """Every provider in ``providers`` can run both the PyTorch and the ONNX artifacts here, else the
    :class:`ProviderUnavailable` (same line) that ``mnv2 bench --provider cuda`` raises before measuring."""
    from .bench.sweep import provider_problems, require_providers

    require_providers(provider_problems(providers, ("torch", "onnx")))


def run_folder(name: str | None, out: str | Path | None, source: str, overwrite: bool) -> Path:
    """``out``, else ``runs/<name>``, else ``runs/<data>-<time>``; an existing non-empty folder needs ``overwrite``
    and must be a pipeline run folder (holding pipeline.json). Checks only: :func:`clear_run_folder` removes an
    earlier run's outputs once every other setting has been checked."""
    if name is not None and out is not None:
        raise ConfigError(
            "{name} and {out} both given", hint="pass {name} (for runs/NAME) or {out} (a folder), not both"
        )
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise ConfigError(
            f"run name {name!r} is not a plain folder name", hint="pass {name} without slashes, or use {out}"
        )
    if out is not None:
        run_dir = Path(out)
    else:
        base = Path(source).name if source not in ("synth", "fashion-mnist") else source
        run_dir = RUNS_DIR / (name or f"{base}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("run folder path is a file", path=run_dir, hint="choose another {name} or {out}")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(
                "run folder exists and is not empty",
                path=run_dir,
                hint="choose another {name}, or pass {overwrite} to replace that run",
            )
        if not (run_dir / PIPELINE_FILE).is_file():
            raise ConfigError(
                "folder is not a pipeline run (no pipeline.json): refusing to overwrite it",
                path=run_dir,
                hint="choose another {name} or {out}",
            )
    return run_dir


def clear_run_folder(run_dir: Path) -> Path:
    """Remove an earlier pipeline run's own outputs from ``run_dir`` (other files stay); create it if missing."""
    from .fileio import ensure_dir, remove_outputs

    remove_outputs(run_dir, PIPELINE_OUTPUTS, PIPELINE_FOLDERS)
    return ensure_dir(run_dir)


# --------------------------------------------------------------------------------------------------- the pipeline
def run_pipeline(
    data: str | None = None,
    *,
    epochs: int | None = None,
    width: float | None = None,
    img_size: int | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    recipe: RunConfig | None = None,
    model: dict[str, Any] | None = None,
    data_settings: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    options: PipelineOptions | None = None,
) -> PipelineResult:
    """Run every step into the run folder; returns the result, or raises :class:`PipelineError` naming the step."""
    t0 = time.perf_counter()
    options = options or PipelineOptions()
    check_options(options)
    # The run folder is checked first, before anything imports torch: a name already taken answers at once.
    run_dir = run_folder(name, out, data or (recipe.data.source if recipe else "synth"), overwrite)
    if options.threads is not None:
        train = {**(train or {}), "threads": options.threads}
    cfg = pipeline_config(
        data,
        epochs=epochs,
        width=width,
        img_size=img_size,
        device=device,
        data_dir=data_dir,
        recipe=recipe,
        model=model,
        data_settings=data_settings,
        train=train,
    )
    result = _start(run_dir, cfg, options, t0)
    from .device import warn_oversubscription_once

    with warn_oversubscription_once():  # training and the benchmark both use --threads: one warning
        for step in STEPS:
            _run_step(result, step, t0)
    _save_record(result, t0)
    return result


def _start(run_dir: Path, cfg: RunConfig, options: PipelineOptions, t0: float) -> PipelineResult:
    """The checks that need the settings (calibration data, providers), then the run folder cleared and its first
    pipeline.json written."""
    if not cfg.train.threads:  # neither --threads nor the recipe set it: the pipeline's default
        cfg = RunConfig(model=cfg.model, data=cfg.data, train=cfg.train.replace(threads=default_threads()))
    _check_calib_data(options.calib_data)
    providers, notes = resolve_providers(cfg.train.device, options.providers)
    notes.append(
        f"{cfg.train.threads} intra-op thread(s) for training on a CPU, the check's PyTorch models and the benchmark "
        f"(--threads; default: every usable core but one), {cfg.train.workers} data-loader worker(s)"
    )
    result = PipelineResult(
        run_dir=clear_run_folder(run_dir),
        config=cfg,
        options=options,
        providers=providers,
        steps=[StepRecord(s) for s in STEPS],
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        notes=notes,
    )
    _save_record(result, t0)
    log.info("pipeline -> %s", run_dir)
    return result


def export_settings(o: PipelineOptions) -> dict[str, Any]:
    """The export step's formats, with INT8 wherever a chosen format has it (ONNX, ExecuTorch) and FP16 with ONNX."""
    from .formats import parse_groups

    groups = parse_groups(o.export_formats)[0]
    return {
        "formats": o.export_formats,
        "quantize": bool({"onnx", "executorch"} & set(groups)),
        "fp16": "onnx" in groups,
    }


def check_options(o: PipelineOptions) -> None:
    """The options of the steps after training, each checked by its step's own check, before any work."""
    if o.threads is not None:
        check_int("threads", o.threads, 1)
    from .bench.sweep import check_settings
    from .check import check_options as check_check_options
    from .export import check_export_options

    check_export_options(
        **export_settings(o), calib_data=o.calib_data, calib_size=o.calib_size, calib_method="minmax", opset=None
    )
    check_check_options(samples=o.check_samples)
    check_settings(o.bench_formats, o.bench_batches, o.bench_warmup, None, o.bench_iters, o.bench_duration)


def _check_calib_data(calib_data: str | None) -> None:
    """A ``--calib-data`` folder must exist before training, not only when the export step loads it (the export's own
    check; the images in it are read by the export)."""
    if calib_data is None or calib_data in BUILTIN_SOURCES:
        return
    from .data.folder import require_image_folder

    require_image_folder(Path(calib_data), "calibration data", "pass {calib_data} with a folder of images (or synth)")


def _run_step(result: PipelineResult, step: str, t0: float) -> None:
    record = result.step(step)
    log.info("[%d/%d] %s", STEPS.index(step) + 1, len(STEPS), step)
    start = time.perf_counter()
    try:
        record.outputs = STEP_FUNCTIONS[step](result)
        record.status = "ok"
    except (KeyboardInterrupt, Terminated) as exc:
        record.status, record.error = (
            "interrupted",
            Terminated.what if isinstance(exc, Terminated) else "interrupted (Ctrl-C)",
        )
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of a step is reported as that step's failure
        error = PipelineError(step, exc, result)
        record.status, record.error = "failed", error.cause
        raise error from exc
    finally:
        record.seconds = time.perf_counter() - start
        _save_record(result, t0)
        if record.status != "ok" and step != "report":
            _partial_report(result)
    log.info("%s: done in %.1f s", step, record.seconds)


def _save_record(result: PipelineResult, t0: float) -> None:
    from .fileio import json_text, write_text

    result.wall_seconds = time.perf_counter() - t0
    write_text(result.run_dir / PIPELINE_FILE, json_text(result.to_dict(), default=str) + "\n")


def _partial_report(result: PipelineResult) -> None:
    """A report of what was done before the failure (best effort: never hides the step's own error)."""
    from .report import write_report

    try:
        result.report = write_report(result)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not write the partial report: %s", exc)


# --------------------------------------------------------------------------------------------------- the steps
def _step_data(result: PipelineResult) -> list[str]:
    import torch

    from .data import build_datasets
    from .data.folder import SkippedImage
    from .plots import sample_grid

    d = result.config.data
    bundle = build_datasets(d, augment=False)
    result.config = result.config.with_classes(len(bundle.class_names))  # as fit() does: recorded in pipeline.json
    result.data = {
        **bundle.summary,
        "class_names": bundle.class_names,
        "img_size": d.img_size,
        "resize": d.resize,
        "interpolation": d.interpolation,
        "mean": d.mean,
        "std": d.std,
        "train_aug": d.train_aug,
        "fingerprint": bundle.fingerprint,
    }
    n = len(bundle.val)
    picked = sorted({round(i * (n - 1) / 15) for i in range(16)}) if n > 1 else list(range(n))
    images, labels = [], []
    for i in picked:
        img, label = bundle.val[i]
        if not isinstance(img, SkippedImage):
            images.append(img)
            labels.append(bundle.class_names[label])
    if images:
        sample_grid(torch.stack(images), labels, d.mean, d.std, result.run_dir / DATA_SAMPLES_FILE)
        return [DATA_SAMPLES_FILE]
    return []


def _step_train(result: PipelineResult) -> list[str]:
    from .train import fit

    result.train = fit(result.config, run_dir=result.run_dir / "weights")
    return sorted(
        str(p.relative_to(result.run_dir)) for p in (result.run_dir / "weights").iterdir() if not p.name.startswith(".")
    )


def _step_export(result: PipelineResult) -> list[str]:
    from .export import export_all

    o = result.options
    result.manifest = export_all(
        result.train.best,
        result.run_dir / "export",
        **export_settings(o),
        calib_data=o.calib_data,
        calib_size=o.calib_size,
    )
    return [f"export/{name}" for name in (*result.manifest.artifacts, "manifest.json")]


def _step_check(result: PipelineResult) -> list[str]:
    from . import check
    from .device import cpu_threads

    with cpu_threads(result.config.train.threads):  # the reference and TorchScript models
        report = check.check(
            result.train.best,
            result.run_dir / "export",
            providers=result.providers,
            samples=result.options.check_samples,
        )
    result.parity = report
    report.to_json(result.run_dir / CHECK_FILE)
    result.step("check").outputs = [CHECK_FILE]
    if not report.passed:
        raise ParityError(
            f"{_failed_rows(report)} broke a tolerance",
            path=result.run_dir / CHECK_FILE,
            hint="see the parity table in report.md (or `mnv2 check` with --debug-int8 for INT8)",
        )
    return [CHECK_FILE]


def _failed_rows(report: Any) -> str:
    bad = [r for r in report.rows if not r.passed]
    names = ", ".join(f"{r.artifact}/{r.provider}" for r in bad[:4]) + (", ..." if len(bad) > 4 else "")
    return f"{len(bad)} of {len(report.rows)} artifact checks ({names})"


def _step_bench(result: PipelineResult) -> list[str]:
    from . import bench

    o = result.options
    res = bench.run(
        result.run_dir / "export",
        formats=o.bench_formats,
        providers=result.providers,
        batches=o.bench_batches,
        warmup=o.bench_warmup,
        iters=o.bench_iters,
        duration=o.bench_duration,
        threads=result.config.train.threads,
    )
    result.bench = res
    res.to_json(result.run_dir / BENCH_JSON_FILE)
    res.to_csv(result.run_dir / BENCH_CSV_FILE)
    outputs = [BENCH_JSON_FILE, BENCH_CSV_FILE]
    if any(r.ok for r in res.rows):
        res.plot(result.run_dir / BENCH_PLOT_FILE)
        outputs.append(BENCH_PLOT_FILE)
    else:
        result.step("bench").outputs = outputs
        first = res.rows[0] if res.rows else None
        raise Mnv2Error(
            f"no benchmark row could be measured ({first.label}: {first.reason})"
            if first
            else "no benchmark row to measure",
            path=result.run_dir / BENCH_JSON_FILE,
            hint="see bench.json for every row's reason",
        )
    return outputs


def _step_report(result: PipelineResult) -> list[str]:
    from .report import write_report

    record = result.step("report")
    record.status, record.outputs = "ok", [REPORT_FILE]  # as the report itself will show it (reset if writing fails)
    result.report = write_report(result)
    return [result.report.name]


STEP_FUNCTIONS = {
    "data": _step_data,
    "train": _step_train,
    "export": _step_export,
    "check": _step_check,
    "bench": _step_bench,
    "report": _step_report,
}
