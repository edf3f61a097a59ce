"""ExecuTorch programs (``.pte``) for phones and embedded CPUs: the BatchNorm-folded model lowered to XNNPACK, in FP32
or INT8 (torchao PT2E with ExecuTorch's ``XNNPACKQuantizer``, per-channel symmetric weights, calibrated activations).

Where the metadata lives: a *constant method* of the program, ``mnv2_metadata``, that returns our JSON as a string.
A user reads it with ExecuTorch alone::

    from executorch.runtime import Runtime
    program = Runtime.get().load_program("model.pte")
    meta = json.loads(program.load_method("mnv2_metadata").execute([])[0])
    logits = program.load_method("forward").execute([torch.randn(1, *meta["input_size"])])[0]

Batch: dynamic from 1 to ``max_batch`` (default :data:`PTE_MAX_BATCH`). ExecuTorch plans the input and every tensor
outside the XNNPACK delegate for the largest batch, so the bound costs memory (at 224 px, 600 KB per image of the
input buffer alone) and a larger batch is refused by the runtime; the runner checks it first.

Why :func:`_lowering_flags`: lowering re-runs the graph on fake tensors, and torch's convolution-backend choice asks
``batch >= 16`` (oneDNN / NNPACK heuristics) with the example batch as hint; that guard silently narrowed the
batch range to 2..15 (the program then refused a batch of 16). With backed-size-oblivious guards and those backends
off while lowering, the range stays what was exported. The kernels XNNPACK runs are not affected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError, ExportError, first_line
from ..runtime.runners import Runner
from .names import AGREEMENT_IMAGES

log = logging.getLogger(__name__)

PTE_METADATA_METHOD = "mnv2_metadata"  # the constant method returning our JSON
PTE_MAX_BATCH = 32
INSTALL_HINT = 'install it with: python -m pip install -c constraints.txt -e ".[mobile]"'


def require_executorch() -> None:
    """ConfigError naming the install command when ExecuTorch (or torchao, which its quantizer needs) is missing."""
    # torchao 0.18 registers an Enum as a pytree constant, which torch 2.14 warns about on every import: not the user's
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import executorch.exir  # noqa: F401
        import torchao  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"ExecuTorch export needs the mobile extra ({exc.name} is missing)", hint=INSTALL_HINT
        ) from None
    finally:
        pytree_log.setLevel(level)


@contextlib.contextmanager
def _lowering_flags() -> Iterator[None]:
    """Keep the exported batch range through lowering (see the module's docstring)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # mkldnn.flags warns about oneDNN's TF32 on entry and exit
        with (
            torch.fx.experimental._config.patch(backed_size_oblivious=True),
            torch.backends.mkldnn.flags(enabled=False),
            torch.backends.nnpack.flags(enabled=False),
        ):
            yield


def _export_program(model, example, max_batch: int):
    """torch.export of ``model`` (in eval mode; a quantized graph module refuses ``.eval()``) with the batch dynamic
    from 1 to ``max_batch``. A MobileNetV2 is exported through :class:`~mnv2export.model.ReshapeHead`, so that XNNPACK
    takes the whole network as one delegate."""
    import torch
    from torchvision.models import MobileNetV2

    from ..model import ReshapeHead
    from .onnx import out_of_place

    if isinstance(model, MobileNetV2):
        model = ReshapeHead(model).eval()

    if not 2 <= example.shape[0] <= max_batch:
        raise ValueError(f"the example batch needs 2 to {max_batch} images for a dynamic batch axis")
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with out_of_place(model), torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def _lower(program, metadata: dict[str, Any], out: Path) -> dict[str, Any]:
    """Lower ``program`` to XNNPACK with the metadata method, write the .pte; returns how many XNNPACK delegates the
    program calls and the ops left outside them."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ..fileio import json_text, write_bytes

    with _lowering_flags():
        edge = to_edge_transform_and_lower(
            program,
            partitioner=[XnnpackPartitioner()],
            constant_methods={PTE_METADATA_METHOD: json_text(metadata, indent=None)},
        )
        lowered = _lowered_graph(edge.exported_program().graph)
        buffer = edge.to_executorch().buffer
    write_bytes(out, buffer)
    return lowered


def _lowered_graph(graph) -> dict[str, Any]:
    """The manifest's account of a lowered graph: its XNNPACK delegate calls (one, for MobileNetV2) and the operator
    calls that the CPU's portable kernels run, by name (the ``getitem`` unpacking a delegate's results is not work)."""
    calls = [n for n in graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    delegates = sum("call_delegate" in str(n.target) for n in calls)
    left = Counter(_op_name(n.target) for n in calls if "call_delegate" not in str(n.target))
    return {
        "xnnpack_delegates": delegates,
        "undelegated_call_function_nodes": sum(left.values()),
        "undelegated_ops": dict(sorted(left.items())),
    }


def _op_name(target) -> str:
    """``aten.view_copy.default`` for an edge operator (whose str() runs on with its schema), else its str()."""
    found = re.search(r"aten\.[\w.]+", str(target))
    return found.group(0) if found else str(target)


def _settings(precision: str, max_batch: int, lowered: dict[str, Any], seconds: float, **extra) -> dict[str, Any]:
    import executorch.version

    return {
        "method": f"torch.export + to_edge_transform_and_lower(XnnpackPartitioner) ({precision}, BatchNorm folded)",
        "device": "cpu (XNNPACK)",
        "dynamic_batch": {"min": 1, "max": max_batch},
        **lowered,
        "export_seconds": round(seconds, 3),
        "executorch": executorch.version.__version__,
        **extra,
    }


def export_pte(
    folded_model, example_batch, metadata: dict[str, Any], out_path: str | Path, *, max_batch: int = PTE_MAX_BATCH
) -> dict[str, Any]:
    """FP32 ``.pte`` of ``folded_model`` (eval, BatchNorm folded), checked against it on ``example_batch`` (2 images or
    more); returns the manifest's ``export_settings``."""
    require_executorch()
    import torch

    out, t0 = Path(out_path), time.perf_counter()
    meta = {**metadata, "precision": "fp32", "max_batch": max_batch}
    try:
        lowered = _lower(_export_program(folded_model.eval(), example_batch, max_batch), meta, out)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise ExportError(
            f"ExecuTorch export failed: {first_line(exc)}", path=out, hint="report it with MNV2_DEBUG=1"
        ) from exc
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        reference = folded_model(example_batch).numpy()
    diff = float(np.abs(load_pte(out)(example_batch.numpy()) - reference).max())
    if not diff <= 1e-4 * max(1.0, float(np.abs(reference).max())):
        raise ExportError(
            f"the .pte answers differently from the model (max abs diff {diff:.3g})",
            path=out,
            hint="report it with MNV2_DEBUG=1",
        )
    return _settings("fp32", max_batch, lowered, seconds, max_abs_diff_vs_pytorch=diff)


def export_pte_int8(
    folded_model, calib_images, metadata: dict[str, Any], out_path: str | Path, *, max_batch: int = PTE_MAX_BATCH
) -> dict[str, Any]:
    """INT8 ``.pte``: PT2E static quantization (per-channel symmetric weights, activations calibrated on
    ``calib_images``, N x 3 x H x W normalised, by XNNPACK's own histogram observer), lowered to XNNPACK; the settings
    record the top-1 agreement with the FP32 model on the first :data:`AGREEMENT_IMAGES` calibration images, as the
    ONNX INT8 model's do."""
    require_executorch()
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    out, t0 = Path(out_path), time.perf_counter()
    example = calib_images[:2]
    meta = {**metadata, "precision": "int8", "max_batch": max_batch}
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    try:
        prepared = prepare_pt2e(_export_program(folded_model.eval(), example, max_batch).module(), quantizer)
        with torch.no_grad():
            for chunk in calib_images.split(max_batch):
                prepared(chunk)
        quantized = convert_pt2e(prepared)
        lowered = _lower(_export_program(quantized, example, max_batch), meta, out)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise ExportError(
            f"ExecuTorch INT8 export failed: {first_line(exc)}", path=out, hint="report it with MNV2_DEBUG=1"
        ) from exc
    seconds = time.perf_counter() - t0
    agree = top1_agreement(folded_model, load_pte(out), calib_images[:AGREEMENT_IMAGES])
    return _settings(
        "int8",
        max_batch,
        lowered,
        seconds,
        quantizer="XNNPACKQuantizer(get_symmetric_quantization_config(is_per_channel=True))",
        activation_observer="HistogramObserver",
        calibration_images=int(calib_images.shape[0]),
        top1_agreement_fp32_calib=agree,
    )


def top1_agreement(folded_model, runner: PteRunner, images) -> float:
    """Share of ``images`` where the runner's top-1 class is the FP32 model's."""
    import torch

    with torch.no_grad():
        want = folded_model(images).argmax(1).numpy()
    got = np.concatenate([runner(chunk.numpy()).argmax(1) for chunk in images.split(runner.max_batch)])
    return float((got == want).mean())


def _load_program(p: Path):
    require_executorch()
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(p)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(
            f"not a readable .pte program: {first_line(exc)}", path=p, hint="the file is damaged; export it again"
        ) from None


def read_pte_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata JSON the ``.pte`` returns from its ``mnv2_metadata`` constant method."""
    p = Path(path)
    return _program_metadata(_load_program(p), p)


def _program_metadata(program, p: Path) -> dict[str, Any]:
    if PTE_METADATA_METHOD not in program.method_names:
        raise ArtifactError("the .pte program carries no mnv2export metadata", path=p, hint="export it with mnv2export")
    raw = program.load_method(PTE_METADATA_METHOD).execute([])[0]
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise ArtifactError("the .pte metadata is not a JSON object", path=p, hint="export it again")
    return meta


@dataclass
class PteRunner(Runner):
    """A loaded ``.pte`` (XNNPACK on the CPU): float32 NCHW numpy in, float32 logits out, batch 1 to ``max_batch``."""

    method: Any = field(default=None, repr=False)  # executorch.runtime.Method "forward"
    program: Any = field(default=None, repr=False)  # the Program the method belongs to, kept alive with it
    max_batch: int = PTE_MAX_BATCH

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        def run_chunk(chunk: np.ndarray) -> np.ndarray:
            return self.method.execute([torch.from_numpy(chunk)])[0].float().numpy()

        # the runtime refuses a batch over its upper bound with a bare error code: run it in chunks of max_batch
        return self._in_chunks(batch, self.max_batch, run_chunk)


def load_pte(path: str | Path) -> PteRunner:
    """Load a ``.pte`` for the CPU. XNNPACK's thread pool is process-wide:
    ``executorch.extension.pybindings.portable_lib._unsafe_reset_threadpool(n)`` sets its size."""
    p = Path(path)
    program = _load_program(p)
    meta = _program_metadata(program, p)
    method = program.load_method("forward")
    return PteRunner(
        path=p,
        format="pte",
        precision=meta.get("precision", "fp32"),
        provider="cpu",
        metadata=meta,
        method=method,
        program=program,
        max_batch=int(meta.get("max_batch", PTE_MAX_BATCH)),
    )
