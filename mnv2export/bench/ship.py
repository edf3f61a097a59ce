"""What to ship: for each provider and batch size, the fastest artifact that passed its parity check.

A benchmark says how fast each file runs and ``mnv2 check`` whether it answers like the trained model; this joins
the two (a bench row and a check row match by file name and provider). PyTorch eager is the reference the check
compares against, so it always qualifies; a row timed under autocast (``+amp``) was never checked and never does;
a CUDA-graph row (``+graph``) runs its file's checked graph and qualifies where the file passed on CUDA. Rows with
host-device copies in the timer are left out: the choice is made on the device-resident rows, as the table shows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runtime.runners import CHECKED_PROVIDERS
from .result import BenchResult, BenchRow

REFERENCE = "eager"
# the check runs artifacts on the providers PyTorch and ONNX Runtime share; a TensorRT row has no parity verdict


@dataclass
class Choice:
    """The fastest qualified row of one (provider, batch), and the faster rows passed over, with why."""

    provider: str
    batch: int
    format: str | None = None  # None: no row qualified
    file: str | None = None
    p50_ms: float | None = None
    speedup_vs_eager: float | None = None
    acc_drop_pts: float | None = None  # None: the check had no labels (top-1 agreement instead) or eager
    top1_agreement: float | None = None
    passed_over: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_check(path: str | Path) -> dict[str, Any]:
    """A ``mnv2 check --json`` file, with the fields this module reads checked."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            "check result not found", path=p, hint="write one with `mnv2 check ... --json PATH`"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"check result cannot be read ({type(exc).__name__})", path=p) from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"artifact", "provider", "status"} <= r.keys() for r in rows
    ):
        raise ConfigError("not a `mnv2 check --json` result (no rows of artifact, provider, status)", path=p)
    return data


def recommend(bench: BenchResult, check: dict[str, Any]) -> list[Choice]:
    """One :class:`Choice` per (provider, batch) of the bench's device-resident rows, in the table's order."""
    verdicts = {(r["artifact"], r["provider"]): r for r in check["rows"]}
    groups: dict[tuple[str, int], list[BenchRow]] = {}
    for row in bench.rows:
        if row.io == "resident":
            groups.setdefault((row.provider, row.batch), []).append(row)
    return [_choose(provider, batch, rows, verdicts) for (provider, batch), rows in groups.items()]


def _choose(provider: str, batch: int, rows: list[BenchRow], verdicts: dict) -> Choice:
    choice = Choice(provider=provider, batch=batch)
    for row in sorted((r for r in rows if r.ok and r.p50_ms), key=lambda r: r.p50_ms):
        why_not, verdict = _disqualified(row, verdicts)
        if why_not:
            choice.passed_over.append(f"{row.format} ({row.p50_ms:.3g} ms): {why_not}")
            continue
        metrics = (verdict or {}).get("metrics") or {}
        choice.format, choice.file = row.format, Path(row.path).name if row.path else None
        choice.p50_ms, choice.speedup_vs_eager = row.p50_ms, row.speedup_vs_eager
        choice.acc_drop_pts = metrics.get("acc_drop_pts")
        choice.top1_agreement = metrics.get("top1_agreement")
        break
    return choice


def _disqualified(row: BenchRow, verdicts: dict) -> tuple[str | None, dict | None]:
    """(why ``row`` cannot be shipped, or None; its check row)."""
    if row.format == REFERENCE:
        return None, None
    if row.format.endswith("+amp"):
        return "autocast changes the numerics, and the check did not run it", None
    if row.provider not in CHECKED_PROVIDERS:
        return f"the check does not run the {row.provider} provider", None
    verdict = verdicts.get((Path(row.path or "").name, row.provider))
    if verdict is None:
        return f"not in the check result on {row.provider}", None
    if verdict["status"] != "pass":
        reason = "; ".join(verdict.get("failures") or []) or verdict.get("reason") or verdict["status"]
        return f"parity {verdict['status']}: {reason}", verdict
    return None, verdict


def to_markdown(choices: list[Choice]) -> str:
    """The table ``mnv2 bench --check`` prints and the pipeline's report ends with."""
    lines = [
        "| provider | batch | ship | p50 ms | vs eager | accuracy drop | faster but not shipped |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for c in choices:
        drop = "reference" if c.format == REFERENCE else _drop(c)
        cells = [c.provider, str(c.batch), f"{c.format} (`{c.file}`)" if c.format else "nothing qualified"]
        cells += [_num(c.p50_ms), f"{c.speedup_vs_eager:.2f}x" if c.speedup_vs_eager else "", drop]
        cells.append("; ".join(c.passed_over).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _drop(c: Choice) -> str:
    if c.acc_drop_pts is not None:
        return f"{c.acc_drop_pts:+.2f} pts"
    return f"top-1 agreement {c.top1_agreement:.2f}%" if c.top1_agreement is not None else ""


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.3g}"
