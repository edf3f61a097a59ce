"""The one safe ``torch.load``: ``weights_only=True`` on a file that was checked first, every failure a
:class:`CheckpointError` that says what the file is. Checkpoints (:mod:`mnv2export.checkpoint`) and initial weights
(:func:`mnv2export.model.load_pretrained`) both read through it, once per path; it sits below both.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import ArtifactError, CheckpointError, Mnv2Error
from .fileio import text_kind
from .filekind import detect_format
from .layout import MANIFEST_FILE
from .manifest import parse_manifest

log = logging.getLogger(__name__)


def torch_load_safely(p: Path, what: str, hint: str) -> Any:
    """``torch.load(weights_only=True)`` of an existing, non-empty file, every failure a :class:`CheckpointError`
    that starts with ``what`` (``checkpoint``, ``initial weights file``): a text file named as such, a pickled object
    (a GLOBAL: code to import) refused as one, anything else unreadable."""
    kind = text_kind(p)
    if kind:
        raise CheckpointError(
            f"file is {kind}, not a torch {'checkpoint' if what == 'checkpoint' else 'file'}", path=p, hint=hint
        )
    _refuse_artifact(p, what, hint)
    try:
        with (
            warnings.catch_warnings()
        ):  # a plain pickle (not torch.save's) draws a protocol warning before the error below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # a class or function to import (GLOBAL): what weights_only exists to refuse
            raise CheckpointError(
                f"{what} carries a pickled Python object and is refused (loading it could run code)",
                path=p,
                hint="re-save it with tensors and primitives only"
                + (", or re-train with `mnv2 train`" if what == "checkpoint" else ""),
            ) from None
        raise CheckpointError(
            f"{what} is not a readable torch file (truncated or corrupt)", path=p, hint=hint
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes torch.load raise almost any type (KeyError, EOFError, ...)
        log.debug("torch.load failed: %r", exc)
        raise CheckpointError(
            f"{what} is not a readable torch file (truncated or corrupt)", path=p, hint=hint
        ) from None


def _refuse_artifact(p: Path, what: str, hint: str) -> None:
    """An exported TorchScript or ONNX file passed where a checkpoint (or weights) belongs, said as such, before
    ``torch.load`` (which would warn and dispatch a TorchScript archive to ``torch.jit.load``, then fail as if the file
    were corrupt). The formats are told apart by :func:`mnv2export.filekind.detect_format`; a file it cannot place is
    left to ``torch.load``, whose failure says the rest (corrupt, pickled object, legacy format)."""
    try:
        kind = detect_format(p)
    except ArtifactError:
        return
    if kind == "pytorch":
        return
    name = {"torchscript": "a TorchScript", "onnx": "an ONNX"}.get(kind, f"a {kind}")
    if what == "checkpoint":
        source = _exported_from(p)
        hint = (
            f"pass the checkpoint it was exported from ({source}, as its manifest.json says)"
            if source
            else "pass the checkpoint it was exported from (the best.pt that the export's manifest.json names)"
        )
    raise CheckpointError(
        f"file is {name} artifact, not a {'checkpoint' if what == 'checkpoint' else 'state dict'}", path=p, hint=hint
    )


def _exported_from(p: Path) -> str | None:
    """The source checkpoint that the manifest.json beside ``p`` records for it, if that manifest lists ``p``."""
    if not (p.parent / MANIFEST_FILE).is_file():
        return None
    try:
        manifest = parse_manifest(p.parent / MANIFEST_FILE)
    except Mnv2Error:
        return None
    path = (manifest.get("source_checkpoint") or {}).get("path")
    return path if p.name in manifest["artifacts"] and path else None


def refuse_non_finite(state: dict[str, torch.Tensor], what: str, p: Path, hint: str) -> None:
    """A :class:`CheckpointError` naming the first tensor of ``state`` that holds NaN or infinite values, and how many:
    such weights give NaN logits, which later steps would blame on something else (BatchNorm folding, the learning
    rate)."""
    counts = {
        name: int((~torch.isfinite(v)).sum()) for name, v in state.items() if v.is_floating_point() or v.is_complex()
    }
    bad = [(name, n) for name, n in counts.items() if n]
    if not bad:
        return
    (name, n), rest = bad[0], bad[1:]
    more = (
        f" (and {sum(k for _, k in rest):,} in {len(rest)} other tensor{'s' if len(rest) != 1 else ''})" if rest else ""
    )
    raise CheckpointError(
        f"{what} are not finite: {n:,} NaN or infinite value{'s' if n != 1 else ''} in {name}{more}", path=p, hint=hint
    )
