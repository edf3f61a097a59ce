"""``check``: does every exported artifact answer like the trained model? -> :class:`ParityReport`.

    from mnv2export.check import check
    report = check("weights/run/best.pt", "export/run", providers="cpu", samples=500)
    report.passed, report.rows, report.notes, report.to_dict(), report.to_json(path), report.to_markdown()

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

Modules: ``targets`` (the target, providers, manifest, loading each artifact, its metadata against the checkpoint),
``inputs`` (real images and generated tensors), ``compare`` (reference logits, metrics, tolerances broken),
``report`` (tolerances, :class:`ParityReport`), ``int8`` (``--debug-int8``: where INT8 diverges from FP32).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import Mnv2Error
from ..params import check_int, check_ints
from .compare import Inputs, compare_row, reference_inputs, tf32_disabled
from .inputs import load_real_images
from .report import DEFAULT_TOLERANCES, ParityReport, ParityRow, Tolerance, with_overrides
from .targets import PROVIDER_CHOICES, load_runners, parse_providers, read_manifest, resolve_target, unlisted_rows

__all__ = [
    "BATCH_SIZES",
    "DEFAULT_SAMPLES",
    "DEFAULT_TOLERANCES",
    "MAX_SAMPLES",
    "PROVIDER_CHOICES",
    "ParityReport",
    "ParityRow",
    "Tolerance",
    "check",
    "check_options",
    "parse_providers",
    "resolve_target",
    "tf32_disabled",
    "with_overrides",
]

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 500  # real images; enough to resolve a 1-point accuracy drop (5 images) on 2 CPU cores in seconds
MAX_SAMPLES = 100_000
BATCH_SIZES = (1, 7, 64)


def check_options(
    providers: Any = ("cpu",), samples: int | None = None, batch_sizes: tuple[int, ...] = BATCH_SIZES
) -> tuple[list[tuple[str, bool]], int, tuple[int, ...]]:
    """``check``'s options checked before any file is read (a ConfigError names the bad one): the providers as
    (provider, named explicitly), the sample count, the batch sizes."""
    wanted = parse_providers(providers)
    samples = check_int("samples", DEFAULT_SAMPLES if samples is None else samples, 1, MAX_SAMPLES)
    return wanted, samples, tuple(check_ints("batch_sizes", batch_sizes))


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
    created = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    wanted, samples, sizes = check_options(providers, samples, batch_sizes)
    tols = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    ckpt, out_dir, entries, notes = _open_target(checkpoint, artifacts_dir)
    uses_cuda = any(p == "cuda" for p, _ in wanted)
    with tf32_disabled() if uses_cuda else contextlib.nullcontext():
        real = load_real_images(ckpt, data, samples)  # before any session: bad data fails fast
        runners, rows = load_runners(out_dir, entries, wanted, tols, ckpt)
        inputs = reference_inputs(ckpt, real, sizes)
        _compare_rows(rows, runners, ckpt, inputs, tols)
    notes += [real.note, inputs.note]
    rows += unlisted_rows(out_dir, entries)
    notes += _closing_notes(rows, uses_cuda, inputs)
    report = _report(ckpt, out_dir, rows, notes, inputs, tols, created)
    if debug_int8:
        from .int8 import debug_int8 as run_debug

        report.int8_debug = run_debug(out_dir, entries, inputs.real)
        report.notes.append(report.int8_debug["note"])
    log.info("parity: %s", "passed" if report.passed else "FAILED")
    return report


def _open_target(checkpoint: str | Path, artifacts_dir: str | Path | None):
    """(the checkpoint loaded, the artifacts folder, its manifest's entries, notes on the reference); the file checks
    come before torch is imported, so that their errors come at once."""
    from ..fileio import require_checkpoint_file

    from_folder = Path(checkpoint).is_dir()
    checkpoint, artifacts_dir = resolve_target(checkpoint, artifacts_dir)
    require_checkpoint_file(checkpoint)

    from ..checkpoint import load_checkpoint
    from ..export import default_out_dir

    ckpt = load_checkpoint(checkpoint)
    out_dir = Path(artifacts_dir) if artifacts_dir is not None else default_out_dir(checkpoint)
    entries, other_source = read_manifest(out_dir, artifacts_dir is None, ckpt)
    return ckpt, out_dir, entries, _source_notes(ckpt, from_folder, other_source)


def _compare_rows(rows: list[ParityRow], runners: list[Any], ckpt, inputs: Inputs, tols: dict[str, Tolerance]) -> None:
    """Each row whose artifact loaded, run and judged against the reference; an error in one is that row's."""
    for i, row in enumerate(rows):
        runner, runners[i] = runners[i], None  # free each session once its row is done
        if runner is None:
            continue
        try:
            compare_row(row, runner, ckpt, inputs, tols[row.precision])
        except Mnv2Error as exc:
            row.status, row.reason = "error", exc.one_line()
        log.info("parity: %s on %s: %s", row.artifact, row.provider, row.status)


def _source_notes(ckpt, from_folder: bool, other_source: bool) -> list[str]:
    """What the reference is, when a folder named it or its manifest names another checkpoint."""
    notes = []
    if from_folder:
        notes.append(
            f"reference: {ckpt.path}, the source checkpoint that manifest.json names (the same file: same SHA-256)"
        )
    if other_source:
        notes.append(
            f"manifest.json says these artifacts were exported from another checkpoint than {ckpt.path.name} "
            "(sha256 differs); the numbers below say whether they still answer alike"
        )
    return notes


def _closing_notes(rows: list[ParityRow], uses_cuda: bool, inputs: Inputs) -> list[str]:
    """TF32 off for the CUDA rows that ran, why CUDA rows did not, INT8 accuracy not judged without labels."""
    notes = []
    if uses_cuda and any(r.provider == "cuda" and r.status in ("pass", "fail") for r in rows):
        notes.append(
            "TF32 disabled for the CUDA runs (torch fp32_precision = 'ieee'; use_tf32=0 for ONNX Runtime's CUDA provider), "
            "so FP32 is held to the same bounds as on CPU"
        )
    unavailable = next((r for r in rows if r.provider == "cuda" and r.status == "unavailable"), None)
    if unavailable is not None:
        notes.append(f"CUDA rows not run (--provider all): {unavailable.reason}")
    if any(r.precision == "int8" for r in rows) and inputs.real.labels is None:
        notes.append("INT8 accuracy drop not judged: the real images carry no labels the checkpoint's classes can use")
    return notes


def _report(ckpt, out_dir: Path, rows, notes, inputs: Inputs, tols: dict[str, Tolerance], created: str) -> ParityReport:
    from ..export import toolchain_versions

    real = inputs.real
    return ParityReport(
        rows=rows,
        passed=all(r.passed for r in rows),
        notes=notes,
        checkpoint=str(ckpt.path),
        artifacts_dir=str(out_dir),
        inputs={
            "real": len(real),
            "labelled": real.labels is not None,
            "real_source": real.source,
            "generated": len(inputs.generated),
            "batch_sizes": list(inputs.sizes),
        },
        tolerances={p: asdict(t) for p, t in tols.items()},
        checkpoint_sha256=ckpt.sha256,
        created=created,
        versions=toolchain_versions(),
    )
