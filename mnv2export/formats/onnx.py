"""ONNX: FP32 (``model.onnx``), INT8 (``model.int8.onnx``) and FP16 (``model.fp16.onnx``), three registered formats
that load, read and describe alike (one ONNX Runtime session, no torch) and differ in how they are written: FP32 by
torch.onnx's dynamo exporter (:mod:`mnv2export.export.onnx`), INT8 by ONNX Runtime's static quantization of the FP32
file (:mod:`mnv2export.export.quantize`), FP16 by ONNX Runtime's converter from it (:mod:`mnv2export.export.fp16`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..export.names import INPUT_NAME, ONNX_EXPORTER, OUTPUT_NAME
from ..layout import FP16_FILE, INT8_FILE, ONNX_FILE
from ..runtime.metadata import check_model_config
from ..runtime.onnx_model import (
    QUANT_OPS,
    check_onnx_signature,
    dims,
    load_onnx_model,
    onnx_initializer_counts,
    onnx_metadata,
)
from ..runtime.runners import OnnxRunner
from .base import ArtifactFormat, Description, ExportJob, folded_description


class OnnxFormat(ArtifactFormat):
    """FP32, and what every ONNX precision shares: loading, metadata, description."""

    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        from ..export.onnx import export_onnx, verify_with_ort

        export_onnx(job.folded, job.example, job.metadata(self), out, job.options.opset)
        reference = job.reference.numpy()
        diff = verify_with_ort(out, job.inputs.numpy(), reference, rtol=1e-3, atol=1e-4, what="FP32 ONNX")
        return {"exporter": ONNX_EXPORTER, "dynamic_batch": True, "max_abs_diff_vs_pytorch": diff}

    def load(self, path: Path, provider: str, *, threads: int | None = None, cuda_graph: bool = False) -> OnnxRunner:
        from ..runtime.sessions import create_session

        model = load_onnx_model(path, check=False)  # parsed once: metadata here, the checker in create_session
        meta = onnx_metadata(model, path)
        session, used = create_session(path, provider, threads=threads, model=model, cuda_graph=cuda_graph)
        validate(model, meta, path)
        return OnnxRunner(
            path=path,
            format=self.kind,
            precision=meta["precision"],
            provider=used,
            metadata=meta,
            session=session,
            input_name=meta.get("input_name", INPUT_NAME),
            output_name=meta.get("output_name", OUTPUT_NAME),
        )

    def read_metadata(self, path: Path) -> dict[str, Any]:
        return onnx_metadata(load_onnx_model(path, check=False), path)

    def describe(self, path: Path) -> Description:
        model = load_onnx_model(path)  # parsed once, checked as load checks it, without a session
        meta = onnx_metadata(model, path)
        validate(model, meta, path)
        return folded_description(meta, onnx_graph_info(model))


class Int8OnnxFormat(OnnxFormat):
    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        from ..export.names import AGREEMENT_IMAGES
        from ..export.quantize import quantize_onnx, top1_agreement

        fp32, calib = job.written[self.after], job.calib
        settings = quantize_onnx(fp32, out, calib.images, job.metadata(self), method=job.options.calib_method)
        agree = top1_agreement(fp32, out, calib.images[:AGREEMENT_IMAGES])
        return {**settings, "calibration_data": calib.source, "top1_agreement_fp32_calib": agree}


class Fp16OnnxFormat(OnnxFormat):
    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        import numpy as np
        import onnx

        from ..export.fp16 import CONVERTER, convert_fp16
        from ..export.onnx import verify_with_ort

        convert_fp16(onnx.load(str(job.written[self.after])), out, job.metadata(self))
        reference = job.reference.numpy()
        atol = 0.05 * max(1.0, float(np.abs(reference).max()))  # FP16 keeps about 3 significant digits
        diff = verify_with_ort(out, job.inputs.numpy(), reference, rtol=0.05, atol=atol, what="FP16 ONNX")
        return {"converter": CONVERTER, "keep_io_types": True, "max_abs_diff_vs_pytorch_cpu": diff}


_ONNX = {
    "kind": "onnx",
    "family": "onnx",
    "group": "onnx",
    "exporter": ONNX_EXPORTER,
    "uses_opset": True,
    "toolchain": ("onnx", "onnxruntime"),
    "cuda_graphs": True,
}
ONNX = OnnxFormat(name="onnx", precision="fp32", file=ONNX_FILE, **_ONNX)
INT8_ONNX = Int8OnnxFormat(
    name="int8",
    precision="int8",
    file=INT8_FILE,
    option="quantize",
    after="onnx",
    how="`mnv2 export --quantize` writes it",
    **_ONNX,
)
FP16_ONNX = Fp16OnnxFormat(
    name="fp16",
    memory_factor=3.5,  # the CPU provider wraps each FP16 convolution in NCHWc reorder copies
    precision="fp16",
    file=FP16_FILE,
    option="fp16",
    after="onnx",
    how="`mnv2 export --fp16` writes it",
    **_ONNX,
)


def validate(model, meta: dict[str, Any], p: Path) -> None:
    """The graph's input and output against the metadata, and its weights against the metadata's model_config: a
    foreign model carrying metadata copied from an export is refused, by every command alike."""
    check_onnx_signature(model, meta, p)
    check_model_config(meta, onnx_initializer_counts(model)["kernels"], p)


@dataclass
class OnnxGraphInfo:
    opset: int | None
    ir_version: int
    producer: str
    inputs: list[dict[str, Any]]  # name, dtype, shape (a dimension is an int or its symbolic name)
    outputs: list[dict[str, Any]]
    nodes: int
    op_counts: dict[str, int]
    quantized_nodes: dict[str, int]  # QuantizeLinear / DequantizeLinear / QLinear* / *Integer -> count
    weight_elements: int  # weights and biases (float or integer)
    kernel_elements: int  # of those, the ones of rank 2 or more (convolution and linear kernels)
    quant_param_elements: int  # scales and zero points of the Q/DQ nodes
    other_constant_elements: int  # int64 shape constants, clip bounds and the like

    @property
    def quantized_total(self) -> int:
        return sum(self.quantized_nodes.values())


def onnx_graph_info(source) -> OnnxGraphInfo:
    """Opset, inputs / outputs, op counts, quantized nodes and initializer sizes of an ONNX file (a path, or the
    ``onnx.ModelProto`` already read from it)."""
    model = load_onnx_model(Path(source), check=False) if isinstance(source, (str, Path)) else source
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops = Counter(n.op_type for n in graph.node)
    quantized = {
        op: n for op, n in sorted(ops.items()) if op in QUANT_OPS or op.startswith("QLinear") or op.endswith("Integer")
    }
    counts = onnx_initializer_counts(model)
    initializers = {i.name for i in graph.initializer}
    return OnnxGraphInfo(
        opset=opset,
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_value_info(v) for v in graph.input if v.name not in initializers],
        outputs=[_value_info(v) for v in graph.output],
        nodes=len(graph.node),
        op_counts=dict(ops.most_common()),
        quantized_nodes=quantized,
        weight_elements=counts["weights"],
        kernel_elements=counts["kernels"],
        quant_param_elements=counts["quant"],
        other_constant_elements=counts["other"],
    )


def _value_info(v) -> dict[str, Any]:
    import onnx

    shape = ["?" if d is None else d for d in dims(v)]
    return {
        "name": v.name,
        "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
        "shape": shape,
    }
