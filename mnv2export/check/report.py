"""What ``mnv2 check`` judges by and what it reports: the tolerances of each precision (:data:`DEFAULT_TOLERANCES`),
and :class:`ParityReport`, one :class:`ParityRow` per artifact and provider, as JSON and as a Markdown table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..params import check_number


@dataclass(frozen=True)
class Tolerance:
    """Bounds one precision is judged by; None means that criterion is not applied."""

    atol: float | None = None  # elementwise: a logit fails only if |a - r| > atol AND |a - r| > rtol * |r|
    rtol: float | None = None
    atol_scaled: bool = False  # atol is a fraction of the sample's largest |reference logit| (at least 1), not absolute
    min_top1_agreement: float | None = None  # percent of samples where the artifact picks the reference's class
    max_acc_drop_pts: float | None = None  # top-1 accuracy points lost against the reference (labelled data only)

    @property
    def elementwise(self) -> bool:
        return self.atol is not None and self.rtol is not None


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # Polygraphy's default comparison; an exact export differs only by float reordering (~1e-6 on these logits)
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_top1_agreement=100.0),
    # FP16 keeps 11 significant bits (unit roundoff 4.9e-4) in every weight and stored activation, through ~50 layers
    # whose BatchNorm-folded weights can be large and cancel; its error is relative to the magnitudes flowing through
    # the network, so the absolute bound scales with the sample's largest logit. Measured worst (benchmarks/RESULTS.md):
    # 0.05-0.5% of that scale, 1.4% on a small test model whose logits reach 165. 2% of the scale and 5% of the logit
    # itself (the exporter's own FP16 check uses 5%) still catch an overflow, a NaN, a wrong weight or a lost scale.
    # Near-ties may flip: 99% top-1 agreement, not 100%.
    "fp16": Tolerance(atol=2e-2, rtol=5e-2, atol_scaled=True, min_top1_agreement=99.0),
    # INT8 is not elementwise-close by design; judged as the issue asks, on real images
    "int8": Tolerance(min_top1_agreement=99.0, max_acc_drop_pts=1.0),
}


def with_overrides(
    atol: float | None = None,
    rtol: float | None = None,
    min_top1_agreement: float | None = None,
    max_acc_drop_pts: float | None = None,
) -> dict[str, Tolerance]:
    """The default tolerances with the given bounds replaced wherever that criterion is judged: ``atol`` / ``rtol`` for
    the elementwise precisions (FP32, FP16), ``min_top1_agreement`` for all, ``max_acc_drop_pts`` for those judged
    by accuracy (INT8)."""
    for param, value, hi in (
        ("atol", atol, math.inf),
        ("rtol", rtol, math.inf),
        ("min_top1_agreement", min_top1_agreement, 100.0),
        ("max_acc_drop_pts", max_acc_drop_pts, 100.0),
    ):
        if value is not None and not (value == math.inf == hi):  # an infinite atol / rtol turns that bound off
            check_number(param, value, 0.0, hi)
    out = {}
    for precision, tol in DEFAULT_TOLERANCES.items():
        changes: dict[str, float] = {}
        if tol.elementwise:
            changes.update({k: float(v) for k, v in (("atol", atol), ("rtol", rtol)) if v is not None})
        if min_top1_agreement is not None:
            changes["min_top1_agreement"] = float(min_top1_agreement)
        if max_acc_drop_pts is not None and tol.max_acc_drop_pts is not None:
            changes["max_acc_drop_pts"] = float(max_acc_drop_pts)
        out[precision] = replace(tol, **changes)
    return out


@dataclass
class ParityRow:
    artifact: str  # file name
    format: str
    precision: str
    provider: str
    status: str = "pass"  # pass | fail | unavailable | error
    reason: str | None = None  # why unavailable / error
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # each broken tolerance, with by how much
    tolerance: dict[str, Any] = field(default_factory=dict)  # the bounds this row was judged by
    session_providers: list[str] | None = None  # ONNX Runtime: the providers the session really got
    sha256: str | None = None  # of the file on disk when the check ran

    @property
    def passed(self) -> bool:
        """Not a failure of the check: passed, or (with provider ``all``) not runnable here."""
        return self.status in ("pass", "unavailable")


@dataclass
class ParityReport:
    rows: list[ParityRow]
    passed: bool
    notes: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    artifacts_dir: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, dict[str, Any]] = field(default_factory=dict)
    int8_debug: dict[str, Any] | None = None
    checkpoint_sha256: str | None = None
    created: str | None = None  # when the check ran, ISO 8601 with the UTC offset
    versions: dict[str, Any] = field(default_factory=dict)  # mnv2export, torch, torchvision, python, onnx, onnxruntime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        d = {
            "passed": self.passed,
            "created": self.created,
            "versions": self.versions,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "artifacts_dir": self.artifacts_dir,
            "inputs": self.inputs,
            "tolerances": self.tolerances,
            "notes": list(self.notes),
            "units": {
                "top1_agreement": "percent",
                "top5_agreement": "percent",
                "acc_reference": "percent",
                "acc_artifact": "percent",
                "acc_drop_pts": "points (reference - artifact)",
                "cosine": "lowest per-sample cosine similarity",
            },
            "rows": [{**asdict(r), "passed": r.passed} for r in self.rows],
            "int8_debug": self.int8_debug,
        }
        return _finite(d)

    def to_json(self, path: str | Path) -> Path:
        from ..fileio import json_text, write_text

        return write_text(path, json_text(self.to_dict()) + "\n")

    def to_markdown(self) -> str:
        """The parity table (notes are separate: :attr:`notes`)."""
        head = [
            "artifact",
            "precision",
            "provider",
            "status",
            "max abs",
            "mean abs",
            "max rel",
            "cosine",
            "top-1 agree",
            "top-5 agree",
            "acc ref",
            "acc",
            "drop",
            "details",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * 9 + "---|"]
        for r in self.rows:
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"`{r.artifact}`",
                        r.precision,
                        r.provider,
                        _STATUS_MD[r.status],
                        *format_metrics(r.metrics),
                        _md(details(r)),
                    ]
                )
                + " |"
            )
        if self.int8_debug and self.int8_debug.get("layers"):
            lines += _int8_markdown(self.int8_debug)
        return "\n".join(lines) + "\n"


def _int8_markdown(dbg: dict[str, Any]) -> list[str]:
    """The ``--debug-int8`` table: the tensors where INT8 diverges most from FP32."""
    lines = [
        "",
        f"INT8 layers where the activations diverge most from FP32 ({dbg['samples']} images; SQNR in dB, higher is better):",
        "",
        "| tensor | layer | SQNR vs FP32 | SQNR of its inputs | lost here |",
        "|---|---|---:|---:|---:|",
    ]
    for t in dbg["layers"]:
        lines.append(f"| `{t['tensor']}` | {t['layer']} | " + " | ".join(sqnr_cells(t)) + " |")
    return lines


def sqnr_cells(t: dict[str, Any]) -> list[str]:
    """One debugged tensor's SQNR vs FP32, its inputs' SQNR and the dB lost at it, as table cells."""
    return [num(t[k], ".1f") for k in ("xmodel_sqnr_db", "input_sqnr_db", "lost_db")]


_STATUS_MD = {"pass": "pass", "fail": "**FAIL**", "unavailable": "unavailable", "error": "**ERROR**"}


def details(row: ParityRow) -> str:
    if row.status in ("unavailable", "error"):
        return row.reason or ""
    return "; ".join(row.failures)


def format_metrics(m: dict[str, Any]) -> list[str]:
    """max abs, mean abs, max rel, cosine, top-1, top-5, acc ref, acc, drop as table cells ('' when absent)."""
    return [
        num(m.get("max_abs"), ".2e"),
        num(m.get("mean_abs"), ".2e"),
        num(m.get("max_rel"), ".2e"),
        num(m.get("cosine"), ".6f"),
        num(m.get("top1_agreement"), ".2f", "%"),
        num(m.get("top5_agreement"), ".2f", "%"),
        num(m.get("acc_reference"), ".2f", "%"),
        num(m.get("acc_artifact"), ".2f", "%"),
        num(m.get("acc_drop_pts"), "+.2f"),
    ]


def num(v: Any, fmt: str, suffix: str = "") -> str:
    if v is None:
        return ""
    return f"{v:{fmt}}{suffix}" if math.isfinite(v) else str(v)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
