"""AOTInductor package (``model.pt2``): torch.export of the BatchNorm-folded model with a dynamic batch, compiled
ahead of time for one device (:mod:`mnv2export.export.pt2` writes and loads it), the metadata inside the package.
It runs only on the device it was compiled for: asked for another, the provider is unavailable, in one line."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from ..errors import ProviderUnavailable
from ..layout import PT2_FILE
from ..runtime.metadata import check_metadata
from .base import ArtifactFormat, ExportJob
from .checkpoint import torch_device


class Pt2Format(ArtifactFormat):
    def unavailable(self) -> str | None:
        """AOTInductor compiles C++ at export time: $CXX, else g++ (torch's own default), must be on PATH."""
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            return (
                f"the pt2 format needs a C++ compiler at export time and {cxx} is not on PATH: install one or set $CXX"
            )
        return super().unavailable()

    def export(self, job: ExportJob, out: Path) -> dict[str, Any]:
        from ..export.pt2 import export_pt2

        check_on = (job.inputs, job.reference)
        return export_pt2(
            job.folded, job.example, job.metadata(self), out, device=job.options.device, check_on=check_on
        )

    def load(self, path: Path, provider: str, *, threads: int | None = None, cuda_graph: bool = False) -> Any:
        from ..export.pt2 import load_pt2

        meta = self.read_metadata(path)
        built_for = meta.get("device", "cpu")
        if provider != built_for:
            raise ProviderUnavailable(
                f"the .pt2 package was compiled for {built_for} and cannot run on {provider}",
                path=path,
                hint=f"run it with {{providers}} {built_for}, or export it again with {{device}} {provider}",
            )
        torch_device(provider, threads, path)  # CUDA present (else ProviderUnavailable), torch's threads set
        runner = load_pt2(path, device=provider)
        runner.metadata = meta  # checked as every format's is
        return runner

    def read_metadata(self, path: Path) -> dict[str, Any]:
        from ..export.pt2 import read_pt2_metadata

        return check_metadata(read_pt2_metadata(path), path, self.kind)

    def sniff(self, path: Path) -> bool:
        if not zipfile.is_zipfile(path):
            return False
        try:
            return any(n.endswith(".wrapper_metadata.json") for n in zipfile.ZipFile(path).namelist())
        except (zipfile.BadZipFile, OSError):
            return False


PT2 = Pt2Format(
    name="pt2",
    kind="pt2",
    precision="fp32",
    file=PT2_FILE,
    group="pt2",
    exporter="torch.export + AOTInductor",
    benched_when_absent=False,
)
