"""INT8 ONNX with ONNX Runtime's static quantization, the careful recipe.

1. ``quant_pre_process``: ONNX shape inference and ONNX Runtime's basic graph optimisation on the FP32 model
   (symbolic shape inference is for transformers and is skipped).
2. ``quantize_static`` in QDQ format, weights per channel (per-tensor scales collapse the depthwise convolutions),
   calibrated on real images through the checkpoint's validation preprocessing, MinMax / Entropy / Percentile.
3. Types for x86: activations uint8, weights int8 (U8S8). With symmetric int8 weights ONNX Runtime takes its
   "ConvSym" kernels (VPDPBUSD on AVX512-VNNI / AVX-VNNI). S8S8 measured slower than FP32 here (RESULTS.md), U8U8
   about as slow as FP32 (one prototype run). The 3-channel stem convolution stays FP32 (see ``quantize_onnx``).
   On x86 without VNNI, U8S8 goes through VPMADDUBSW, whose 16-bit intermediate sums can saturate, so weights are
   quantised to 7 bits (``reduce_range``) there, chosen from the CPU flags, without a flag. ARM uses S8S8.

The quantizer drops each ReLU6 Clip into the uint8 range of the Quantize after it (activations are asymmetric);
ONNX Runtime then fuses every DQ -> Conv -> Q group into one QLinearConv (NHWC), Add into QLinearAdd and Gemm into
QGemm when the session runs with ORT_ENABLE_ALL (the default).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import ConfigError, ExportError, first_line
from ..fileio import is_disk_full
from .names import CALIB_METHODS, INPUT_NAME, OUTPUT_NAME
from .onnx import check_and_save, drop_unused_domains, op_count, set_metadata

log = logging.getLogger(__name__)

CALIB_BATCH = 16  # images per calibration run; ONNX Runtime histograms / min-max are merged batch by batch
INT8_ROOM = 3  # the INT8 step's temporary files at their peak, in FP32 model sizes (pre-processed, optimised, inferred)


def cpu_flags() -> set[str] | None:
    """The CPU feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def int8_recipe(flags: set[str] | None = None, machine: str | None = None) -> dict[str, Any]:
    """Activation / weight types and reduce_range for this CPU (or for ``flags`` / ``machine`` when given)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):  # ONNX Runtime's advice for ARM; not measured here
        return {
            "activation_type": "int8",
            "weight_type": "int8",
            "reduce_range": False,
            "cpu": "arm64: S8S8 (ONNX Runtime's advice)",
        }
    flags = cpu_flags() if flags is None else flags
    vnni = bool(flags and {"avx512_vnni", "avx_vnni"} & flags)
    if vnni:
        cpu = "x86 with VNNI: U8S8 without range reduction"
    elif flags is None:
        cpu = "x86, CPU flags unreadable: assuming no VNNI, weights reduced to 7 bits"
    else:
        cpu = "x86 without VNNI: weights reduced to 7 bits against VPMADDUBSW saturation"
    return {"activation_type": "uint8", "weight_type": "int8", "reduce_range": not vnni, "cpu": cpu}


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over an (N, 3, H, W) float32 array, in batches.

    ``__len__`` and ``set_range`` let ``quantize_static`` collect batch by batch (``CalibStridedMinMax``), which keeps
    the memory of the histogram calibrators bounded (they hold every intermediate tensor of one collection).
    """

    def __init__(self, images: np.ndarray, batch: int = CALIB_BATCH):
        self.batches = [
            np.ascontiguousarray(images[i : i + batch], dtype=np.float32) for i in range(0, len(images), batch)
        ]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter: Iterator[np.ndarray] = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))

    def __iter__(self):  # as CalibrationDataReader iterates (qdq_loss_debug.collect_activations uses it)
        while (item := self.get_next()) is not None:
            yield item


def pre_process(fp32: str | Path, out: str | Path) -> None:
    """Step 1 of the recipe: ``quant_pre_process`` (shape inference + ORT basic optimisation, no symbolic shapes).
    ``mnv2 check --debug-int8`` repeats it to get the tensor names the INT8 model was quantised with."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _logged_errors("onnxruntime.quantization.shape_inference") as errors:
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    if (
        errors
    ):  # it logs a failed optimisation (a full disk while ORT writes the optimised model) and goes on without it
        raise RuntimeError(f"quant_pre_process: {errors[0]}")


@contextlib.contextmanager
def _logged_errors(name: str) -> Iterator[list[str]]:
    """Inside: the records of the logger ``name`` go to our debug log instead of stderr (where Python's last-resort
    handler prints them, tracebacks included); the first line of each ERROR record is collected."""
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.debug("%s: %s", name, record.getMessage())
            if record.levelno >= logging.ERROR:
                errors.append(first_line(Exception(record.getMessage())))

    logger = logging.getLogger(name)
    handler, saved = Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield errors
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


def stem_conv(model: onnx.ModelProto) -> str | None:
    """Name of the first Conv fed straight by the graph input (MobileNetV2's 3-channel stem)."""
    return next((n.name for n in model.graph.node if n.op_type == "Conv" and INPUT_NAME in n.input), None)


def quantize_onnx(
    fp32: str | Path,
    out: str | Path,
    images: np.ndarray,
    metadata: dict[str, Any],
    *,
    method: str = "minmax",
    recipe: dict[str, Any] | None = None,
    keep_stem_fp32: bool = True,
) -> dict[str, Any]:
    """Quantise the FP32 ONNX file ``fp32`` into ``out`` (QDQ, per channel), calibrated on ``images``.

    ``keep_stem_fp32`` leaves the 3-channel stem convolution in FP32: its INT8 version misses ONNX Runtime's fast
    symmetric-weight kernels (they want input channels in multiples of 4) and runs no faster than FP32's; with it in
    FP32 the whole model measured 1-12% faster in 11 of 12 paired comparisons here (benchmarks/RESULTS.md).

    Returns the settings used (also embedded in the file's metadata under ``quantization``).
    """
    if method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}", hint=f"choose one of {', '.join(CALIB_METHODS)}")
    if len(images) == 0:
        raise ConfigError("no calibration images", hint="pass {calib_data} with images")
    recipe = dict(recipe or int8_recipe())
    model, excluded = _quantized_model(fp32, out, CalibrationReader(images), recipe, method, keep_stem_fp32)
    if op_count(model, "QuantizeLinear") == 0:
        raise ExportError("the INT8 model holds no QuantizeLinear node", path=out, hint="report it with MNV2_DEBUG=1")
    settings = {
        **recipe,
        "format": "QDQ",
        "per_channel": True,
        "calibration_method": method,
        "calibration_images": int(len(images)),
        "calibration_batch": CALIB_BATCH,
        "pre_process": "quant_pre_process (ONNX shape inference + ORT basic optimisation)",
        "fp32_nodes": excluded,
    }
    dropped = drop_unused_domains(model)
    if dropped:
        log.debug("INT8: dropped the unused operator-set imports %s", ", ".join(dropped))
    set_metadata(model, {**metadata, "quantization": settings})
    model.doc_string = "MobileNetV2, INT8 (QDQ) by mnv2export"
    check_and_save(model, out)  # a full disk: an OSError (ENOSPC), reported by the caller
    return settings


def _quantized_model(fp32, out, reader: CalibrationReader, recipe, method: str, keep_stem_fp32: bool):
    """Steps 1 and 2 of the recipe in a temporary folder beside ``out``: (the INT8 model, the nodes left in FP32)."""
    # beside `out` (an export's work folder); onnxruntime.quantization's own temporary folders go where `tempfile`
    # says, which the export points into that work folder too (fileio.temp_files_in)
    with tempfile.TemporaryDirectory(prefix="mnv2-int8-", dir=Path(out).parent) as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            pre_process(fp32, pre)
            stem = stem_conv(onnx.load(str(pre), load_external_data=False))
            excluded = [stem] if keep_stem_fp32 and stem else []
            _quantize_static(pre, raw, reader, recipe, method, excluded)
            return onnx.load(str(raw)), excluded
        except (ConfigError, ExportError):
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many types
            # a full disk shows as an OSError, or as a file that does not parse (onnx's C++ infer_shapes_path, which
            # ONNX Runtime's steps call, cuts a file short without an error), its folder already removed: the step
            # holds up to three copies of the model at once, so a failure with less room than that is the disk's
            if is_disk_full(exc, tmp, need=INT8_ROOM * Path(fp32).stat().st_size):
                raise OSError(errno.ENOSPC, f"disk full in the INT8 step: {first_line(exc)}", str(out)) from exc
            raise ExportError(
                f"INT8 quantization failed: {first_line(exc)}", path=out, hint="report it with MNV2_DEBUG=1"
            ) from exc


def _quantize_static(pre: Path, raw: Path, reader, recipe: dict[str, Any], method: str, excluded: list[str]) -> None:
    """Step 2: ``quantize_static`` with the recipe's types, QDQ, per channel, one collection per calibration batch."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    calib = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    chatter = io.StringIO()  # the histogram calibrators print progress to stdout; a library does not
    with contextlib.redirect_stdout(chatter):
        quantize_static(
            str(pre),
            str(raw),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=qtype[recipe["activation_type"]],
            weight_type=qtype[recipe["weight_type"]],
            reduce_range=recipe["reduce_range"],
            calibrate_method=calib,
            nodes_to_exclude=excluded,
            # one collection per calibration batch (bounded memory); activations stay asymmetric (the default),
            # which is what lets the quantizer drop the ReLU6 Clips into the Q ranges
            extra_options={"CalibStridedMinMax": 1},
        )
    if chatter.getvalue().strip():
        log.debug("quantize_static: %s", chatter.getvalue().strip())


def top1_agreement(fp32: str | Path, int8: str | Path, images: np.ndarray) -> float:
    """Share of ``images`` on which the INT8 and the FP32 model pick the same class (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    a = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    same = 0
    for batch in CalibrationReader(images, batch=32).batches:
        ya = a.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        yb = b.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        same += int((ya.argmax(1) == yb.argmax(1)).sum())
    return same / len(images)
