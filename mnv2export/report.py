"""``report.md`` of a pipeline run, for a person reading top to bottom.

Result first (passed, or the step that failed and why), then data, model, training (curves and pictures, linked with
paths relative to the run folder so the report renders wherever the folder is moved), export, parity, benchmark,
where each file is, and the commands to use the artifacts. Written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .fileio import write_text
from .layout import REPORT_FILE

log = logging.getLogger(__name__)

FILE_ROLES = [
    ("report.md", "this report"),
    ("pipeline.json", "settings, each step's status, time and outputs"),
    ("data_samples.png", "validation images as the model sees them"),
    ("weights/best.pt", "the checkpoint with the best validation accuracy (self-describing)"),
    ("weights/last.pt", "the last epoch, with optimizer state (for `mnv2 train --resume`)"),
    ("weights/metrics.csv", "one row per epoch"),
    ("weights/config.json", "the resolved training configuration"),
    ("weights/loss_curve.png", "training curves"),
    ("weights/confusion_matrix.png", "validation confusion matrix"),
    ("weights/kernels.png", "first-layer kernels"),
    ("weights/feature_maps_shallow.png", "feature maps of a shallow block"),
    ("weights/feature_maps_deep.png", "feature maps of a deep block"),
    ("export/model.torchscript.pt", "TorchScript, FP32, BatchNorm folded (metadata embedded)"),
    ("export/model.onnx", "ONNX FP32, BatchNorm folded, dynamic batch (metadata embedded)"),
    ("export/model.int8.onnx", "ONNX INT8 (static QDQ, calibrated)"),
    ("export/model.fp16.onnx", "ONNX FP16 (float32 input and output; for GPUs)"),
    ("export/manifest.json", "every artifact's format, precision, size, sha256 and export settings"),
    ("check.json", "parity of every artifact against the checkpoint"),
    ("bench.json", "benchmark rows and machine details"),
    ("bench.csv", "benchmark rows, one line each"),
    ("bench.png", "latency by format and provider"),
]


def write_report(result: Any) -> Path:
    """Write ``report.md`` for a :class:`~mnv2export.pipeline.PipelineResult` (complete or stopped by a failure)."""
    return write_text(Path(result.run_dir) / REPORT_FILE, render(result))


def render(result: Any) -> str:
    parts = [
        _header(result),
        _data(result),
        _model(result),
        _training(result),
        _export(result),
        _parity(result),
        _bench(result),
        _ship(result),
        _files(result),
        _usage(result),
    ]
    return "\n".join(p for p in parts if p).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------- sections
def _header(r: Any) -> str:
    name = Path(r.run_dir).name
    lines = [f"# Pipeline report: {name}", ""]
    failed = r.failed_step
    if failed:
        step = r.step(failed)
        lines += [
            f"**Result: FAILED at step '{failed}'** - {step.error}",
            "",
            "The steps before it finished and their outputs are listed below; the later steps did not run.",
            "",
        ]
    elif r.passed:
        lines += [
            f"**Result: passed.** Every step finished in {_duration(r.wall_seconds)}; every artifact passed the parity check.",
            "",
        ]
    else:
        lines += ["**Result: incomplete** (the pipeline is still running or was interrupted).", ""]
    lines += [
        f"Run folder `{r.run_dir}`, started {r.started}. Check and benchmark providers: {', '.join(r.providers)}.",
        "",
    ]
    lines += ["| step | status | time | outputs |", "|---|---|---|---|"]
    for s in r.steps:
        outputs = ", ".join(_link(o) for o in s.outputs[:8]) + (", ..." if len(s.outputs) > 8 else "")
        lines.append(f"| {s.name} | {s.status} | {_duration(s.seconds) if s.seconds is not None else ''} | {outputs} |")
    for note in r.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def _data(r: Any) -> str:
    d = r.data
    cfg = r.config.data
    lines = ["## Data", ""]
    if d is None:
        return "\n".join(lines + [f"Source `{cfg.source}`: not read (the data step did not finish).", ""])
    names = d.get("class_names", [])
    shown = ", ".join(f"`{n}`" for n in names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    source = {
        "synth": "the built-in synthetic set (shapes x textures x hues, rendered deterministically)",
        "fashion-mnist": "Fashion-MNIST (validation: the official test split)",
    }.get(cfg.source, f"the image folder `{cfg.source}`")
    lines += [
        f"- Source: {source}",
        f"- {d.get('num_classes')} classes, {d.get('train_images')} training and {d.get('val_images')} validation images: {shown}",
        f"- Preprocessing (validation, stored in every artifact): {'turn upright by the EXIF orientation tag, ' if cfg.exif_orientation else ''}"
        f"resize the shorter side to {d['resize']} px ({d['interpolation']}), "
        f"centre crop {d['img_size']} px, scale to [0, 1], normalise with mean {_nums(d['mean'])}, std {_nums(d['std'])}",
        f"- Training augmentation: `{d['train_aug']}`",
        "",
    ]
    if (Path(r.run_dir) / "data_samples.png").is_file():
        lines += ["![validation samples as the model sees them](data_samples.png)", ""]
    return "\n".join(lines)


def _model(r: Any) -> str:
    if r.train is None:
        return ""
    from .checkpoint import load_checkpoint
    from .info import human, summarize_model

    try:
        ckpt = load_checkpoint(r.train.best)
        m = ckpt.model_config
        size = [3, ckpt.data_config.img_size, ckpt.data_config.img_size]
        s = summarize_model(ckpt.build_model(), size)
    except Exception as exc:  # noqa: BLE001 - the report shows what it can
        log.warning("model summary unavailable: %s", exc)
        return "## Model\n\n(summary unavailable)\n"
    lines = [
        "## Model",
        "",
        f"torchvision MobileNetV2, width multiplier {m.width_mult}, {m.num_classes} classes, dropout {m.dropout}"
        + (f", small-input variant (stem stride {m.effective_stem_stride})" if m.small_input else "")
        + (f", output stride {m.output_stride}" if m.output_stride else "")
        + f", input {'x'.join(map(str, size))}.",
        "",
        f"- Parameters: {s.params:,} ({human(s.params)})",
        f"- Multiply-accumulates per image: {s.macs:,} ({human(s.macs)}); {s.macs_note}",
        f"- Per-layer details: `mnv2 info {Path(r.train.best)}`",
        "",
        "| block | what | output | params | MACs |",
        "|---|---|---|---:|---:|",
    ]
    for b in s.blocks:
        lines.append(
            f"| {b.name} | {b.description} | {'x'.join(map(str, b.output_shape[1:]))} | {b.params:,} | {b.macs:,} |"
        )
    return "\n".join(lines) + "\n"


def _training(r: Any) -> str:
    if r.train is None:
        return ""
    t, s = r.config.train, r.train.summary
    history = r.train.history
    lines = ["## Training", ""]
    best = s.get("best_val_acc", -1)
    lines += [
        f"{_plural(s.get('epoch', len(history)), 'epoch')} on {s.get('device', '?')} (mixed precision: {s.get('amp', 'off')}), batch size {t.batch_size}, "
        f"{t.optimizer} lr {t.lr:g}, warm-up {t.warmup_epochs:g} epoch(s) then {t.schedule}, label smoothing {t.label_smoothing:g}"
        + "".join(f", {item}" for item in r.config.training_extras())
        + (", EMA" if t.ema else "")
        + f", {_duration(s.get('wall_seconds'))}.",
        f"Best validation top-1: **{100 * best:.2f}%** (epoch {s.get('best_epoch')}); images skipped as unreadable: {s.get('images_skipped', 0)}.",
        "",
        "| epoch | train loss | val loss | val top-1 | lr | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        lines.append(
            f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {100 * h['val_acc']:.2f}% | {h['lr']:.2e} | {h['seconds']:.1f} |"
        )
    lines.append("")
    for rel, title in (
        ("weights/loss_curve.png", "training curves"),
        ("weights/confusion_matrix.png", "confusion matrix"),
        ("weights/kernels.png", "first-layer kernels"),
        ("weights/feature_maps_shallow.png", "feature maps, shallow block"),
        ("weights/feature_maps_deep.png", "feature maps, deep block"),
    ):
        if (Path(r.run_dir) / rel).is_file():
            lines += [f"![{title}]({rel})", ""]
    return "\n".join(lines)


def _export(r: Any) -> str:
    if r.manifest is None:
        return ""
    data = r.manifest.data
    lines = [
        "## Export",
        "",
        f"BatchNorm folded into the convolutions first (max abs logit difference {data['bn_fold']['max_abs_diff']:.2e} on "
        f"{data['bn_fold']['inputs']}); ONNX opset {data['settings'].get('opset')}, INT8 calibrated on {data['settings'].get('calib_data')}.",
        "",
        "| file | format | precision | size | export s | sha256 |",
        "|---|---|---|---:|---:|---|",
    ]
    for name, a in r.manifest.artifacts.items():
        lines.append(
            f"| [{name}](export/{name}) | {a['format']} | {a['precision']} | {a['size_bytes'] / 1e6:.2f} MB | {a['seconds']:.1f} | `{a['sha256'][:12]}` |"
        )
    skipped = data["settings"].get("skipped") or {}
    if skipped:
        lines.append("")
        lines += [f"Skipped: {group}, because {why}." for group, why in skipped.items()]
    return "\n".join(lines) + "\n"


def _parity(r: Any) -> str:
    if r.parity is None:
        return ""
    p = r.parity
    verdict = (
        "every artifact passed" if p.passed else "**some artifacts broke a tolerance** (see the rows marked as failed)"
    )
    lines = [
        "## Parity check",
        "",
        f"Each artifact against the checkpoint's PyTorch model (FP32, eval, on CPU): {verdict}. Full numbers: [check.json](check.json).",
        "",
        p.to_markdown().strip(),
        "",
    ]
    for note in getattr(p, "notes", None) or []:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def _bench(r: Any) -> str:
    if r.bench is None:
        return ""
    lines = [
        "## Benchmark",
        "",
        "Latency per call (one batch), after warm-up; speed-up against PyTorch eager on the same provider and batch. "
        "Full rows: [bench.json](bench.json), [bench.csv](bench.csv).",
        "",
        r.bench.to_markdown().strip(),
        "",
    ]
    if (Path(r.run_dir) / "bench.png").is_file():
        lines += ["![latency by format and provider](bench.png)", ""]
    return "\n".join(lines)


def _ship(r: Any) -> str:
    """What to ship: the benchmark's fastest file that passed the parity check, per provider and batch."""
    if r.bench is None or r.parity is None:
        return ""
    from .bench.ship import recommend, to_markdown

    choices = recommend(r.bench, r.parity.to_dict())
    lines = [
        "## What to ship",
        "",
        "For each provider and batch size, the fastest file that passed its parity check above, with its speed-up "
        "over PyTorch eager and its accuracy drop (or top-1 agreement where the data had no labels); the faster files "
        "passed over, and why.",
        "",
        to_markdown(choices).strip(),
        "",
    ]
    return "\n".join(lines)


def _files(r: Any) -> str:
    run_dir = Path(r.run_dir)
    rows = [(rel, what) for rel, what in FILE_ROLES if rel == "report.md" or (run_dir / rel).is_file()]
    lines = ["## Files", "", f"All paths are relative to `{run_dir}`.", "", "| file | what |", "|---|---|"]
    lines += [f"| {_link(rel)} | {what} |" for rel, what in rows]
    return "\n".join(lines) + "\n"


def _usage(r: Any) -> str:
    run_dir = Path(r.run_dir)
    if not (run_dir / "export" / "model.onnx").is_file():
        return ""
    best = run_dir / "weights" / "best.pt"
    return "\n".join(
        [
            "## Using the artifacts",
            "",
            "```bash",
            f"mnv2 predict IMAGE_OR_FOLDER --model {run_dir / 'export' / 'model.int8.onnx'}   # any artifact; needs nothing else",
            f"mnv2 info {run_dir / 'export' / 'model.int8.onnx'}",
            f"mnv2 check {best} --artifacts {run_dir / 'export'}",
            f"mnv2 bench {run_dir / 'export'} --batch 1,8,32",
            f"mnv2 visualize {best} --image IMAGE",
            "```",
            "",
        ]
    )


# --------------------------------------------------------------------------------------------------- helpers
def _link(rel: str) -> str:
    return f"[{rel}]({rel})"


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _nums(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)  # rounded once: never "1 min 60 s"
    return f"{minutes} min {rest} s"
