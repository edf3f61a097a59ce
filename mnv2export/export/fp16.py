"""FP16 ONNX for GPUs with ONNX Runtime's own converter (``onnxruntime.transformers.float16``).

``keep_io_types=True``: the input stays float32 and the logits come back float32 (a Cast at each end), so callers
need no change. The converter appends those Casts at the end of the node list, which ``onnx.checker`` refuses
(nodes must be topologically sorted), so the graph is sorted again before the check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from ..errors import ExportError, first_line
from .onnx import check_and_save, set_metadata, toposort

CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16"  # recorded in the manifest


def convert_fp16(fp32: onnx.ModelProto, out: str | Path, metadata: dict[str, Any]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.ModelProto()
    source.CopyFrom(fp32)  # the converter may change its argument in place
    try:
        model = convert_float_to_float16(source, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise ExportError(f"FP16 conversion failed: {first_line(exc)}", path=out) from exc
    toposort(model.graph)
    set_metadata(model, metadata)
    model.doc_string = "MobileNetV2, FP16 weights and activations (float32 input and output) by mnv2export"
    check_and_save(model, out)
    return model
