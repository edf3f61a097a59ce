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
from typing import Any

from ..errors import ConfigError
from ..layout import (
    ARTIFACT_FILES,
    EXPORT_DIR,
    FP16_FILE,
    INT8_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    PIPELINE_FILE,
    TORCHSCRIPT_FILE,
)
from .names import CALIB_METHODS, FORMATS, INPUT_NAME, MANIFEST_FORMAT, MANIFEST_VERSION, OUTPUT_NAME

log = logging.getLogger(__name__)

ONNX_EXPORTER = "torch.onnx.export(dynamo=True)"


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
    from ..params import split_items

    items = split_items(formats, "export format")
    if "all" in items:
        items = [*items, *FORMATS]
    unknown = sorted({f for f in items if f not in (*FORMATS, "all")})
    if unknown or not items:
        raise ConfigError(
            f"unknown export format {', '.join(unknown) or '(none)'}", hint="choose torchscript, onnx or all"
        )
    return [f for f in FORMATS if f in items]


def previous_artifacts(out: Path) -> list[str]:
    """The artifact files an earlier export into ``out`` wrote (those its manifest.json lists, of this tool's names):
    the ones this export may replace or remove. A file that no manifest lists is someone else's and stays."""
    try:
        listed = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))["artifacts"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in ARTIFACT_FILES if isinstance(listed, dict) and name in listed]


def toolchain_versions() -> dict[str, str]:
    """What the manifest and the check record: the checkpoint's versions (mnv2export, torch, torchvision, python) plus
    onnx and onnxruntime."""
    import onnx
    import onnxruntime

    from ..checkpoint import versions

    return {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


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
    formats: str | Iterable[str] = "all",
    quantize: bool = False,
    fp16: bool = False,
    calib_data: str | None = None,
    calib_size: int = 256,
    calib_method: str = "minmax",
    opset: int | None = None,
) -> Manifest:
    from ..fileio import require_checkpoint_file
    from .names import check_calib_size
    from .opsets import DEFAULT_OPSET, check_opset

    # the options and the checkpoint's file checks first, before torch is imported: their errors come at once
    fmts = parse_formats(formats)
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    if (quantize or fp16) and "onnx" not in fmts:
        raise ConfigError("--quantize and --fp16 make ONNX models", hint="use --format onnx or --format all with them")
    if calib_data is not None and not quantize:
        raise ConfigError("--calib-data is only used for INT8", hint="add --quantize, or leave --calib-data out")
    if calib_method not in CALIB_METHODS:
        raise ConfigError(
            f"unknown calibration method {calib_method!r}", hint=f"choose one of {', '.join(CALIB_METHODS)}"
        )
    check_calib_size(calib_size)
    require_checkpoint_file(checkpoint_path)

    from ..device import cpu_threads

    with cpu_threads(EXPORT_TORCH_THREADS):
        return _export_all(checkpoint_path, out_dir, fmts, quantize, fp16, calib_data, calib_size, calib_method, opset)


# The export's PyTorch work is a few eager passes and Python-bound tracing: one intra-op thread costs well under a
# second on an idle machine and avoids 10x stalls when the CPU is shared (spin-waiting threads; RESULTS.md).
EXPORT_TORCH_THREADS = 1


def _export_all(
    checkpoint_path, out_dir, fmts, quantize, fp16, calib_data, calib_size, calib_method, opset
) -> Manifest:
    from ..checkpoint import load_checkpoint
    from ..fileio import ensure_dir

    ckpt = load_checkpoint(checkpoint_path)
    calib = None
    if quantize:  # before anything is created: missing or empty calibration data is an error up front
        from .calib import load_calibration

        t0 = time.perf_counter()
        calib = load_calibration(ckpt, calib_data, calib_size)
        log.info("calibration: %s (%.1f s)", calib.source, time.perf_counter() - t0)
    out = ensure_dir(out_dir if out_dir is not None else default_out_dir(checkpoint_path))
    settings = {
        "formats": fmts,
        "quantize": quantize,
        "fp16": fp16,
        "opset": opset if "onnx" in fmts else None,
        "onnx_exporter": ONNX_EXPORTER if "onnx" in fmts else None,
        "calib_data": calib.source if calib else None,
        "calib_size": calib_size if quantize else None,
        "calib_method": calib_method if quantize else None,
    }
    from ..fileio import atomic_files, temp_files_in, work_folder

    # every temporary file (ours and onnxruntime.quantization's) in one locked work folder inside `out`, so that a
    # killed export leaves them there, and the next export into `out` removes them (TEMP_LEFTOVERS: older versions').
    # Every file renamed together at the end, in order, manifest last; an artifact name not written this time (an
    # earlier export's model.int8.onnx...) is removed in the same commit, so the folder holds one export only
    with (
        work_folder(out, legacy=TEMP_LEFTOVERS) as work,
        temp_files_in(work),
        atomic_files(out, owned=previous_artifacts(out), temp_dir=work) as staged,
    ):
        return _export(ckpt, out, fmts, quantize, fp16, calib, calib_method, opset, settings, staged)


# what earlier versions of the export left in its folder when killed (temporary files beside the final names, the
# INT8 step's folder): no export of this version writes these names, so any found is stale
TEMP_LEFTOVERS = (*(f".{name}.*.tmp" for name in (*ARTIFACT_FILES, MANIFEST_FILE)), "mnv2-int8-*")


def _export(ckpt, out: Path, fmts, quantize, fp16, calib, calib_method, opset, settings, staged) -> Manifest:
    import numpy as np
    import torch

    from ..fileio import json_text, sha256_file, write_bytes
    from ..fold import check_fold_logits, fold_bn
    from .calib import verification_inputs

    model = ckpt.build_model()
    folded = fold_bn(model)
    inputs, inputs_source = verification_inputs(ckpt, calib)
    with torch.inference_mode():
        folded_logits = folded(inputs)
        fold_diff = check_fold_logits(model(inputs), folded_logits)
    reference = folded_logits.numpy()  # what every exported FP32 artifact must answer on `inputs`
    log.info("folded BatchNorm: max abs logit diff %.2e on %s", fold_diff, inputs_source)
    example = inputs[:2]
    size = ckpt.data_config.img_size
    base = {
        **ckpt.metadata(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch", 3, size, size],
        "bn_folded": True,
    }
    if "onnx" in fmts:
        base["versions"] = toolchain_versions()
    written: dict[str, tuple[Path, dict[str, Any], float]] = {}

    def record(name: str, tmp: Path, entry: dict[str, Any], t0: float) -> None:
        seconds = time.perf_counter() - t0
        written[name] = (tmp, entry, seconds)
        log.info("%s: %.1f MB in %.1f s", name, tmp.stat().st_size / 1e6, seconds)

    if "torchscript" in fmts:
        from .torchscript import export_torchscript

        t0 = time.perf_counter()
        tmp = staged(TORCHSCRIPT_FILE)
        meta = {
            **base,
            "format": "torchscript",
            "precision": "fp32",
            "opset": None,
            "exporter": "torch.jit.trace + torch.jit.freeze",
        }
        export_torchscript(folded, example, meta, tmp, reference=folded_logits[:2])
        record(
            TORCHSCRIPT_FILE,
            tmp,
            {
                "format": "torchscript",
                "precision": "fp32",
                "opset": None,
                "export_settings": {
                    "method": "torch.jit.trace + torch.jit.freeze (eval, BatchNorm folded)",
                    "device": "cpu (load with map_location to move it)",
                },
            },
            t0,
        )
    if "onnx" in fmts:
        from .onnx import export_onnx, verify_with_ort

        t0 = time.perf_counter()
        fp32_tmp = staged(ONNX_FILE)
        meta = {**base, "format": "onnx", "precision": "fp32", "opset": opset, "exporter": ONNX_EXPORTER}
        fp32_model = export_onnx(folded, example, meta, fp32_tmp, opset)
        diff = verify_with_ort(fp32_tmp, inputs.numpy(), reference, rtol=1e-3, atol=1e-4, what="FP32 ONNX")
        record(
            ONNX_FILE,
            fp32_tmp,
            {
                "format": "onnx",
                "precision": "fp32",
                "opset": opset,
                "export_settings": {"exporter": ONNX_EXPORTER, "dynamic_batch": True, "max_abs_diff_vs_pytorch": diff},
            },
            t0,
        )
        if quantize:
            from .quantize import quantize_onnx, top1_agreement

            t0 = time.perf_counter()
            tmp = staged(INT8_FILE)
            meta = {**base, "format": "onnx", "precision": "int8", "opset": opset, "exporter": ONNX_EXPORTER}
            q = quantize_onnx(fp32_tmp, tmp, calib.images, meta, method=calib_method)
            agree = top1_agreement(fp32_tmp, tmp, calib.images[:64])
            record(
                INT8_FILE,
                tmp,
                {
                    "format": "onnx",
                    "precision": "int8",
                    "opset": opset,
                    "export_settings": {**q, "calibration_data": calib.source, "top1_agreement_fp32_calib": agree},
                },
                t0,
            )
        if fp16:
            from .fp16 import convert_fp16

            t0 = time.perf_counter()
            tmp = staged(FP16_FILE)
            convert_fp16(
                fp32_model,
                tmp,
                {**base, "format": "onnx", "precision": "fp16", "opset": opset, "exporter": ONNX_EXPORTER},
            )
            diff = verify_with_ort(
                tmp,
                inputs.numpy(),
                reference,
                rtol=0.05,
                atol=0.05 * max(1.0, float(np.abs(reference).max())),
                what="FP16 ONNX",
            )
            record(
                FP16_FILE,
                tmp,
                {
                    "format": "onnx",
                    "precision": "fp16",
                    "opset": opset,
                    "export_settings": {
                        "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
                        "keep_io_types": True,
                        "max_abs_diff_vs_pytorch_cpu": diff,
                    },
                },
                t0,
            )

    artifacts = {}
    for name, (tmp, entry, seconds) in written.items():
        artifacts[name] = {
            **entry,
            "size_bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
            "input_shape": base["input_shape"],
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "source_checkpoint_sha256": ckpt.sha256,
            "seconds": round(seconds, 3),
        }
    data = {
        "format": MANIFEST_FORMAT,
        "schema_version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_checkpoint": {"path": str(ckpt.path.resolve()) if ckpt.path else None, "sha256": ckpt.sha256},
        "settings": settings,
        "bn_fold": {"max_abs_diff": fold_diff, "inputs": inputs_source},
        "versions": base["versions"],
        "artifacts": artifacts,
    }
    write_bytes(staged(MANIFEST_FILE), (json_text(data) + "\n").encode("utf-8"))
    return Manifest(path=out / MANIFEST_FILE, data=data)
