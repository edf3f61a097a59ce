"""PNG of latency by format and provider: one panel per batch size, one bar group per format, one bar per provider
(and I/O mode); bar = p50, whisker = p90, both in ms on a log axis. Rows that did not run are marked, not left out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import BenchResult


def plot_latency(result: BenchResult, path: Path) -> Path:
    from ..plots import _plt, _save

    plt = _plt()
    rows = result.rows
    batches = sorted({r.batch for r in rows})
    formats = list(dict.fromkeys(r.format for r in rows))
    series = list(dict.fromkeys((r.provider, r.io) for r in rows))
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(4.2 * max(1, len(batches)) + 1, 4.2), squeeze=False)
    width = 0.8 / max(1, len(series))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, batch in zip(axes[0], batches):
        lowest, labels = float("inf"), []
        for k, (provider, io) in enumerate(series):
            xs, p50, err = [], [], []
            for i, fmt in enumerate(formats):
                r = result.row(fmt, provider, batch, io)
                x = i - 0.4 + width * (k + 0.5)
                if r is None:
                    continue
                if r.ok and r.p50_ms:
                    xs.append(x)
                    p50.append(r.p50_ms)
                    err.append(max(0.0, (r.p90_ms or r.p50_ms) - r.p50_ms))
                else:
                    ax.text(x, 0.02, "n/a" if r.status == "unavailable" else "error", transform=ax.get_xaxis_transform(),
                            rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
            if xs:
                ax.bar(xs, p50, width, yerr=[[0] * len(err), err], capsize=2, color=colours[k % len(colours)])
                labels += list(zip(xs, p50))
                lowest = min(lowest, *p50)
        ax.set_xticks(range(len(formats)), formats, rotation=30)
        ax.set_yscale("log")
        if lowest < float("inf"):
            ax.set_ylim(bottom=lowest / 3)  # every bar shows, the shortest too
        for x, y in labels:  # the p50 inside its bar, at the bottom
            ax.text(x, lowest / 2.6, f"{y:.0f}" if y >= 100 else f"{y:.3g}", rotation=90, ha="center", va="bottom", fontsize=7, color="white")
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("latency per call, ms (p50, whisker p90)")
        ax.grid(axis="y", alpha=0.3, which="both")
    from matplotlib.patches import Patch

    from .result import provider_label

    handles = [Patch(color=colours[k % len(colours)], label=provider_label(p, io))
               for k, (p, io) in enumerate(series)]
    axes[0][0].legend(handles=handles, fontsize=8)
    m = result.machine
    gpu = (m.get("gpu") or {}).get("name") or "no GPU"
    fig.suptitle(f"mnv2 bench: {m.get('cpu_model')} (threads: {m.get('threads')}), {gpu}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
