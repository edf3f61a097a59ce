"""``check``: does every exported artifact answer like the trained model? -> :class:`ParityReport`.

Reference: the checkpoint's own PyTorch model, FP32, eval mode, BatchNorm *not* folded, on CPU (a CUDA row is compared
with the same numbers). Inputs: real images (``data``, default the checkpoint's validation split when it is at hand),
decoded once and preprocessed for each artifact as *its own metadata* says (so a wrong mean/std shows), followed by
generated N(0, 1) tensors in the normalised space. Every artifact runs them in batches cycling through
``batch_sizes`` (1, 7, 64: one, odd, large), so a broken dynamic batch axis shows as an error or a difference.

Judged per precision (:data:`DEFAULT_TOLERANCES`): FP32 and FP16 elementwise, Polygraphy style (a logit fails only when
it exceeds both ``atol`` and ``rtol * |reference|``; FP16's atol is a fraction of the sample's largest logit, since its
error is relative to the magnitudes in the network), plus top-1 agreement; INT8 by top-1 agreement and accuracy drop on
real images only (generated noise lies outside the calibration range, so INT8 is not expected to agree there).
Agreement and accuracy are percentages of samples; accuracy drop is in points.

Providers: ``cpu``, ``cuda`` or ``all``. An explicit ``cuda`` that cannot be had raises :class:`ProviderUnavailable`
(runtime.py checks the providers a session really got: no silent CPU fallback). With ``all``, CUDA rows that cannot run
are ``unavailable`` with the reason and do not fail the check. On CUDA, TF32 is disabled (torch's fp32_precision flags;
``NVIDIA_TF32_OVERRIDE=0``, which runtime.py turns into the CUDA provider's ``use_tf32=0`` for each ONNX Runtime
session) so FP32 is held to the same 1e-4.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, CheckpointError, ConfigError, Mnv2Error, ProviderUnavailable
from .fileio import json_text
from .manifest import changed_since_export, parse_manifest, short_hash, source_checkpoint
from .parity_report import DEFAULT_TOLERANCES, ParityReport, ParityRow, Tolerance

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 500  # real images; enough to resolve a 1-point accuracy drop (5 images) on 2 CPU cores in seconds
MAX_SAMPLES = 100_000
BATCH_SIZES = (1, 7, 64)
PROVIDER_CHOICES = ("cpu", "cuda", "all")


# --------------------------------------------------------------------------------------------------- the check
def check(
    checkpoint: str | Path,
    artifacts_dir: str | Path | None = None,
    *,
    data: str | None = None,
    providers: Any = ("cpu",),
    samples: int | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    tolerances: dict[str, Tolerance] | None = None,
    debug_int8: bool = False,
) -> ParityReport:
    """Compare every artifact listed in ``artifacts_dir/manifest.json`` (default ``export/<run>``) with the checkpoint.
    ``checkpoint`` may also be an artifacts folder (with ``artifacts_dir`` None): its artifacts are compared with the
    checkpoint its manifest names as their source, which must still be there, unchanged (:func:`resolve_target`).

    ``providers``: ``"cpu"``, ``"cuda"``, ``"all"``, comma-separated or a sequence. ``tolerances``: per precision,
    replacing the defaults (see :func:`with_overrides`). Raises a :class:`Mnv2Error` for what prevents the check itself
    (bad option, missing folder or manifest, unreadable checkpoint or data, an explicit provider that cannot be had); a
    broken artifact is a row (``fail`` or ``error``) and makes ``passed`` false.
    """
    from .fileio import require_checkpoint_file

    created = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    wanted = parse_providers(providers)
    samples = DEFAULT_SAMPLES if samples is None else samples
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_SAMPLES:
        raise ConfigError(
            f"samples = {samples!r} is out of range", hint=f"use a whole number between 1 and {MAX_SAMPLES}"
        )
    sizes = tuple(batch_sizes)
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes):
        raise ConfigError(f"batch sizes {batch_sizes!r} are invalid", hint="use whole numbers >= 1, e.g. 1, 7, 64")
    tols = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    from_folder = Path(checkpoint).is_dir()
    checkpoint, artifacts_dir = resolve_target(checkpoint, artifacts_dir)
    require_checkpoint_file(
        checkpoint
    )  # the options and the file checks before torch is imported: their errors come at once

    from .checkpoint import load_checkpoint
    from .export import default_out_dir, toolchain_versions
    from .parity_inputs import generated_inputs, load_real_images

    ckpt = load_checkpoint(checkpoint)
    out_dir = Path(artifacts_dir) if artifacts_dir is not None else default_out_dir(checkpoint)
    entries, other_source = read_manifest(out_dir, artifacts_dir is None, ckpt)
    notes: list[str] = []
    if from_folder:
        notes.append(
            f"reference: {ckpt.path}, the source checkpoint that manifest.json names (the same file: same SHA-256)"
        )
    if other_source:
        notes.append(
            f"manifest.json says these artifacts were exported from another checkpoint than {ckpt.path.name} "
            "(sha256 differs); the numbers below say whether they still answer alike"
        )

    uses_cuda = "cuda" in {p for p, _ in wanted}
    with tf32_disabled() if uses_cuda else contextlib.nullcontext():
        real = load_real_images(ckpt, data, samples)  # before any session: bad data fails fast
        notes.append(real.note)
        runners, rows = _load_runners(out_dir, entries, wanted, tols, ckpt)
        gen = generated_inputs(ckpt.data_config.img_size, sum(sizes))
        notes.append(
            f"{len(gen)} generated N(0, 1) tensors in the normalised input space follow the real images; artifacts run them "
            f"in batches cycling through sizes {', '.join(map(str, sizes))}; the reference runs on CPU in batches of 64"
        )
        ref_real, ref_gen = _reference(ckpt, real.batch(ckpt.data_config.to_dict()), gen)
        for i, row in enumerate(rows):
            runner, runners[i] = runners[i], None  # free each session once its row is done
            if runner is None:
                continue
            try:
                x_real = (
                    real.batch(runner.metadata["data_config"])
                    if len(real)
                    else np.zeros((0, *gen.shape[1:]), np.float32)
                )
                _compare_row(row, runner, ckpt, x_real, gen, ref_real, ref_gen, real.labels, sizes, tols[row.precision])
            except Mnv2Error as exc:
                row.status, row.reason = "error", exc.one_line()
            log.info("parity: %s on %s: %s", row.artifact, row.provider, row.status)
        if uses_cuda and any(r.provider == "cuda" and r.status in ("pass", "fail") for r in rows):
            notes.append(
                "TF32 disabled for the CUDA runs (torch fp32_precision = 'ieee'; use_tf32=0 for ONNX Runtime's CUDA provider), "
                "so FP32 is held to the same bounds as on CPU"
            )
    rows += unlisted_rows(out_dir, entries)
    for r in rows:
        if r.provider == "cuda" and r.status == "unavailable":
            notes.append(f"CUDA rows not run (--provider all): {r.reason}")
            break
    if any(r.precision == "int8" for r in rows) and real.labels is None:
        notes.append("INT8 accuracy drop not judged: the real images carry no labels the checkpoint's classes can use")

    report = ParityReport(
        rows=rows,
        passed=all(r.passed for r in rows),
        notes=notes,
        checkpoint=str(ckpt.path),
        artifacts_dir=str(out_dir),
        inputs={
            "real": len(real),
            "labelled": real.labels is not None,
            "real_source": real.source,
            "generated": len(gen),
            "batch_sizes": list(sizes),
        },
        tolerances={p: asdict(t) for p, t in tols.items()},
        checkpoint_sha256=ckpt.sha256,
        created=created,
        versions=toolchain_versions(),
    )
    if debug_int8:
        from .parity_int8 import debug_int8 as run_debug

        report.int8_debug = run_debug(out_dir, entries, real)
        report.notes.append(report.int8_debug["note"])
    log.info("parity: %s", "passed" if report.passed else "FAILED")
    return report


def resolve_target(target: str | Path, artifacts_dir: str | Path | None) -> tuple[Path, str | Path | None]:
    """The checkpoint and artifacts folder that ``check``'s target names: a checkpoint file as it is (with
    ``artifacts_dir``); an artifacts folder, with the checkpoint its manifest records as the source (the same file,
    by SHA-256). Light: no torch, so that a wrong target is an error at once."""
    from .fileio import CHECKPOINT_HINT, checkpoint_hint
    from .layout import MANIFEST_FILE

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
            "two artifacts folders: the target and --artifacts",
            path=p,
            hint="pass the checkpoint with --artifacts DIR, or the artifacts folder alone",
        )
    source, why = source_checkpoint(parse_manifest(p / MANIFEST_FILE))
    if source is None:
        raise ArtifactError(
            f"no reference model for this folder: {why}",
            path=p,
            hint=f"pass the checkpoint it was exported from, with --artifacts {p}",
        )
    return source, p


def parse_providers(providers: Any) -> list[tuple[str, bool]]:
    """``"all"``, ``"cpu,cuda"`` or a sequence -> [(provider, explicit)]; ``all`` asks for CUDA only where it exists."""
    from .params import split_items

    items = split_items(providers, "provider")
    bad = [p for p in items if p not in PROVIDER_CHOICES]
    if bad or not items:
        raise ConfigError(f"unknown provider {bad[0] if bad else '(none)'!r}", hint="choose cpu, cuda or all")
    out: dict[str, bool] = {}
    for p in items:
        for name in ("cpu", "cuda") if p == "all" else (p,):
            out[name] = out.get(name, False) or p != "all" or name == "cpu"
    return list(out.items())


def read_manifest(out_dir: Path, default: bool, ckpt) -> tuple[dict[str, dict[str, Any]], bool]:
    """The manifest's artifacts (file name -> entry) and whether it names another source checkpoint than ``ckpt``."""
    from .layout import MANIFEST_FILE

    how = f"run `mnv2 export {ckpt.path}{'' if default else f' --out {out_dir}'}` first, or pass --artifacts DIR"
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


def _load_runners(
    out_dir: Path, entries: dict[str, dict[str, Any]], wanted: list[tuple[str, bool]], tols: dict[str, Tolerance], ckpt
):
    """A row (and a runner, or None) per listed artifact and provider. The file must be the one the manifest records
    (size, sha256); once loaded it is judged by its *own* metadata (format, precision), which must agree with the
    manifest and name ``ckpt`` as its source."""
    from .fileio import sha256_file
    from .runtime import load_artifact

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
                try:
                    runner = load_artifact(path, provider)
                    if getattr(runner, "session", None) is not None:
                        row.session_providers = list(runner.session.get_providers())
                except ProviderUnavailable as exc:
                    if explicit:  # never fall back: the user asked for this provider
                        raise ProviderUnavailable(exc.what, path=exc.path, hint=_PROVIDER_HINT) from None
                    row.status, row.reason = "unavailable", exc.what
                except Mnv2Error as exc:
                    row.status, row.reason = "error", exc.one_line()
            if runner is not None:
                row.format, row.precision = str(runner.metadata.get("format")), str(runner.metadata.get("precision"))
                row.failures = provenance_problems(entry, runner.metadata, ckpt)  # the row fails, and is still compared
                if row.precision not in tols:
                    row.status, row.reason, runner = (
                        "error",
                        f"no tolerance defined for precision {row.precision!r}",
                        None,
                    )
                else:
                    row.tolerance = asdict(tols[row.precision])
            rows.append(row)
            runners.append(runner)
    return runners, rows


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


ARTIFACT_SUFFIXES = (".onnx", ".pt")  # what `mnv2 export` writes; manifest.json and check outputs are not artifacts


def unlisted_rows(out_dir: Path, entries: dict[str, dict[str, Any]]) -> list[ParityRow]:
    """A failing row for each file in the folder that is an artifact by its name but is not in manifest.json. A
    training checkpoint (best.pt / last.pt kept beside the export, the reference itself) is not an artifact."""
    from .fileio import sha256_file

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
    from .filekind import detect_format

    try:
        return detect_format(path) == "pytorch"
    except Mnv2Error:
        return False  # unreadable: an artifact's name it has, so it fails as one


_PROVIDER_HINT = (
    "run on a machine with an NVIDIA GPU and onnxruntime-gpu, or use --provider cpu "
    "(--provider all reports CUDA rows as unavailable where CUDA cannot be had)"
)


def _reference(ckpt, x_real: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    model = ckpt.build_model().float().eval()  # FP32, eval, BatchNorm not folded, CPU

    def run(x: np.ndarray) -> np.ndarray:
        outs = [np.zeros((0, ckpt.model_config.num_classes), np.float32)]
        with torch.inference_mode():
            for i in range(0, len(x), 64):
                outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + 64]))).float().numpy())
        return np.concatenate(outs)

    return run(x_real), run(gen)


def run_batched(runner, x: np.ndarray, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``x`` in consecutive batches of sizes cycling through ``sizes`` (largest first, then in order given);
    returns (logits, the nominal batch size each sample ran in)."""
    order = sorted(sizes, reverse=True)[:1] + [b for b in sizes if b != max(sizes)]
    outs, used, i, k = [], np.zeros(len(x), np.int64), 0, 0
    while i < len(x):
        b = order[k % len(order)]
        try:
            outs.append(np.asarray(runner.run(x[i : i + b]), dtype=np.float32))
        except Mnv2Error:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime / torch raise their own types; the row says which batch
            text = str(exc).strip().splitlines()
            raise ArtifactError(
                f"fails at batch size {len(x[i : i + b])}: {text[0][:300] if text else type(exc).__name__}",
                hint="a static batch axis? export it again with `mnv2 export`",
            ) from None
        if outs[-1].shape[0] != len(x[i : i + b]):
            raise ArtifactError(
                f"returns {outs[-1].shape[0]} rows for a batch of {len(x[i : i + b])}",
                hint="export it again with `mnv2 export`",
            )
        used[i : i + b] = b
        i, k = i + b, k + 1
    return np.concatenate(outs), used


def _compare_row(row: ParityRow, runner, ckpt, x_real, gen, ref_real, ref_gen, labels, sizes, tol: Tolerance) -> None:
    meta_problems = row.failures + metadata_problems(runner.metadata, ckpt)  # after what loading found (provenance)
    if tuple(runner.input_shape) != tuple(gen.shape[1:]):
        row.status, row.failures = (
            "fail",
            meta_problems or [f"input size {runner.input_shape} differs from the checkpoint's"],
        )
        return
    x = np.concatenate([x_real, gen])
    out, used = run_batched(runner, x, sizes)
    ref = np.concatenate([ref_real, ref_gen])
    if out.shape != ref.shape:
        row.status, row.failures = (
            "fail",
            [*meta_problems, f"logits have shape {out.shape[1:]}, the reference {ref.shape[1:]}"],
        )
        return
    row.metrics = compare(ref, out, n_real=len(x_real), labels=labels, used=used, tol=tol)
    row.failures = meta_problems + judge(row.metrics, tol, row.precision)
    row.status = "fail" if row.failures else "pass"


def compare(
    ref: np.ndarray, out: np.ndarray, *, n_real: int, labels: np.ndarray | None, used: np.ndarray, tol: Tolerance
) -> dict[str, Any]:
    """Metrics of ``out`` against ``ref`` (N x classes); the first ``n_real`` rows are real images (``labels`` theirs)."""
    r, a = ref.astype(np.float64), out.astype(np.float64)
    d = np.abs(a - r)
    finite = np.isfinite(a)
    m: dict[str, Any] = {
        "n_real": int(n_real),
        "n_generated": int(len(ref) - n_real),
        "n_logits": int(d.size),
        "nonfinite": int((~finite).sum()),
    }
    m["max_abs"] = float(np.nanmax(np.where(finite, d, np.inf)))
    m["mean_abs"] = float(np.mean(np.where(finite, d, np.inf)))
    m["max_rel"] = float(np.max(np.where(finite, d / np.maximum(np.abs(r), 1e-6), np.inf)))
    cos = (a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1), 1e-30)
    m["cosine"] = float(np.nanmin(np.where(np.isfinite(cos), cos, -1.0)))
    m["max_abs_by_batch"] = {
        str(b): float(np.max(np.where(finite, d, np.inf)[used == b])) for b in sorted(set(used.tolist()))
    }
    if tol.elementwise:
        atol = tol.atol * (
            np.maximum(1.0, np.abs(r).max(1, keepdims=True)) if tol.atol_scaled else np.ones((len(r), 1))
        )
        bad = ~finite | ((d > atol) & (d > tol.rtol * np.abs(r)))
        m["elementwise_failures"] = int(bad.sum())
        # how much of the bound the worst logit uses: min(abs/atol, abs/(rtol*|ref|)); a logit fails above 1
        m["tol_ratio"] = float(
            np.max(np.where(finite, np.minimum(_ratio(d, atol), _ratio(d, tol.rtol * np.abs(r))), np.inf))
        )
        if (
            bad.any()
        ):  # the worst: a NaN / inf first, else the largest multiple of atol (of the difference itself at atol 0)
            excess = np.where(~finite, np.inf, np.where(bad, d / atol if tol.atol else d, 0.0))
            i, c = np.unravel_index(int(np.argmax(excess)), d.shape)
            m["worst"] = {
                "sample": int(i),
                "generated": bool(i >= n_real),
                "class": int(c),
                "abs": float(d[i, c]),
                "atol": float(atol[i, 0]),
                "reference": float(r[i, c]),
                "artifact": float(a[i, c]),
                "batch_size": int(used[i]),
            }
    # agreement on real images when there are any (INT8 is calibrated for them), else on the generated tensors
    sel = slice(0, n_real) if n_real else slice(None)
    rt, at = r[sel], a[sel]
    m["agreement_on"] = "real" if n_real else "generated"
    m["top1_agreement"] = float(100.0 * np.mean(rt.argmax(1) == at.argmax(1)))
    # with 5 classes or fewer, every class is in the top 5: the figure would be 100% whatever the artifact answers
    m["top5_agreement"] = None
    if r.shape[1] > 5:
        top5 = np.argsort(-at, axis=1)[:, :5]
        m["top5_agreement"] = float(100.0 * np.mean((top5 == rt.argmax(1)[:, None]).any(1)))
    if labels is not None and n_real:
        m["acc_reference"] = float(100.0 * np.mean(rt.argmax(1) == labels))
        m["acc_artifact"] = float(100.0 * np.mean(at.argmax(1) == labels))
        m["acc_drop_pts"] = m["acc_reference"] - m["acc_artifact"]
    return m


def _ratio(d: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """``d / bound``, where a zero bound makes any difference infinitely over it and none 0 (atol or rtol 0)."""
    bound = np.broadcast_to(bound, d.shape)
    return np.divide(d, bound, out=np.where(d > 0, np.inf, 0.0), where=bound > 0)


def judge(m: dict[str, Any], tol: Tolerance, precision: str) -> list[str]:
    """Each tolerance ``m`` breaks, with by how much."""
    out = []
    if m.get("nonfinite"):
        out.append(f"{m['nonfinite']} logit{' is' if m['nonfinite'] == 1 else 's are'} NaN or infinite")
    if tol.elementwise and m.get("elementwise_failures"):
        w = m["worst"]
        by_batch = ", ".join(f"batch {b}: {v:.2g}" for b, v in m["max_abs_by_batch"].items())
        scaled = " x max(1, largest |logit|)" if tol.atol_scaled else ""
        if not math.isfinite(w["artifact"]):
            worst = f"the worst logit is {w['artifact']} (NaN/inf), the reference {w['reference']:.3g}"
        else:
            times = f" = {w['abs'] / w['atol']:.3g}x atol" if w["atol"] > 0 else ""
            rel = f"{w['abs'] / abs(w['reference']):.3g}" if w["reference"] else "inf"
            worst = f"worst abs diff {w['abs']:.3g}{times}, relative {rel}"
        out.append(
            f"{m['elementwise_failures']} of {m['n_logits']} logits exceed both atol {tol.atol:g}{scaled} "
            f"and rtol {tol.rtol:g} ({worst}, on {'generated' if w['generated'] else 'real'} sample {w['sample']}, "
            f"class {w['class']}; max abs by {by_batch})"
        )
    real_only = precision == "int8"
    if real_only and m["n_real"] == 0:
        out.append("INT8 is judged on real images and none were at hand (pass --data)")
        return out
    if tol.min_top1_agreement is not None and m["top1_agreement"] < tol.min_top1_agreement:
        n = m["n_real"] if m["agreement_on"] == "real" else m["n_generated"]
        differ = round(n * (100.0 - m["top1_agreement"]) / 100.0)
        out.append(
            f"top-1 agreement {m['top1_agreement']:.2f}% < {tol.min_top1_agreement:g}% (by {tol.min_top1_agreement - m['top1_agreement']:.2f} "
            f"points: {differ} of {n} {m['agreement_on']} samples pick another class)"
        )
    if tol.max_acc_drop_pts is not None and "acc_drop_pts" in m and m["acc_drop_pts"] > tol.max_acc_drop_pts:
        out.append(
            f"accuracy drop {m['acc_drop_pts']:.2f} points > {tol.max_acc_drop_pts:g} (by {m['acc_drop_pts'] - tol.max_acc_drop_pts:.2f}; "
            f"{m['acc_reference']:.2f}% -> {m['acc_artifact']:.2f}%)"
        )
    return out


# metadata an artifact must agree on with its checkpoint (a consumer outside mnv2export reads the top-level keys)
_META_KEYS = ("class_names", "input_size", "mean", "std", "resize_size", "interpolation")


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


@contextlib.contextmanager
def tf32_disabled():
    """FP32 as IEEE float32 on CUDA for the duration: torch's new fp32_precision flags (not the legacy allow_tf32,
    which torch 2.14 refuses to mix with them; the exported TorchScript file reads them, see
    ``export.torchscript._convolutions_follow_torch_flags``) and NVIDIA_TF32_OVERRIDE=0. cuBLAS and cuDNN read that
    variable only once per process, so ``runtime.ort_providers`` also gives each ONNX Runtime CUDA session created
    meanwhile the provider option ``use_tf32=0``."""
    import torch

    flags = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    saved = [f.fp32_precision for f in flags]
    env = os.environ.get("NVIDIA_TF32_OVERRIDE")
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    for f in flags:
        f.fp32_precision = "ieee"
    try:
        yield
    finally:
        for f, v in zip(flags, saved):
            f.fp32_precision = v
        if env is None:
            os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
        else:
            os.environ["NVIDIA_TF32_OVERRIDE"] = env
