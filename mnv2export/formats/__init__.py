"""The registry of artifact formats: the one list that ``export``, ``check``, ``bench``, ``predict`` and ``info`` read.

Each format is one module behind one interface (:class:`~mnv2export.formats.base.ArtifactFormat`: export, load into a
runner for a provider, read its metadata, describe), registered here once, in the order commands list them. A new
format is a new module and one line in :data:`REGISTRY`; nothing else names formats one by one.

Adding one (``.pt2``, ``.pte``): its file name in :mod:`mnv2export.layout` (and ``ARTIFACT_FILES``); a module here
with a subclass of ``ArtifactFormat`` implementing ``export`` (calling its exporter in ``mnv2export/export/``),
``load``, ``read_metadata``, ``describe`` and ``sniff`` (filekind does not know its files), and one instance of it
(its name, kind, precision, file, family, group, ``modules``/``extra`` when it needs a package the base install
lacks); that instance in :data:`REGISTRY`, after the format it is made from.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..params import choose
from .base import ArtifactFormat, Description, ExportJob, ExportOptions
from .checkpoint import CHECKPOINT
from .executorch import PTE, PTE_INT8
from .onnx import FP16_ONNX, INT8_ONNX, ONNX
from .pt2 import PT2
from .torchscript import TORCHSCRIPT

# the order of bench rows, of an export's files and of its manifest entries
REGISTRY: tuple[ArtifactFormat, ...] = (CHECKPOINT, TORCHSCRIPT, ONNX, INT8_ONNX, FP16_ONNX, PT2, PTE, PTE_INT8)

__all__ = ["REGISTRY", "ArtifactFormat", "Description", "ExportJob", "ExportOptions", "by_file_name", "for_file"]


def names() -> tuple[str, ...]:
    """Every format's name: eager, torchscript, onnx, int8, fp16, pt2, executorch, executorch-int8 (the rows ``mnv2
    bench --formats`` takes)."""
    return tuple(f.name for f in REGISTRY)


def get(name: str) -> ArtifactFormat:
    """The format called ``name``; a :class:`ConfigError` listing them for any other."""
    for f in REGISTRY:
        if f.name == name:
            return f
    raise ConfigError(f"unknown format {name!r}", hint=f"choose one of {', '.join(names())}")


def exported() -> tuple[ArtifactFormat, ...]:
    """The formats an export writes, each with its own file name."""
    return tuple(f for f in REGISTRY if f.file)


def by_file_name(name: str) -> ArtifactFormat | None:
    """The format an export writes under the file name ``name`` (``model.int8.onnx``), or None."""
    return next((f for f in exported() if f.file == name), None)


def export_groups() -> tuple[str, ...]:
    """What ``mnv2 export --format`` takes: torchscript, onnx (each writes its formats)."""
    return tuple(dict.fromkeys(f.group for f in REGISTRY if f.group))


def parse_groups(formats) -> tuple[tuple[str, ...], bool]:
    """``"all"``, ``"onnx"``, ``"torchscript,onnx"`` or a list of those -> (the export groups, in registry order;
    whether each was named, rather than brought by ``all``)."""
    groups, named = choose(formats, export_groups(), "formats")
    return tuple(groups), named


def to_export(options: ExportOptions) -> list[ArtifactFormat]:
    """The formats an export with ``options`` writes, each after the one it is made from."""
    return [f for f in exported() if f.group in options.groups and options.switched_on(f.option)]


def for_kind(kind: str) -> ArtifactFormat:
    """The format that loads files of ``kind`` (pytorch, torchscript, onnx: every ONNX precision loads alike)."""
    return next(f for f in REGISTRY if f.kind == kind)


def for_file(path: str | Path) -> ArtifactFormat:
    """The format of the file ``path``, told by its content: a format's own sniffer first, then
    :func:`mnv2export.filekind.detect_format` (an :class:`~mnv2export.errors.ArtifactError` for any other file)."""
    from ..filekind import detect_format

    p = Path(path)
    sniffed = next((f for f in REGISTRY if p.is_file() and f.sniff(p)), None)
    return sniffed or for_kind(detect_format(p))
