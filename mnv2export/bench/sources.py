"""Which file each format comes from: an artifacts folder (with ``manifest.json``) or a checkpoint.

* A folder written by ``mnv2 export``: the artifacts its manifest lists (a file of a fixed name that the manifest
  does not list belongs to no export of this folder and is not timed; a listed file whose size or SHA-256 differs
  from its manifest entry, or whose entry records neither, is an ``error`` row, as in ``mnv2 check``); eager from the
  checkpoint the manifest names, if it is still there and unchanged (same SHA-256), since speed-ups against a
  different model would mean nothing. A manifest of the wrong structure is an error (``manifest.parse_manifest``).
* A checkpoint: loaded (and so validated) before anything is timed; eager, plus the artifacts of ``export/<run>``
  (``mnv2 export``'s default folder for it) when that folder's manifest says it was exported from this very checkpoint.

A format without a file is not an error: its rows say ``unavailable`` and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError, ConfigError
from ..formats import REGISTRY, exported
from ..layout import MANIFEST_FILE

FORMATS = tuple(f.name for f in REGISTRY)  # the rows: eager, torchscript, onnx, int8, fp16
FILES = {f.name: f.file for f in exported()}  # the exported formats' files
HOW = {f.name: f.how for f in exported()}


@dataclass
class Sources:
    files: dict[str, Path] = field(default_factory=dict)  # format -> file to load
    missing: dict[str, str] = field(default_factory=dict)  # format -> why there is none
    errors: dict[str, str] = field(default_factory=dict)  # format -> why its file must not be timed
    entries: dict[str, dict] = field(default_factory=dict)  # format -> its manifest entry (size, export seconds)
    folder: Path | None = None  # the artifacts folder
    checkpoint: Path | None = None


def resolve(target: str | Path) -> Sources:
    p = Path(target)
    if not p.exists():
        raise ConfigError(
            "benchmark target not found", path=p, hint="pass an artifacts folder (with manifest.json) or a checkpoint"
        )
    if p.is_dir():
        return _from_folder(p)
    from ..filekind import detect_format

    hint = "pass an artifacts folder (with manifest.json) or a checkpoint"
    try:
        kind = detect_format(p)
    except ArtifactError as exc:  # not a model at all: say what it is not, with bench's own advice
        raise ArtifactError(exc.what, path=exc.path, hint=hint) from None
    if kind != "pytorch":
        raise ConfigError(
            f"{p.name} is a single {kind} artifact",
            path=p,
            hint="pass the folder holding it (with manifest.json), or the checkpoint, to compare every format",
        )
    from ..checkpoint import load_checkpoint  # torch: after the refusal above, which an ONNX-only install may meet

    ckpt = load_checkpoint(p)  # before any timing: a bare state dict or a pickled object is one line, not a table
    return _from_checkpoint(p, ckpt.sha256)


def _read_manifest(folder: Path) -> dict:
    from ..fileio import CHECKPOINT_HINT, checkpoint_hint
    from ..manifest import parse_manifest

    path = folder / MANIFEST_FILE
    if not path.is_file():
        hint = checkpoint_hint(folder)
        raise ConfigError(
            "the folder holds no manifest.json",
            path=folder,
            hint="pass a folder written by `mnv2 export`, or a checkpoint" if hint == CHECKPOINT_HINT else hint,
        )
    return parse_manifest(path)


def _from_folder(folder: Path) -> Sources:
    from ..manifest import source_checkpoint

    manifest = _read_manifest(folder)
    src = Sources(folder=folder)
    _artifacts(folder, manifest, src)
    ckpt_path, why = source_checkpoint(manifest)
    if ckpt_path is None:
        src.missing["eager"] = (
            f"{why}: eager would time another model or none (pass the checkpoint itself to bench eager)"
        )
    else:
        src.files["eager"] = ckpt_path
        src.checkpoint = ckpt_path
    return src


def _from_checkpoint(path: Path, sha256: str | None) -> Sources:
    from ..export import default_out_dir

    src = Sources(checkpoint=path, files={"eager": path})
    folder = default_out_dir(path)
    if not (folder / MANIFEST_FILE).is_file():
        for fmt in FILES:
            src.missing[fmt] = (
                f"no export of this checkpoint in {folder} (run `mnv2 export {path}`, or pass the artifacts folder)"
            )
        return src
    manifest = _read_manifest(folder)
    if (manifest.get("source_checkpoint") or {}).get("sha256") != sha256:
        for fmt in FILES:
            src.missing[fmt] = f"{folder} was exported from another checkpoint (pass the artifacts folder itself)"
        return src
    src.folder = folder
    _artifacts(folder, manifest, src)
    return src


def _artifacts(folder: Path, manifest: dict, src: Sources) -> None:
    """The files the manifest lists, each checked against its recorded size and SHA-256 as ``mnv2 check`` checks them
    (an entry without them fails: nothing says the file is the one exported)."""
    from ..fileio import sha256_file
    from ..manifest import changed_since_export

    for fmt, name in FILES.items():
        f, entry = folder / name, manifest["artifacts"].get(name)
        if entry is None and f.exists():
            src.missing[fmt] = (
                f"{name} is not listed in {folder / MANIFEST_FILE}: it is left from another export, not timed"
            )
        elif entry is None:
            src.missing[fmt] = f"no {name} in {folder} ({HOW[fmt]})"
        elif not f.is_file():
            src.missing[fmt] = f"{name} is listed in the manifest but missing from {folder}"
        elif changed := changed_since_export(entry, f, sha256_file(f)):
            src.errors[fmt] = f"{name} {changed}; export again"
        else:
            src.files[fmt], src.entries[fmt] = f, entry
