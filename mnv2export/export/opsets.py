"""Which ONNX opsets an export may target: from the dynamo exporter's own (18) to the newest both the installed onnx and
ONNX Runtime support. Light to import (onnx and onnxruntime are imported only to find that newest one), so that
``mnv2 export --opset N`` is checked before torch is loaded."""

from __future__ import annotations

import functools

from ..errors import ConfigError

MIN_OPSET = 18  # the dynamo exporter's own opset; it cannot convert this model lower
DEFAULT_OPSET = 18  # every ONNX Runtime since 1.14 runs it fully, and no version conversion is involved


def max_opset() -> int:
    """The newest opset both installed onnx and ONNX Runtime support (onnx 1.23 defines 28, onnxruntime 1.31 runs 26)."""
    import onnx

    return min(onnx.defs.onnx_opset_version(), ort_max_opset())


@functools.cache
def ort_max_opset() -> int:
    """The newest default-domain opset the installed ONNX Runtime loads, found by loading a one-node model per opset,
    newest first (ONNX Runtime exposes no such number; a newer opset fails at load, in ValidateOpsetForDomain)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", value[:1], value[1:])
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 - onnxruntime's own Fail type
            continue
    return MIN_OPSET


def check_opset(opset: int) -> int:
    """``opset`` if an export can target it, else a :class:`ConfigError` naming the supported range. The default needs
    no look-up (every supported ONNX Runtime runs it); only a newer one asks onnx and ONNX Runtime."""
    ok = (
        isinstance(opset, int)
        and not isinstance(opset, bool)
        and MIN_OPSET <= opset
        and (opset <= DEFAULT_OPSET or opset <= max_opset())
    )
    if not ok:
        raise ConfigError(
            f"{{opset}} {opset!r} is not supported",
            hint=f"choose an opset between {MIN_OPSET} and {max_opset()} (default {DEFAULT_OPSET})",
        )
    return opset
