"""ExecuTorch programs (``model.pte``, ``model.int8.pte``) with the XNNPACK delegate, for phones and CPUs
(:mod:`mnv2export.export.executorch` writes and loads them): FP32, and INT8 from torchao's PT2E flow with ExecuTorch's
XNNPACKQuantizer (symmetric, per-channel) calibrated on the images the ONNX INT8 model is. They need the ``mobile``
extra; ExecuTorch's Python runtime runs them on the CPU only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ProviderUnavailable
from ..layout import PTE_FILE, PTE_INT8_FILE
from ..runtime.metadata import check_metadata
from .base import ArtifactFormat, ExportJob

PTE_IDENTIFIER = b"ET"  # the flatbuffer file identifier (bytes 4-8: ET12...) starts so


class PteFormat(ArtifactFormat):
    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        from ..export.executorch import export_pte

        return export_pte(job.folded, job.example, job.metadata(self), out)

    def load(self, path: Path, provider: str, *, threads: int | None = None, cuda_graph: bool = False) -> Any:
        if provider != "cpu":
            raise ProviderUnavailable(
                f"ExecuTorch programs run on the CPU (XNNPACK), not on {provider}",
                path=path,
                hint="run it with {providers} cpu",
            )
        from ..export.executorch import load_pte, require_executorch

        require_executorch()
        if threads is not None:  # XNNPACK's thread pool is process-wide
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        runner = load_pte(path)
        runner.metadata = check_metadata(runner.metadata, path, self.kind)  # checked as every format's is
        return runner

    def read_metadata(self, path: Path) -> dict[str, Any]:
        from ..export.executorch import read_pte_metadata

        return check_metadata(read_pte_metadata(path), path, self.kind)

    def sniff(self, path: Path) -> bool:
        with open(path, "rb") as fh:
            return fh.read(8)[4:6] == PTE_IDENTIFIER


class PteInt8Format(PteFormat):
    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        import torch

        from ..export.executorch import export_pte_int8

        images = torch.from_numpy(job.calib.images)
        settings = export_pte_int8(job.folded, images, job.metadata(self), out)
        return {**settings, "calibration_data": job.calib.source}


_PTE = {
    "kind": "pte",
    "family": "executorch",
    "group": "executorch",
    "modules": ("executorch",),
    "extra": "mobile",
    "benched_when_absent": False,
}
PTE = PteFormat(name="executorch", precision="fp32", file=PTE_FILE, exporter="ExecuTorch (XNNPACK)", **_PTE)
PTE_INT8 = PteInt8Format(
    name="executorch-int8",
    precision="int8",
    file=PTE_INT8_FILE,
    option="quantize",
    after="executorch",
    exporter="ExecuTorch (XNNPACK, PT2E XNNPACKQuantizer per-channel)",
    **_PTE,
)
