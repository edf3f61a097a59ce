"""``export_all``: a checkpoint to TorchScript, ONNX FP32, INT8 and FP16 files plus ``manifest.json``.

Order of work: every option and input is checked first (formats, opset, calibration size and method, the
checkpoint, the output folder, the calibration images), then the model is built, its BatchNorms folded and the
folded model checked against the original on real images, then each artifact is written and verified. Every file is
written under a temporary name and all of them are renamed together at the very end, ``manifest.json`` last, and any
artifact name this export did not write is removed then: an export that fails or is interrupted leaves no new file
with a final name, and the previous export intact; one that succeeds leaves no earlier export's artifact behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..layout import ARTIFACT_FILES, EXPORT_DIR, MANIFEST_FILE, PIPELINE_FILE
from .names import (
    CALIB_METHODS,
    DEFAULT_GROUPS,
    INPUT_NAME,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    ONNX_EXPORTER,
    OUTPUT_NAME,
)

if TYPE_CHECKING:  # the registry imports this package's exporters: read at run time, inside the functions
    from ..formats import ExportJob, ExportOptions

log = logging.getLogger(__name__)


@dataclass
class Manifest:
    path: Path  # .../manifest.json
    data: dict[str, Any]  # what the file holds

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.data["artifacts"]


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """``"all"``, ``"onnx"``, ``"torchscript,onnx"`` or a list of those -> a list in canonical order."""
    from ..formats import parse_groups

    return list(parse_groups(formats)[0])


def previous_artifacts(out: Path) -> list[str]:
    """The artifact files an earlier export into ``out`` wrote (those its manifest.json lists, of this tool's names):
    the ones this export may replace or remove. A file that no manifest lists is someone else's and stays."""
    try:
        listed = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))["artifacts"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in ARTIFACT_FILES if isinstance(listed, dict) and name in listed]


def toolchain_versions(modules: Iterable[str] = ("onnx", "onnxruntime")) -> dict[str, str]:
    """What the manifest and the check record: the checkpoint's versions (mnv2export, torch, torchvision, python) plus
    those of ``modules``, the exporters' and runtimes' (each format's ``toolchain``: onnx and onnxruntime for ONNX)."""
    import importlib

    from ..checkpoint import versions

    return {**versions(), **{m: importlib.import_module(m).__version__ for m in modules}}


def default_out_dir(checkpoint: str | Path) -> Path:
    """``export/<run>``, ``<run>`` being the name of the folder the checkpoint sits in; for a checkpoint of a ``mnv2
    pipeline`` run (``runs/<name>/weights/``), that run's own ``export/``, where the pipeline exported it (not an
    ``export/weights`` shared by every pipeline run)."""
    folder = Path(checkpoint).parent
    name = folder.resolve().name
    if name == "weights" and (folder / ".." / PIPELINE_FILE).is_file():
        return Path(os.path.normpath(folder / ".." / "export"))
    return EXPORT_DIR / (name or "model")


def export_all(
    checkpoint_path: str | Path,
    out_dir: str | Path | None = None,
    formats: str | Iterable[str] = DEFAULT_GROUPS,
    quantize: bool = False,
    fp16: bool = False,
    calib_data: str | None = None,
    calib_size: int = 256,
    calib_method: str = "minmax",
    opset: int | None = None,
    device: str = "cpu",
) -> Manifest:
    from ..fileio import require_checkpoint_file

    # the options and the checkpoint's file checks first, before torch is imported: their errors come at once
    options = check_export_options(formats, quantize, fp16, calib_data, calib_size, calib_method, opset, device)
    require_checkpoint_file(checkpoint_path)

    from ..device import cpu_threads

    with cpu_threads(EXPORT_TORCH_THREADS):
        return _export_all(checkpoint_path, out_dir, options)


# The export's PyTorch work is a few eager passes and Python-bound tracing: one intra-op thread costs well under a
# second on an idle machine and avoids 10x stalls when the CPU is shared (spin-waiting threads; RESULTS.md).
EXPORT_TORCH_THREADS = 1


def check_export_options(
    formats,
    quantize: bool,
    fp16: bool,
    calib_data: str | None,
    calib_size: int,
    calib_method: str,
    opset: int | None,
    device: str = "cpu",
) -> ExportOptions:
    """``export_all``'s options checked, each error naming its parameter; no file is read."""
    from ..formats import ExportOptions, parse_groups, to_export
    from ..params import check_choice
    from .names import check_calib_size
    from .opsets import DEFAULT_OPSET, check_opset

    groups, skipped = _installed(*parse_groups(formats))
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    options = ExportOptions(groups, quantize, fp16, calib_data, calib_size, calib_method, opset, device, skipped)
    asked = {option for option in ("quantize", "fp16") if getattr(options, option)}
    if asked - {fmt.option for fmt in to_export(options)}:  # no format chosen is made with it
        raise ConfigError(
            "{quantize} makes ONNX and ExecuTorch INT8 models, {fp16} an ONNX one",
            hint="use {formats} onnx (or all, or executorch for {quantize}) with them",
        )
    check_choice("device", device, ("cpu", "cuda"))
    if device != "cpu" and "pt2" not in groups:
        raise ConfigError("{device} says what the .pt2 is compiled for", hint="add {formats} pt2, or leave it out")
    if calib_data is not None and not quantize:
        raise ConfigError("{calib_data} is only used for INT8", hint="add {quantize}, or leave {calib_data} out")
    if calib_method not in CALIB_METHODS:  # in words: "calibration method" is what users and scripts match
        raise ConfigError(
            f"unknown calibration method {calib_method!r}", hint=f"choose one of {', '.join(CALIB_METHODS)}"
        )
    check_calib_size(calib_size)
    return options


def _installed(groups: tuple[str, ...], named: bool) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The groups whose formats can be written here, and (group, why) for those that cannot: skipped under ``all``
    (the manifest and the pipeline's report say why), a one-line error when named."""
    from ..formats import REGISTRY

    kept, skipped = [], []
    for group in groups:
        why = next((w for f in REGISTRY if f.group == group and (w := f.unavailable())), None)
        if why and named:
            raise ConfigError(why)
        if why:
            skipped.append((group, why))
        else:
            kept.append(group)
    return tuple(kept), tuple(skipped)


def _export_all(checkpoint_path, out_dir, options: ExportOptions) -> Manifest:
    from ..checkpoint import load_checkpoint
    from ..fileio import atomic_files, ensure_dir, temp_files_in, work_folder

    ckpt = load_checkpoint(checkpoint_path)
    calib = _calibration(ckpt, options)  # before anything is created: missing or empty data is an error up front
    out = ensure_dir(out_dir if out_dir is not None else default_out_dir(checkpoint_path))
    # every temporary file (ours and onnxruntime.quantization's) in one locked work folder inside `out`, so that a
    # killed export leaves them there, and the next export into `out` removes them (TEMP_LEFTOVERS: older versions').
    # Every file renamed together at the end, in order, manifest last; an artifact name not written this time (an
    # earlier export's model.int8.onnx...) is removed in the same commit, so the folder holds one export only
    with (
        work_folder(out, legacy=TEMP_LEFTOVERS) as work,
        temp_files_in(work),
        atomic_files(out, owned=previous_artifacts(out), temp_dir=work) as staged,
    ):
        return _export(ckpt, out, options, calib, staged)


# what earlier versions of the export left in its folder when killed (temporary files beside the final names, the
# INT8 step's folder): no export of this version writes these names, so any found is stale
TEMP_LEFTOVERS = (*(f".{name}.*.tmp" for name in (*ARTIFACT_FILES, MANIFEST_FILE)), "mnv2-int8-*")


def _calibration(ckpt, options: ExportOptions):
    if not options.quantize:
        return None
    from .calib import load_calibration

    t0 = time.perf_counter()
    calib = load_calibration(ckpt, options.calib_data, options.calib_size)
    log.info("calibration: %s (%.1f s)", calib.source, time.perf_counter() - t0)
    return calib


def _export(ckpt, out: Path, options: ExportOptions, calib, staged) -> Manifest:
    """Each format's file written and verified by its own module, then the manifest."""
    from ..fileio import json_text, write_bytes
    from ..formats import to_export

    chosen = to_export(options)
    job, bn_fold = _prepare(ckpt, chosen, options, calib)
    artifacts = {fmt.file: _write_artifact(fmt, job, staged(fmt.file), ckpt.sha256) for fmt in chosen}
    data = {
        "format": MANIFEST_FORMAT,
        "schema_version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_checkpoint": {"path": str(ckpt.path.resolve()) if ckpt.path else None, "sha256": ckpt.sha256},
        "settings": _settings(options, chosen, calib),
        "bn_fold": bn_fold,
        "versions": job.base_metadata["versions"],
        "artifacts": artifacts,
    }
    write_bytes(staged(MANIFEST_FILE), (json_text(data) + "\n").encode("utf-8"))
    return Manifest(path=out / MANIFEST_FILE, data=data)


def _prepare(ckpt, chosen, options: ExportOptions, calib) -> tuple[ExportJob, dict[str, Any]]:
    """The model built, its BatchNorms folded and the folded model checked against it on real images: what every
    format is exported from, and the fold's record for the manifest."""
    import torch

    from ..fold import check_fold_logits, fold_bn
    from ..formats import ExportJob
    from .calib import verification_inputs

    model = ckpt.build_model()
    folded = fold_bn(model)
    inputs, inputs_source = verification_inputs(ckpt, calib)
    with torch.inference_mode():
        reference = folded(inputs)
        fold_diff = check_fold_logits(model(inputs), reference)
    log.info("folded BatchNorm: max abs logit diff %.2e on %s", fold_diff, inputs_source)
    size = ckpt.data_config.img_size
    base = {
        **ckpt.metadata(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch", 3, size, size],
        "bn_folded": True,
    }
    toolchain = list(dict.fromkeys(m for fmt in chosen for m in fmt.toolchain))
    if toolchain:
        base["versions"] = toolchain_versions(toolchain)
    job = ExportJob(folded, inputs, reference, base, options, calib)
    return job, {"max_abs_diff": fold_diff, "inputs": inputs_source}


def _write_artifact(fmt, job: ExportJob, tmp: Path, checkpoint_sha256: str | None) -> dict[str, Any]:
    """``fmt``'s file written to ``tmp`` by its module, and its manifest entry."""
    from ..fileio import sha256_file

    t0 = time.perf_counter()
    settings = fmt.export(job, tmp)
    seconds = time.perf_counter() - t0
    job.written[fmt.name] = tmp
    log.info("%s: %.1f MB in %.1f s", fmt.file, tmp.stat().st_size / 1e6, seconds)
    return {
        "format": fmt.kind,
        "precision": fmt.precision,
        "opset": job.options.opset if fmt.uses_opset else None,
        "export_settings": settings,
        "size_bytes": tmp.stat().st_size,
        "sha256": sha256_file(tmp),
        "input_shape": job.base_metadata["input_shape"],
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "source_checkpoint_sha256": checkpoint_sha256,
        "seconds": round(seconds, 3),
    }


def _settings(options: ExportOptions, chosen, calib) -> dict[str, Any]:
    """The export's options as the manifest records them (null where they played no part)."""
    onnx = any(fmt.uses_opset for fmt in chosen)
    return {
        "formats": list(options.groups),
        "skipped": dict(options.skipped),  # brought by `all` but not installed here: why
        "quantize": options.quantize,
        "fp16": options.fp16,
        "opset": options.opset if onnx else None,
        "onnx_exporter": ONNX_EXPORTER if onnx else None,
        "calib_data": calib.source if calib else None,
        "calib_size": options.calib_size if options.quantize else None,
        "calib_method": options.calib_method if options.quantize else None,
    }
