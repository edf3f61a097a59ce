"""PNG of latency by format and provider: one panel per batch size, one bar group per format, one bar per provider
(and I/O mode); bar = p50, whisker = p90, both in ms on a log axis labelled in plain numbers (6, 20, 0.5, not
6 x 10^0). Rows that did not run are marked, not left out.

This module sits below ``result``: it reads a result's ``rows`` and ``machine`` and imports nothing of it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol


class Rows(Protocol):
    """What the plot reads of a :class:`~mnv2export.bench.result.BenchResult`."""

    rows: list[Any]  # BenchRow
    machine: dict[str, Any]


def provider_label(provider: str, io: str) -> str:
    """The provider as tables and legends show it: ``cuda (copies)`` for the rows that include host-device copies."""
    return provider + ("" if io == "resident" or provider == "cpu" else f" ({io})")


def plot_latency(result: Rows, path: Path) -> Path:
    from ..plots import save_figure

    return save_figure(latency_figure(result), path)


def latency_figure(result: Rows):
    """The figure :func:`plot_latency` saves (a ``matplotlib.figure.Figure``): a panel per batch size, a bar per
    format and (provider, I/O mode), on a log scale."""
    from matplotlib.patches import Patch

    from ..plots import pyplot

    plt = pyplot()
    batches = sorted({r.batch for r in result.rows})
    series = list(dict.fromkeys((r.provider, r.io) for r in result.rows))
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(4.2 * max(1, len(batches)) + 1, 4.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, batch in zip(axes[0], batches):
        _batch_panel(ax, result.rows, batch, series, colours)
    handles = [Patch(color=colours[k % len(colours)], label=provider_label(p, io)) for k, (p, io) in enumerate(series)]
    axes[0][0].legend(handles=handles, fontsize=8)
    m = result.machine
    gpu = (m.get("gpu") or {}).get("name") or "no GPU"
    fig.suptitle(f"mnv2 bench: {m.get('cpu_model')} (threads: {m.get('threads')}), {gpu}", fontsize=10)
    fig.tight_layout()
    return fig


def _batch_panel(ax, rows, batch: int, series: list[tuple[str, str]], colours: list[str]) -> None:
    """One batch size's bars (p50, whisker to p90), ``n/a`` or ``error`` where a row has no time, each p50 written
    inside its bar."""
    by_key = {(r.format, r.provider, r.batch, r.io): r for r in rows}
    formats = list(dict.fromkeys(r.format for r in rows))
    width = 0.8 / max(1, len(series))
    bars: list[tuple[float, float]] = []
    for k, (provider, io) in enumerate(series):
        xs, p50, err = [], [], []
        for i, fmt in enumerate(formats):
            r = by_key.get((fmt, provider, batch, io))
            x = i - 0.4 + width * (k + 0.5)
            if r is not None and r.ok and r.p50_ms:
                xs.append(x)
                p50.append(r.p50_ms)
                err.append(max(0.0, (r.p90_ms or r.p50_ms) - r.p50_ms))
            elif r is not None:
                label = "n/a" if r.status == "unavailable" else "error"
                ax.text(x, 0.02, label, transform=ax.get_xaxis_transform(), **_VERTICAL, color="grey")
        if xs:
            ax.bar(xs, p50, width, yerr=[[0] * len(err), err], capsize=2, color=colours[k % len(colours)])
            bars += list(zip(xs, p50))
    ax.set_xticks(range(len(formats)), formats, rotation=30)
    ax.set_yscale("log")
    plain_log_labels(ax.yaxis)
    if bars:
        lowest = min(y for _, y in bars)
        ax.set_ylim(bottom=lowest / 3)  # every bar shows, the shortest too
        for x, y in bars:  # the p50 inside its bar, at the bottom
            ax.text(x, lowest / 2.6, f"{y:.0f}" if y >= 100 else f"{y:.3g}", **_VERTICAL, color="white")
    ax.set_title(f"batch {batch}")
    ax.set_ylabel("latency per call, ms (p50, whisker p90)")
    ax.grid(axis="y", alpha=0.3, which="both")


_VERTICAL = {"rotation": 90, "ha": "center", "va": "bottom", "fontsize": 7}


# Minor ticks (2, 3, ... 9 times a power of ten) get labels only where few decades show, as matplotlib's own
# LogFormatter chooses them: every one within half a decade, 2, 3, 4 and 6 within two, none beyond.
_MINOR_SOME, _MINOR_NONE = 0.5, 2.0


def plain_log_labels(axis) -> None:
    """Label a log axis's ticks as plain numbers: ``6``, ``20``, ``0.5``, ``1000``, where matplotlib writes
    ``6 x 10^0`` (its default, LogFormatterSciNotation) or ``1e-01`` (LogFormatter)."""
    from matplotlib.ticker import FuncFormatter

    def minor(x: float, _pos=None) -> str:
        lo, hi = sorted(axis.get_view_interval())
        decades = math.log10(hi / lo) if lo > 0 else math.inf
        digit = round(x / 10 ** math.floor(math.log10(x) + 1e-9)) if x > 0 else 0
        if decades > _MINOR_NONE or (decades > _MINOR_SOME and digit not in (2, 3, 4, 6)):
            return ""
        return plain_number(x)

    axis.set_major_formatter(FuncFormatter(lambda x, _pos=None: plain_number(x)))
    axis.set_minor_formatter(FuncFormatter(minor))


def plain_number(x: float) -> str:
    """``6.0`` -> ``6``, ``0.30000000000000004`` -> ``0.3``, ``1e-05`` -> ``0.00001``: never an exponent."""
    import numpy as np

    return np.format_float_positional(float(x), precision=6, unique=False, fractional=False, trim="-")
