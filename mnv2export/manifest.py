"""``manifest.json``, as ``check``, ``bench`` and ``predict`` read it: its structure checked once
(:func:`parse_manifest`), whether a file on disk is the one an entry records (:func:`changed_since_export`), and the
checkpoint the artifacts came from, if it is still there and unchanged (:func:`source_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ArtifactError


def parse_manifest(path: Path, hint: str = "export again with `mnv2 export`") -> dict[str, Any]:
    """``manifest.json`` read and its structure checked, for every command that reads one (``check``, ``bench``): what
    they look up has the type an export writes, so a hand-edited manifest is one :class:`ArtifactError`,
    ``manifest.json is not a valid manifest (<what is wrong>)``, never a crash inside the command. A missing size or
    hash is no structural fault: the artifact's row fails (:func:`changed_since_export`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(
            f"manifest.json cannot be read ({exc.strerror or type(exc).__name__})", path=path, hint=hint
        ) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        problem = "not JSON"
    else:
        problem = manifest_problem(data)
    if problem:
        raise ArtifactError(f"manifest.json is not a valid manifest ({problem})", path=path, hint=hint)
    return data


# the fields of a manifest that commands read, and the JSON type each must have where it is given (null: not given)
_ENTRY_TYPES = {"size_bytes": int, "sha256": str, "format": str, "precision": str}
_SOURCE_TYPES = {"path": str, "sha256": str}


def manifest_problem(data: Any) -> str | None:
    """What makes ``data`` (a parsed manifest.json) structurally invalid, in words, or None."""
    if not isinstance(data, dict):
        return f"{_json_type(data)} at the top, not an object"
    artifacts = data.get("artifacts")
    if not isinstance(artifacts, dict):
        return (
            'no "artifacts" object' if artifacts is None else f'"artifacts" is {_json_type(artifacts)}, not an object'
        )
    for name, entry in artifacts.items():
        if not name or name in (".", "..") or "/" in name or "\\" in name:  # check and bench open folder / name
            return f"artifact name {name!r} is not a file name"
        if not isinstance(entry, dict):
            return f"artifacts[{name!r}] is {_json_type(entry)}, not an object"
        if bad := _wrong_type(entry, _ENTRY_TYPES):
            return f"artifacts[{name!r}][{bad!r}] is {_json_type(entry[bad])}, not {_json_name(_ENTRY_TYPES[bad])}"
    source = data.get("source_checkpoint")
    if source is not None and not isinstance(source, dict):
        return f'"source_checkpoint" is {_json_type(source)}, not an object'
    if source and (bad := _wrong_type(source, _SOURCE_TYPES)):
        return f"source_checkpoint[{bad!r}] is {_json_type(source[bad])}, not {_json_name(_SOURCE_TYPES[bad])}"
    return None


def _wrong_type(entry: dict[str, Any], types: dict[str, type]) -> str | None:
    return next(
        (
            k
            for k, t in types.items()
            if entry.get(k) is not None and (not isinstance(entry[k], t) or (t is int and isinstance(entry[k], bool)))
        ),
        None,
    )


def _json_name(t: type) -> str:
    return {int: "a whole number", str: "a string"}[t]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return {type(None): "null", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def changed_since_export(entry: dict[str, Any], path: Path, sha: str) -> str | None:
    """Why the file on disk is not the one the manifest records (size, then sha256), or None."""
    size = path.stat().st_size
    if entry.get("size_bytes") != size:
        return f"changed since export: size_bytes {entry.get('size_bytes')} in manifest.json, {size} on disk"
    if entry.get("sha256") != sha:
        return f"changed since export: sha256 {short_hash(entry.get('sha256'))} in manifest.json, {short_hash(sha)} on disk"
    return None


def short_hash(sha: Any) -> str:
    return sha[:12] if isinstance(sha, str) and sha else repr(sha)


def source_checkpoint(manifest: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The checkpoint that ``manifest`` (parsed) records as its artifacts' source: ``(path, None)`` if that file is
    still there with the SHA-256 recorded at export, else ``(None, why not)``. ``check`` and ``bench`` take it as the
    reference model of an artifacts folder passed alone; a comparison with any other model would mean nothing."""
    from .fileio import sha256_file

    source = manifest.get("source_checkpoint") or {}
    if not source.get("path"):
        return None, "manifest.json names no source checkpoint"
    path = Path(source["path"])
    if not path.is_file():
        return None, f"the source checkpoint {path} is gone"
    if not source.get("sha256"):
        return None, f"manifest.json records no SHA-256 of the source checkpoint {path}"
    if sha256_file(path) != source["sha256"]:
        return None, f"the source checkpoint {path} changed since the export (SHA-256 differs)"
    return path, None
