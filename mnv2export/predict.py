"""``predict(images, model) -> PredictResult``: classify image files with any artifact.

The artifact (a checkpoint, TorchScript file or ONNX model, FP32 / INT8 / FP16) brings its own preprocessing
(resize, centre crop, mean / std, interpolation) and class names in its metadata, so nothing else is needed: a
TorchScript or ONNX file works alone, without the checkpoint it came from.

When the model sits in a folder written by ``mnv2 export`` (a ``manifest.json`` beside it), the file is compared with
its manifest entry: a file the manifest does not list, or whose SHA-256 differs from it, is not what ``mnv2 check``
vouched for, and ``warnings`` says so (it is still run: a TorchScript or ONNX file alone is a valid model).

Inputs are image files and folders (searched recursively for image files by extension; hidden files are left out).
An image that cannot be read (missing, empty, corrupt, not an image) is named in ``skipped`` with the reason and the
others are still classified. When no image at all can be classified, :class:`~mnv2export.errors.DataError`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .params import check_int

MAX_TOP_K = 1000
log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    top: list[dict[str, Any]]  # [{"class": name, "index": i, "probability": p}, ...], most likely first

    @property
    def label(self) -> str:
        return self.top[0]["class"]


@dataclass
class PredictResult:
    model: str
    format: str
    precision: str
    provider: str
    top_k: int
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"path": ..., "reason": ...}]
    warnings: list[str] = field(default_factory=list)  # about the model file (see manifest_problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "format": self.format,
            "precision": self.precision,
            "provider": self.provider,
            "top_k": self.top_k,
            "predictions": [{"path": p.path, "top": p.top} for p in self.predictions],
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def manifest_problem(model: Path) -> str | None:
    """Why the exported artifact ``model`` (not a checkpoint: manifests list what was exported from one) is not the
    file the ``manifest.json`` beside it records, or None (also when there is no manifest: a file on its own)."""
    from .errors import ArtifactError
    from .fileio import sha256_file
    from .layout import MANIFEST_FILE
    from .manifest import changed_since_export, parse_manifest

    manifest = model.parent / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        entry = parse_manifest(manifest)["artifacts"].get(model.name)
    except ArtifactError:
        return f"{manifest} is not a readable manifest: {model.name} could not be compared with its export record"
    if not isinstance(entry, dict):
        return (
            f"{model.name} is not listed in {manifest}: it is not from the export that folder records "
            "(left from another export?), and `mnv2 check` of that folder does not cover it"
        )
    changed = changed_since_export(entry, model, sha256_file(model))  # what `mnv2 check` finds, in its words
    return (
        f"{model.name} {changed}: it is not the file `mnv2 check` verified; export again, or check it again"
        if changed
        else None
    )


def collect_images(inputs: list[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Image files named or found (recursively) in folders, in order; and the inputs that hold no image."""
    from .images import find_images

    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = find_images(p)
            if not found:
                skipped.append({"path": str(p), "reason": "folder holds no image files"})
            files += found
        elif p.exists():
            files.append(p)  # named explicitly: tried whatever its extension, named if unreadable
        else:
            skipped.append({"path": str(p), "reason": "file not found"})
    return files, skipped


def percent(p: float) -> str:
    """A probability as text for a person, 7 characters: ``  93.10%``; a non-finite one (a model whose weights or
    inputs gave NaN logits) is ``    nan`` (JSON output says ``null``)."""
    return f"{p:7.2%}" if math.isfinite(p) else f"{str(p).lower():>7}"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(
    images: list[str | Path],
    model: str | Path,
    *,
    provider: str = "cpu",
    top_k: int = 5,
    batch_size: int = 32,
    threads: int | None = None,
) -> PredictResult:
    """Classify ``images`` (files or folders) with the artifact ``model`` on ``provider`` (cpu, cuda)."""
    from .formats import for_kind
    from .runtime import load_artifact

    files, skipped = _inputs(images, model, top_k, batch_size)
    from .device import warn_if_oversubscribed

    warn_if_oversubscribed(threads)
    runner = load_artifact(model, provider, threads=threads)
    result = PredictResult(
        model=str(model),
        format=runner.format,
        precision=runner.precision,
        provider=runner.provider,
        top_k=min(top_k, len(runner.class_names)),
        skipped=skipped,
    )
    if for_kind(runner.format).file and (problem := manifest_problem(Path(model))):  # an exported file
        log.warning("%s", problem)
        result.warnings.append(problem)
    for start in range(0, len(files), batch_size):
        _classify(runner, files[start : start + batch_size], result)
    if not result.predictions:
        first = result.skipped[0]
        raise DataError(
            f"none of the {len(files)} image(s) could be read (first: {first['path']}: {first['reason']})",
            hint="pass image files Pillow can decode (.jpg, .png, ...)",
        )
    return result


def _inputs(images, model, top_k: int, batch_size: int) -> tuple[list[Path], list[dict[str, str]]]:
    """The options checked and the image files found, before torch or ONNX Runtime is imported: a wrong path or an
    empty folder is said at once."""
    from .fileio import require_artifact_file

    check_int("top_k", top_k, 1, MAX_TOP_K)
    check_int("batch_size", batch_size, 1)
    if not images:
        raise ConfigError("no images given", hint="pass image files or folders: mnv2 predict IMAGE... --model ARTIFACT")
    require_artifact_file(model)
    files, skipped = collect_images(images)
    if not files:
        reasons = sorted({s["reason"] for s in skipped})
        what = "not found" if reasons == ["file not found"] else "no image files found"
        raise DataError(
            what, path=", ".join(map(str, images)), hint="pass image files (.jpg, .png, ...) or folders holding them"
        )
    return files, skipped


def _classify(runner, files: list[Path], result: PredictResult) -> None:
    """One batch of ``files`` through ``runner``: its top-k predictions, and the images that could not be read."""
    from .runtime import preprocess

    names = runner.class_names
    batch, kept, errors = preprocess(files, runner.metadata)
    result.skipped += [{"path": e.path, "reason": e.reason} for e in errors]
    if not kept:
        return
    probs = softmax(runner.run(batch))
    order = np.argsort(-probs, axis=1, kind="stable")[:, : result.top_k]
    for path, row, idx in zip(kept, probs, order):
        result.predictions.append(
            Prediction(path, [{"class": names[i], "index": int(i), "probability": float(row[i])} for i in idx])
        )
