"""Which file each format comes from: an artifacts folder (with ``manifest.json``) or a checkpoint.

* A folder written by ``mnv2 export``: the artifacts its manifest lists (a file of a fixed name that the manifest
  does not list belongs to no export of this folder and is not timed; a listed file whose SHA-256 differs from its
  manifest entry is an ``error`` row); eager from the checkpoint the manifest names, if it is still there and
  unchanged (same SHA-256), since speed-ups against a different model would mean nothing.
* A checkpoint: eager, plus the artifacts of ``export/<run>`` (``mnv2 export``'s default folder for it) when that
  folder's manifest says it was exported from this very checkpoint.

A format without a file is not an error: its rows say ``unavailable`` and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError, ConfigError
from ..export.names import FP16_FILE, INT8_FILE, MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE

FORMATS = ("eager", "torchscript", "onnx", "int8", "fp16")
FILES = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE, "int8": INT8_FILE, "fp16": FP16_FILE}
HOW = {"torchscript": "`mnv2 export` writes it", "onnx": "`mnv2 export` writes it", "int8": "`mnv2 export --quantize` writes it",
       "fp16": "`mnv2 export --fp16` writes it"}


@dataclass
class Sources:
    files: dict[str, Path] = field(default_factory=dict)  # format -> file to load
    missing: dict[str, str] = field(default_factory=dict)  # format -> why there is none
    errors: dict[str, str] = field(default_factory=dict)  # format -> why its file must not be timed
    folder: Path | None = None  # the artifacts folder
    checkpoint: Path | None = None


def resolve(target: str | Path) -> Sources:
    p = Path(target)
    if not p.exists():
        raise ConfigError("benchmark target not found", path=p, hint="pass an artifacts folder (with manifest.json) or a checkpoint")
    if p.is_dir():
        return _from_folder(p)
    from ..runtime import detect_format

    kind = detect_format(p)
    if kind != "pytorch":
        raise ConfigError(f"{p.name} is a single {kind} artifact", path=p,
                          hint="pass the folder holding it (with manifest.json), or the checkpoint, to compare every format")
    return _from_checkpoint(p)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ConfigError("the folder holds no manifest.json", path=folder, hint="pass a folder written by `mnv2 export`, or a checkpoint")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise ArtifactError("manifest.json is not a valid manifest", path=path, hint="export again with `mnv2 export`") from None
    return data


def _from_folder(folder: Path) -> Sources:
    from ..fileio import sha256_file

    manifest = _read_manifest(folder)
    src = Sources(folder=folder)
    _artifacts(folder, manifest, src)
    ckpt = (manifest.get("source_checkpoint") or {})
    ckpt_path = Path(ckpt["path"]) if ckpt.get("path") else None
    if ckpt_path is None:
        src.missing["eager"] = "the manifest names no source checkpoint"
    elif not ckpt_path.is_file():
        src.missing["eager"] = f"the source checkpoint {ckpt_path} is gone (pass the checkpoint itself to bench eager)"
    elif ckpt.get("sha256") and sha256_file(ckpt_path) != ckpt["sha256"]:
        src.missing["eager"] = f"{ckpt_path} changed since the export (SHA-256 differs): eager would be another model"
    else:
        src.files["eager"] = ckpt_path
        src.checkpoint = ckpt_path
    return src


def _from_checkpoint(path: Path) -> Sources:
    from ..export import default_out_dir
    from ..fileio import sha256_file

    src = Sources(checkpoint=path, files={"eager": path})
    folder = default_out_dir(path)
    if not (folder / MANIFEST_FILE).is_file():
        for fmt in FILES:
            src.missing[fmt] = f"no export of this checkpoint in {folder} (run `mnv2 export {path}`, or pass the artifacts folder)"
        return src
    manifest = _read_manifest(folder)
    if (manifest.get("source_checkpoint") or {}).get("sha256") != sha256_file(path):
        for fmt in FILES:
            src.missing[fmt] = f"{folder} was exported from another checkpoint (pass the artifacts folder itself)"
        return src
    src.folder = folder
    _artifacts(folder, manifest, src)
    return src


def _artifacts(folder: Path, manifest: dict, src: Sources) -> None:
    """The files the manifest lists, each checked against its recorded SHA-256."""
    from ..fileio import sha256_file

    for fmt, name in FILES.items():
        f, entry = folder / name, manifest["artifacts"].get(name)
        if not isinstance(entry, dict) and f.exists():
            src.missing[fmt] = f"{name} is not listed in {folder / MANIFEST_FILE}: it is left from another export, not timed"
        elif not isinstance(entry, dict):
            src.missing[fmt] = f"no {name} in {folder} ({HOW[fmt]})"
        elif not f.is_file():
            src.missing[fmt] = f"{name} is listed in the manifest but missing from {folder}"
        elif entry.get("sha256") and sha256_file(f) != entry["sha256"]:
            src.errors[fmt] = f"{name} changed since export (SHA-256 differs from manifest.json): export again"
        else:
            src.files[fmt] = f
