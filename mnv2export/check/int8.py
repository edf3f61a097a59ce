"""``mnv2 check --debug-int8``: which layers of the INT8 model diverge most from FP32.

ONNX Runtime's QDQ debugging module (``onnxruntime.quantization.qdq_loss_debug``) does the work: both models are
augmented to output every intermediate float tensor, run on the same real images (CPU, graph optimisations off, so the
QDQ pairs are executed as written), and each quantised activation is compared by SQNR (signal-to-quantisation-noise
ratio, dB; higher is better):

* SQNR vs FP32: the INT8 model's tensor vs the same tensor of the FP32 model (the error accumulated up to there),
* dB lost here: the lowest SQNR vs FP32 among the tensor's nearest compared inputs minus its own: where the
  divergence grows, i.e. the layers to look at (keep in FP32, calibrate differently). Layers are ranked by it. The
  first quantised tensors, fed by the (unquantised) model input, count from the 8-bit ideal, 6.02 * 8 + 1.76 dB.
* local SQNR (JSON only): before vs after the tensor's own Quantize/Dequantize pair in the INT8 model. The recipe drops
  the ReLU6 Clips into the quantisation ranges, so for those tensors this also counts the clipping, not only rounding.

The FP32 model compared is ``model.onnx`` after the same ``quant_pre_process`` the INT8 recipe ran, so tensor names
match the INT8 graph. Weights are compared too (per-tensor SQNR of the dequantised weights).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TOP = 10
# a full-range uniform signal rounded to 8 bits: what the first quantised tensors start from
IDEAL_8BIT_SQNR_DB = 6.02 * 8 + 1.76
DEBUG_SAMPLES = 32  # every intermediate tensor of both models is held in memory: keep it small
DEBUG_BATCH = 8


def debug_int8(
    out_dir: Path, entries: dict[str, dict[str, Any]], real, *, top: int = TOP, samples: int = DEBUG_SAMPLES
) -> dict[str, Any]:
    """Per-tensor SQNR of the INT8 model against FP32; the ``top`` worst tensors first. Never raises for a model it
    cannot analyse: the result's ``note`` says why."""
    int8 = next((n for n, e in entries.items() if e.get("precision") == "int8" and e.get("format") == "onnx"), None)
    fp32 = next((n for n, e in entries.items() if e.get("precision") == "fp32" and e.get("format") == "onnx"), None)
    result: dict[str, Any] = {
        "int8": int8,
        "fp32": fp32,
        "samples": 0,
        "layers": [],
        "weights": [],
        "output_sqnr_db": None,
    }
    if int8 is None or fp32 is None:
        result["note"] = "--debug-int8: nothing to analyse (the folder needs both an INT8 and an FP32 ONNX model)"
        return result
    if not len(real):
        result["note"] = "--debug-int8: needs real images (INT8 is calibrated for them); pass --data"
        return result
    from ..runtime import read_metadata

    x = real.batch(read_metadata(out_dir / int8)["data_config"])[:samples]
    result["samples"] = int(len(x))
    try:
        layers, weights, out_sqnr = _analyse(out_dir / fp32, out_dir / int8, x)
    except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many types; the check itself stands
        log.debug("INT8 debugging failed", exc_info=True)
        result["note"] = (
            f"--debug-int8 could not analyse {int8}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        return result
    result["layers"] = layers[:top]
    result["weights"] = weights[:top]
    result["output_sqnr_db"] = out_sqnr
    result["tensors_compared"] = len(layers)
    worst = ", ".join(f"{t['layer']} ({_lost(t)})" for t in layers[:3])
    result["note"] = (
        f"--debug-int8 ({len(x)} images, ONNX Runtime qdq_loss_debug): logits SQNR vs FP32 {_db(out_sqnr)}; "
        f"the divergence grows most at {worst or 'no quantised tensor'}"
    )
    return result


def _lost(t: dict[str, Any]) -> str:
    return f"-{t['lost_db']:.1f} dB, to {_db(t['xmodel_sqnr_db'])}"


def _db(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.1f} dB"


def _analyse(fp32: Path, int8: Path, x: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None]:
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_signal_to_quantization_noice_ratio,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    from ..export.names import OUTPUT_NAME
    from ..export.quantize import CalibrationReader, pre_process

    with tempfile.TemporaryDirectory(prefix="mnv2-int8-debug-") as tmp:
        pre, pre_aug, q_aug = (str(Path(tmp) / n) for n in ("pre.onnx", "pre_aug.onnx", "int8_aug.onnx"))
        pre_process(fp32, pre)  # as the INT8 recipe did: same tensor names
        modify_model_output_intermediate_tensors(pre, pre_aug)
        modify_model_output_intermediate_tensors(str(int8), q_aug)
        float_acts = collect_activations(pre_aug, CalibrationReader(x, DEBUG_BATCH))
        qdq_acts = collect_activations(q_aug, CalibrationReader(x, DEBUG_BATCH))
        weights = compute_weight_error(create_weight_matching(pre, str(int8)))
        graph = onnx.load(pre, load_external_data=False).graph
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    out_sqnr = None
    if OUTPUT_NAME in float_acts and OUTPUT_NAME in qdq_acts:
        out_sqnr = float(compute_signal_to_quantization_noice_ratio(float_acts[OUTPUT_NAME], qdq_acts[OUTPUT_NAME]))
    names = _layer_names(graph)
    xmodel = {t: float(e.get("xmodel_err", math.nan)) for t, e in errors.items()}
    upstream = _upstream_sqnr(graph, xmodel)
    layers = [
        {
            "tensor": t,
            "layer": names.get(t, t),
            "xmodel_sqnr_db": xmodel[t],
            "input_sqnr_db": upstream.get(t),
            "lost_db": (upstream[t] if upstream.get(t) is not None else IDEAL_8BIT_SQNR_DB) - xmodel[t],
            "qdq_sqnr_db": float(e["qdq_err"]),
        }
        for t, e in errors.items()
    ]
    layers.sort(key=lambda t: -t["lost_db"] if math.isfinite(t["lost_db"]) else 0.0)
    wrows = [{"weight": w, "sqnr_db": float(v)} for w, v in weights.items()]
    wrows.sort(key=lambda t: t["sqnr_db"])
    return layers, wrows, out_sqnr


def _upstream_sqnr(graph, xmodel: dict[str, float]) -> dict[str, float | None]:
    """For each compared tensor, the lowest SQNR vs FP32 among the nearest compared tensors upstream of it (None when
    only the model input, identical in both, lies upstream)."""
    producer = {out: node for node in graph.node for out in node.output}
    memo: dict[str, list[float]] = {}

    def nearest(tensor: str, depth: int = 0) -> list[float]:
        if tensor in memo:
            return memo[tensor]
        node = producer.get(tensor)
        found: list[float] = []
        if node is not None and depth < 50:
            for i in node.input:
                if i in xmodel and math.isfinite(xmodel[i]):
                    found.append(xmodel[i])
                elif i in producer:
                    found += nearest(i, depth + 1)
        memo[tensor] = found
        return found

    return {t: (min(v) if (v := nearest(t)) else None) for t in xmodel}


def _layer_names(graph) -> dict[str, str]:
    """Tensor name -> "<op> <module path>" from the producing node's weight (``features.5.conv.1.0.weight``), walking
    back through weightless nodes (Clip, Add) to the nearest layer with weights; of several inputs, the one from the
    latest layer: a residual Add is named after its own block's projection, not after the shortcut from the block
    before."""
    inits = {i.name for i in graph.initializer}
    producer = {out: (k, node) for k, node in enumerate(graph.node) for out in node.output}

    def layer(k: int, node, depth: int = 0) -> tuple[int, str] | None:
        weight = next((i for i in node.input if i in inits and i.endswith(".weight")), None)
        if weight:
            return k, weight[: -len(".weight")]
        if depth > 3:
            return None
        found = [f for f in (layer(*producer[i], depth + 1) for i in node.input if i in producer) if f]
        return max(found) if found else None  # nodes are in topological order: the largest index is the latest layer

    out = {}
    for tensor, (k, node) in producer.items():
        found = layer(k, node)
        where = None if found is None else found[1] if found[0] == k else f"after {found[1]}"
        out[tensor] = f"{node.op_type} {where}" if where else node.op_type
    return out
