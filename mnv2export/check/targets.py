"""What ``check`` compares: its target (a checkpoint, or an artifacts folder and the checkpoint its manifest names),
the providers asked for, the artifacts ``manifest.json`` lists, each loaded for a provider, and what each artifact's
own metadata says against the manifest and the checkpoint. Light at import: no torch, no onnxruntime."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, CheckpointError, ConfigError, Mnv2Error, ProviderUnavailable
from ..fileio import json_text
from ..layout import ARTIFACT_FILES
from ..manifest import changed_since_export, parse_manifest, short_hash, source_checkpoint
from ..params import ALL, choose, split_items
from ..runtime.runners import CHECKED_PROVIDERS, NO_GPU_HINT
from .report import ParityRow, Tolerance

PROVIDERS = CHECKED_PROVIDERS
PROVIDER_CHOICES = (*PROVIDERS, ALL)
# what `mnv2 export` writes (.pt, .onnx, .pt2, .pte); manifest.json and check outputs are not artifacts
ARTIFACT_SUFFIXES = tuple(sorted({Path(name).suffix for name in ARTIFACT_FILES}))
# metadata an artifact must agree on with its checkpoint (a consumer outside mnv2export reads the top-level keys)
_META_KEYS = ("class_names", "input_size", "mean", "std", "resize_size", "interpolation")
_PROVIDER_HINT = f"{NO_GPU_HINT} ({{providers}} all reports CUDA rows as unavailable where CUDA cannot be had)"


def parse_providers(providers: Any) -> list[tuple[str, bool]]:
    """``"all"``, ``"cpu,cuda"`` or a sequence -> [(provider, explicit)]; ``all`` asks for CUDA only where it exists."""
    choose(providers, PROVIDERS, "providers")  # an unknown provider, or none, is a ConfigError
    explicit: dict[str, bool] = {}  # in the order named: the rows, and the pipeline's providers, follow it
    for item in split_items(providers, "providers"):
        for name in PROVIDERS if item == ALL else (item,):
            explicit[name] = explicit.get(name, False) or item != ALL or name == "cpu"
    return list(explicit.items())


def resolve_target(target: str | Path, artifacts_dir: str | Path | None) -> tuple[Path, str | Path | None]:
    """The checkpoint and artifacts folder that ``check``'s target names: a checkpoint file as it is (with
    ``artifacts_dir``); an artifacts folder, with the checkpoint its manifest records as the source (the same file,
    by SHA-256). Light: no torch, so that a wrong target is an error at once."""
    from ..fileio import CHECKPOINT_HINT, checkpoint_hint
    from ..layout import MANIFEST_FILE

    p = Path(target)
    if not p.is_dir():
        return p, artifacts_dir
    if not (p / MANIFEST_FILE).is_file():
        hint = checkpoint_hint(p)
        raise CheckpointError(
            "checkpoint path is a folder without manifest.json",
            path=p,
            hint=hint if hint != CHECKPOINT_HINT else f"{hint}, or a folder written by `mnv2 export`",
        )
    if artifacts_dir is not None:
        raise ConfigError(
            "two artifacts folders: the target and {artifacts_dir}",
            path=p,
            hint="pass the checkpoint with {artifacts_dir} DIR, or the artifacts folder alone",
        )
    source, why = source_checkpoint(parse_manifest(p / MANIFEST_FILE))
    if source is None:
        raise ArtifactError(
            f"no reference model for this folder: {why}",
            path=p,
            hint=f"pass the checkpoint it was exported from, with {{artifacts_dir}} {p}",
        )
    return source, p


def read_manifest(out_dir: Path, default: bool, ckpt) -> tuple[dict[str, dict[str, Any]], bool]:
    """The manifest's artifacts (file name -> entry) and whether it names another source checkpoint than ``ckpt``."""
    from ..layout import MANIFEST_FILE

    how = f"run `mnv2 export {ckpt.path}{'' if default else f' --out {out_dir}'}` first, or pass {{artifacts_dir}} DIR"
    if not out_dir.exists():
        raise ArtifactError(
            "artifacts folder not found" + (" (the default export/<run>)" if default else ""), path=out_dir, hint=how
        )
    if not out_dir.is_dir():
        raise ArtifactError(
            "artifacts path is a file, not a folder", path=out_dir, hint="pass the folder `mnv2 export` wrote"
        )
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError("no manifest.json in the artifacts folder", path=out_dir, hint=how)
    data = parse_manifest(path, hint=how)
    artifacts = data["artifacts"]
    if not artifacts:
        raise ArtifactError("manifest.json lists no artifact", path=path, hint=how)
    source = (data.get("source_checkpoint") or {}).get("sha256")
    return artifacts, bool(source and ckpt.sha256 and source != ckpt.sha256)


def load_runners(
    out_dir: Path, entries: dict[str, dict[str, Any]], wanted: list[tuple[str, bool]], tols: dict[str, Tolerance], ckpt
) -> tuple[list[Any], list[ParityRow]]:
    """A row (and a runner, or None) per listed artifact and provider. The file must be the one the manifest records
    (size, sha256); once loaded it is judged by its *own* metadata (format, precision), which must agree with the
    manifest and name ``ckpt`` as its source."""
    from ..fileio import sha256_file

    runners, rows = [], []
    for name, entry in entries.items():
        path = out_dir / name
        sha = sha256_file(path) if path.is_file() else None
        changed = changed_since_export(entry, path, sha) if sha else None
        for provider, explicit in wanted:
            row = ParityRow(
                artifact=name,
                format=str(entry.get("format", "?")),
                precision=str(entry.get("precision", "?")),
                provider=provider,
                sha256=sha,
            )
            runner = None
            if sha is None:
                row.status, row.reason = "error", "listed in manifest.json but missing from the folder"
            elif changed:
                row.status, row.failures = "fail", [changed]
            else:
                runner = _judged_runner(row, path, explicit, entry, tols, ckpt)
            rows.append(row)
            runners.append(runner)
    return runners, rows


def _judged_runner(row: ParityRow, path: Path, explicit: bool, entry: dict[str, Any], tols, ckpt):
    """The artifact loaded for ``row.provider``, its row set from its own metadata; None (the row says why) when it
    cannot run or has no tolerance."""
    runner = _load(row, path, explicit)
    if runner is None:
        return None
    row.format, row.precision = str(runner.metadata.get("format")), str(runner.metadata.get("precision"))
    row.failures = provenance_problems(entry, runner.metadata, ckpt)  # the row fails, and is still compared
    if row.precision not in tols:
        row.status, row.reason = "error", f"no tolerance defined for precision {row.precision!r}"
        return None
    row.tolerance = asdict(tols[row.precision])
    return runner


def _load(row: ParityRow, path: Path, explicit: bool):
    from ..runtime import load_artifact

    try:
        runner = load_artifact(path, row.provider)
        if getattr(runner, "session", None) is not None:
            row.session_providers = list(runner.session.get_providers())
    except ProviderUnavailable as exc:
        if explicit:  # never fall back: the user asked for this provider
            raise ProviderUnavailable(exc.what, path=exc.path, hint=_PROVIDER_HINT) from None
        row.status, row.reason = "unavailable", exc.what
        return None
    except Mnv2Error as exc:
        row.status, row.reason = "error", exc.one_line()
        return None
    return runner


def provenance_problems(entry: dict[str, Any], meta: dict[str, Any], ckpt) -> list[str]:
    """Disagreements between the manifest entry and the file's own metadata (format, precision), and between the
    checkpoint the file says it was exported from and ``ckpt``."""
    out = [
        f"manifest.json says {key} {entry.get(key)!r}, the file's metadata {meta.get(key)!r}"
        for key in ("format", "precision")
        if entry.get(key) != meta.get(key)
    ]
    if meta.get("source_checkpoint_sha256") != ckpt.sha256:
        out.append(
            f"exported from another checkpoint: source_checkpoint_sha256 {short_hash(meta.get('source_checkpoint_sha256'))} in its "
            f"metadata, {short_hash(ckpt.sha256)} for {ckpt.path.name if ckpt.path else 'the checkpoint'}"
        )
    return out


def unlisted_rows(out_dir: Path, entries: dict[str, dict[str, Any]]) -> list[ParityRow]:
    """A failing row for each file in the folder that is an artifact by its name but is not in manifest.json. A
    training checkpoint (best.pt / last.pt kept beside the export, the reference itself) is not an artifact."""
    from ..fileio import sha256_file

    names = sorted(
        p.name
        for p in out_dir.iterdir()
        if p.suffix in ARTIFACT_SUFFIXES and p.is_file() and p.name not in entries and not _is_checkpoint(p)
    )
    return [
        ParityRow(
            artifact=n,
            format="?",
            precision="?",
            provider="-",
            status="fail",
            sha256=sha256_file(out_dir / n),
            failures=["in the folder but not in manifest.json: not checked; export again or remove it"],
        )
        for n in names
    ]


def _is_checkpoint(path: Path) -> bool:
    from ..filekind import detect_format

    try:
        return detect_format(path) == "pytorch"
    except Mnv2Error:
        return False  # unreadable: an artifact's name it has, so it fails as one


def metadata_problems(meta: dict[str, Any], ckpt) -> list[str]:
    """Disagreements between an artifact's embedded metadata and its checkpoint (and within the metadata)."""
    want = ckpt.metadata()
    out = []
    for key in _META_KEYS:
        if key == "class_names" and isinstance(meta.get(key), list) and isinstance(want.get(key), list):
            out += _list_difference(key, meta[key], want[key])
        elif not _same(meta.get(key), want.get(key)):
            out.append(f"metadata {key} is {_short(meta.get(key))}, the checkpoint's {_short(want.get(key))}")
    dc, wdc = meta.get("data_config") or {}, want["data_config"]
    for key in ("img_size", "mean", "std", "resize_size", "interpolation"):
        if not _same(dc.get(key), wdc.get(key)):
            out.append(f"metadata data_config.{key} is {_short(dc.get(key))}, the checkpoint's {_short(wdc.get(key))}")
    return out


def _list_difference(key: str, got: list[Any], want: list[Any]) -> list[str]:
    """The first index where two lists differ, with both values, and both lengths when they differ ([] if equal)."""
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if not _same(a, b)), min(len(got), len(want)))
    if i == len(got) == len(want):
        return []

    def at(values: list[Any]) -> str:
        return _short(values[i]) if i < len(values) else "absent"

    sizes = f" ({len(got)} entries, the checkpoint's {len(want)})" if len(got) != len(want) else ""
    return [f"metadata {key} differs first at index {i}: {at(got)}, the checkpoint's {at(want)}{sizes}"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def _short(v: Any) -> str:
    text = json_text(v, indent=None)
    return text if len(text) <= 60 else text[:57] + "..."
