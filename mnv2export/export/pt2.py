"""PyTorch 2 AOTInductor package (``.pt2``): torch.export of the BatchNorm-folded model with a dynamic batch, compiled
ahead of time to a shared library by AOTInductor (weights frozen into it), the metadata inside the package.

Where the metadata lives: AOTInductor's own ``aot_inductor.metadata`` option (a ``dict[str, str]`` compiled into the
library and written as ``data/aotinductor/model/*_metadata.json`` in the zip). Our JSON is its ``mnv2_metadata``
value, beside AOTInductor's keys (``AOTI_DEVICE_KEY``: ``cpu`` or ``cuda``, ``AOTI_CPU_ISA``...). A user reads it with
torch alone::

    import json, torch
    model = torch._inductor.aoti_load_package("model.pt2")
    meta = json.loads(model.get_metadata()["mnv2_metadata"])
    logits = model(torch.randn(1, *meta["input_size"]))

or, without loading the library, with ``zipfile`` (the ``*.wrapper_metadata.json`` entry, a JSON object of strings).

Batch: dynamic from 1 to ``max_batch`` (default :data:`PT2_MAX_BATCH`). The compiled code does not check it, so the
runner runs a larger batch in chunks of ``max_batch``. A package runs only on the device kind it was compiled for
(CPU code is also specific to the ISA it was compiled on, ``AOTI_CPU_ISA``), and needs the same torch version.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError, ExportError, first_line
from ..runtime.runners import Runner

log = logging.getLogger(__name__)

PT2_METADATA_KEY = "mnv2_metadata"  # our JSON's key in AOTInductor's metadata dict
PT2_MAX_BATCH = 256  # 256 x 96 x 112 x 112 (the largest activation at 224 px) stays under int32 indexing
PT2_METHOD = "torch.export + AOTInductor (freezing, eval, BatchNorm folded)"
DEVICE_KEY = "AOTI_DEVICE_KEY"  # AOTInductor's record of the device the library was compiled for


def check_compiler() -> str:
    """The C++ compiler AOTInductor will call (``$CXX`` or ``g++``, torch's own search); ConfigError when none runs."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise ConfigError(
            "AOTInductor needs a C++ compiler and none was found (g++, or $CXX)",
            hint="install one (apt-get install g++) or point $CXX at it",
        ) from None


def export_pt2(
    folded_model,
    example_batch,
    metadata: dict[str, Any],
    out_path: str | Path,
    device: str = "cpu",
    *,
    max_batch: int = PT2_MAX_BATCH,
    check_on: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Compile ``folded_model`` (eval, BatchNorm folded) for ``device`` into ``out_path`` with ``metadata`` inside;
    returns the manifest's ``export_settings``. ``example_batch`` needs 2 images or more (export specialises a size 1)."""
    import torch

    from ..device import resolve_device
    from ..fileio import json_text
    from .onnx import out_of_place

    if example_batch.shape[0] < 2 or example_batch.shape[0] > max_batch:
        raise ValueError(f"the example batch needs 2 to {max_batch} images for a dynamic batch axis")
    compiler = check_compiler()  # before seconds of tracing: a missing compiler fails only at the end
    dev = resolve_device(device)
    out = Path(out_path)
    meta = {**metadata, "device": dev.type, "max_batch": max_batch}
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    t0 = time.perf_counter()
    # a copy on the GPU: the caller's model stays on the CPU
    model = folded_model.eval() if dev.type == "cpu" else copy.deepcopy(folded_model).eval().to(dev)
    try:
        with out_of_place(model), torch.no_grad():
            program = torch.export.export(model, (example_batch.to(dev),), dynamic_shapes=({0: batch},))
        configs = {
            "freezing": True,
            # the thread count read at run time, not the export's own (one thread, which left every loop serial)
            "cpp.dynamic_threads": True,
            "aot_inductor.metadata": {PT2_METADATA_KEY: json_text(meta, indent=None)},
        }
        # inductor_configs is applied as a config patch for this call only (torch's global config stays); the package
        # path must end in .pt2, which an export's temporary file name does not: written beside it, then renamed
        package = out if out.suffix == ".pt2" else out.with_name(out.name + ".pt2")
        torch._inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs=configs)
    except Exception as exc:  # noqa: BLE001 - torch.export / inductor / the compiler raise many types
        raise ExportError(
            f"AOTInductor compilation failed: {first_line(exc)}", path=out, hint="report it with MNV2_DEBUG=1"
        ) from exc
    seconds = time.perf_counter() - t0
    log.info("pt2: compiled for %s in %.1f s with %s", dev.type, seconds, compiler)
    checked = _check_package(package, *check_on) if check_on is not None and dev.type == "cpu" else {}
    if package != out:
        os.replace(package, out)
    return {
        **checked,
        "method": PT2_METHOD,
        "device": dev.type,
        "dynamic_batch": {"min": 1, "max": max_batch},
        "compile_seconds": round(seconds, 3),
        "torch": torch.__version__,
    }


def _check_package(package: Path, inputs, reference) -> dict[str, float]:
    """The CPU package run on ``inputs`` against the folded model's ``reference`` logits (an ExportError past 1e-4,
    scaled by the logits' size); a CUDA package is checked where it runs (`mnv2 check --provider cuda`)."""
    diff = float(np.abs(load_pt2(package)(inputs.numpy()) - reference.numpy()).max())
    if not diff <= 1e-4 * max(1.0, float(reference.abs().max())):
        raise ExportError(f"the .pt2 answers differently from the model (max abs diff {diff:.3g})", path=package)
    return {"max_abs_diff_vs_pytorch": diff}


def _package_metadata(p: Path) -> dict[str, str]:
    """AOTInductor's metadata dict, read from the zip (no library loaded, so also for another device's package)."""
    try:
        with zipfile.ZipFile(p) as z:
            entry = next((n for n in z.namelist() if n.endswith(".wrapper_metadata.json")), None)
            raw = z.read(entry) if entry else None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(
            f"not a readable .pt2 package ({type(exc).__name__})", path=p, hint="export it again"
        ) from None
    if raw is None:
        raise ArtifactError("not an AOTInductor package (no compiled model inside)", path=p, hint="export it again")
    return json.loads(raw)


def read_pt2_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata JSON the package carries (plus ``device`` from AOTInductor's record if ours lacks it)."""
    p = Path(path)
    aoti = _package_metadata(p)
    try:
        meta = json.loads(aoti[PT2_METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ArtifactError(
            "the .pt2 package carries no mnv2export metadata", path=p, hint="export it with mnv2export"
        ) from None
    if not isinstance(meta, dict):
        raise ArtifactError("the .pt2 metadata is not a JSON object", path=p, hint="export it again")
    meta.setdefault("device", aoti.get(DEVICE_KEY))
    return meta


@dataclass
class Pt2Runner(Runner):
    """A loaded ``.pt2``: float32 NCHW numpy in, float32 logits out, batch 1 to ``max_batch``."""

    model: Any = field(default=None, repr=False)  # torch's AOTICompiledModel
    device: Any = None  # torch.device
    max_batch: int = PT2_MAX_BATCH

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        def run_chunk(chunk: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return self.model(torch.from_numpy(chunk).to(self.device)).float().cpu().numpy()

        # the compiled code does not check its batch range: a larger batch runs in chunks of max_batch
        return self._in_chunks(batch, self.max_batch, run_chunk)


def load_pt2(path: str | Path, device: str = "cpu") -> Pt2Runner:
    """Load a ``.pt2`` to run on ``device`` (``cpu`` or ``cuda``); ArtifactError when it was compiled for another."""
    import torch

    from ..device import resolve_device

    p = Path(path)
    meta = read_pt2_metadata(p)
    built_for, wanted = meta["device"], torch.device(device).type
    if built_for != wanted:
        raise ArtifactError(
            f"the .pt2 package was compiled for {built_for} and cannot run on {wanted}",
            path=p,
            hint=f"run it on {built_for}, or export it again with device={wanted!r}",
        )
    dev = resolve_device(wanted)
    try:
        model = torch._inductor.aoti_load_package(str(p))
    except RuntimeError as exc:
        raise ArtifactError(
            f".pt2 package cannot be loaded: {first_line(exc)}", path=p, hint="export it again with this torch"
        ) from None
    precision = meta.get("precision", "fp32")
    return Pt2Runner(
        path=p,
        format="pt2",
        precision=precision,
        provider=dev.type,
        metadata=meta,
        model=model,
        device=dev,
        max_batch=int(meta.get("max_batch", PT2_MAX_BATCH)),
    )
