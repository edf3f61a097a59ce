"""What a command takes when it is given no target, as git and cargo find theirs in the working folder.

``mnv2 train`` without ``--data`` takes ``data/`` when it holds an ImageFolder (``train/<class>/``, ``val/<class>/``);
``mnv2 export`` without a checkpoint takes the newest run under ``weights/`` (its ``best.pt``); ``bench``, ``check``,
``predict`` and ``info`` without one take the newest export folder under ``export/`` (with ``manifest.json``).
"Newest" is the latest modification of the run's ``best.pt`` or the folder's ``manifest.json``; a folder without that
file is no candidate. Torch-free, so that a command resolves (or refuses) its target before the heavy imports.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError, CheckpointError
from .layout import (
    BEST_FILE,
    DATA_DIR,
    EXPORT_DIR,
    FP16_FILE,
    INT8_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_DIR,
)

# the artifact `predict` and `info` take from an export folder: the FP32 ONNX model first (it runs everywhere as
# exported), then TorchScript, then the reduced precisions
MODEL_PREFERENCE = (ONNX_FILE, TORCHSCRIPT_FILE, INT8_FILE, FP16_FILE)


def _class_folders(split: Path) -> bool:
    return split.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in split.iterdir())


def default_data_folder(root: Path = DATA_DIR) -> Path | None:
    """``root`` when it holds an ImageFolder with its splits (``train/<class>/`` and ``val/<class>/``), else None."""
    try:
        return root if _class_folders(root / "train") and _class_folders(root / "val") else None
    except OSError:  # unreadable: no default, the command says what it needs
        return None


def _newest(files: list[Path]) -> Path | None:
    dated = []
    for f in files:
        try:
            if f.is_file():
                dated.append((f.stat().st_mtime_ns, str(f), f))
        except OSError:
            continue
    return max(dated)[2] if dated else None


def newest_run(root: Path = WEIGHTS_DIR) -> Path | None:
    """The ``best.pt`` of the run under ``root`` whose ``best.pt`` changed last, or None."""
    return _newest(list(root.glob(f"*/{BEST_FILE}"))) if root.is_dir() else None


def newest_export(root: Path = EXPORT_DIR) -> Path | None:
    """The folder under ``root`` whose ``manifest.json`` changed last, or None."""
    manifest = _newest(list(root.glob(f"*/{MANIFEST_FILE}"))) if root.is_dir() else None
    return manifest.parent if manifest else None


def require_newest_run(command: str, root: Path = WEIGHTS_DIR) -> Path:
    """:func:`newest_run`, or a :class:`CheckpointError` saying how to get one (``command``: the one asking)."""
    found = newest_run(root)
    if found is None:
        hint = f"train one with `mnv2 train`, or name a checkpoint: mnv2 {command} {root}/<run>/{BEST_FILE}"
        what = f"no checkpoint given, and no run under {root}/ holds a {BEST_FILE}"
        raise CheckpointError(what, path=root.absolute(), hint=hint)
    return found


def require_newest_export(command: str, root: Path = EXPORT_DIR) -> Path:
    """:func:`newest_export`, or an :class:`ArtifactError` saying how to get one (``command``: the one asking)."""
    found = newest_export(root)
    if found is None:
        hint = f"export one with `mnv2 export`, or name one: mnv2 {command} {root}/<run>"
        what = f"no target given, and no folder under {root}/ holds a {MANIFEST_FILE}"
        raise ArtifactError(what, path=root.absolute(), hint=hint)
    return found


def export_model_file(folder: Path) -> Path:
    """The artifact of an export folder that ``predict`` and ``info`` take: the first of :data:`MODEL_PREFERENCE` the
    folder holds, or an :class:`ArtifactError`."""
    for name in MODEL_PREFERENCE:
        if (folder / name).is_file():
            return folder / name
    raise ArtifactError(
        "the export folder holds no model file",
        path=folder,
        hint=f"export again with `mnv2 export`, or pass a model file ({', '.join(MODEL_PREFERENCE)})",
    )
