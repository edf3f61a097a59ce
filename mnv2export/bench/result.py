"""What ``bench.run`` returns: one :class:`BenchRow` per (format, provider, batch, I/O mode) and the machine."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..fileio import json_text
from .plot import plot_latency, provider_label


@dataclass
class BenchRow:
    """One measured (or unavailable, or failed) combination. Latencies are per call of ``batch`` images, in ms."""

    format: str  # eager, torchscript, onnx, int8, fp16
    provider: str  # cpu, cuda, tensorrt
    batch: int
    io: str = "resident"  # resident (input and output on the device) or copies (host-device copies timed too)
    status: str = "ok"  # ok | unavailable | error
    reason: str | None = None  # why unavailable, or the error
    note: str | None = None  # ok rows: what to know (e.g. ONNX nodes that ran off the GPU)
    path: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    iters: int | None = None  # timed calls
    throughput: float | None = None  # images / s over the timed loop (batch / mean)
    session_s: float | None = None  # loading: file checks, metadata, model build / TorchScript load / ORT session
    first_s: float | None = None  # the first inference after loading (lazy initialisation, kernel selection)
    peak_host_mb: float | None = None  # peak RSS of the process during the row
    host_added_mb: float | None = None  # that peak minus the RSS when the row started
    gpu_mem_mb: float | None = None  # CUDA rows: see targets.GpuPeak
    speedup_vs_eager: float | None = None  # eager p50 / this p50, same provider, batch and I/O mode
    file_mb: float | None = None  # the artifact's size on disk (exported rows)
    export_s: float | None = None  # how long its export took, as its manifest entry records
    placement: dict[str, Any] | None = field(default=None, repr=False)  # ONNX off the CPU: nodes per provider

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return f"{self.format}/{self.provider}" + ("" if self.io == "resident" else f"/{self.io}")

    @property
    def provider_label(self) -> str:
        """The provider as tables show it: ``cuda (copies)`` for the rows that include host-device copies."""
        return provider_label(self.provider, self.io)

    def cells(self) -> list[str]:
        """The table cells of a measured row, after format, provider and batch: p50, p90, p99, mean ± std, img/s,
        vs eager, load s, first s, peak RSS MB, GPU MB, note."""
        return [
            _f(self.p50_ms),
            _f(self.p90_ms),
            _f(self.p99_ms),
            f"{_f(self.mean_ms)} ± {_f(self.std_ms)}",
            _f(self.throughput, 0),
            f"{self.speedup_vs_eager:.2f}x" if self.speedup_vs_eager else "",
            _f(self.session_s, 2),
            _f(self.first_s, 3),
            _f(self.peak_host_mb, 0),
            _f(self.gpu_mem_mb, 0),
            self.note or "",
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ROW_FIELDS = [f.name for f in fields(BenchRow)]
MACHINE_COLUMNS = ("cpu_model", "physical_cores", "threads", "gpu", "torch", "onnxruntime", "mnv2export")


@dataclass
class BenchResult:
    rows: list[BenchRow]
    machine: dict[str, Any]  # cpu_model, physical_cores, threads, gpu, versions, ... (machine.machine_info)
    settings: dict[str, Any] = field(default_factory=dict)  # target, artifacts, warm-up / timing plan, ...

    def row(self, format: str, provider: str = "cpu", batch: int = 1, io: str = "resident") -> BenchRow | None:
        return next(
            (r for r in self.rows if (r.format, r.provider, r.batch, r.io) == (format, provider, batch, io)), None
        )

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        """Back from :meth:`to_dict` (or a ``--json`` file)."""
        rows = [BenchRow(**{k: v for k, v in r.items() if k in ROW_FIELDS}) for r in data["rows"]]
        return cls(rows=rows, machine=data["machine"], settings=data.get("settings", {}))

    def to_json(self, path: str | Path) -> Path:
        from ..fileio import write_text

        return write_text(path, json_text(self.to_dict()) + "\n")

    def _machine_cells(self) -> dict[str, Any]:
        m, v = self.machine, self.machine.get("versions", {})
        gpu = (m.get("gpu") or {}).get("name") if isinstance(m.get("gpu"), dict) else m.get("gpu")
        return {
            "cpu_model": m.get("cpu_model"),
            "physical_cores": m.get("physical_cores"),
            "threads": m.get("threads"),
            "gpu": gpu,
            "torch": v.get("torch"),
            "onnxruntime": v.get("onnxruntime"),
            "mnv2export": v.get("mnv2export"),
        }

    def to_csv(self, path: str | Path | None = None) -> str:
        """One line per row, every BenchRow field (placement as JSON) and the machine columns; written to ``path``
        when given. Returns the text."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*ROW_FIELDS, *MACHINE_COLUMNS], lineterminator="\n")
        writer.writeheader()
        machine = self._machine_cells()
        for r in self.rows:
            d = r.to_dict()
            d["placement"] = json_text(d["placement"], indent=None) if d["placement"] else None
            writer.writerow({**d, **machine})
        if path is not None:
            from ..fileio import write_text

            write_text(path, buf.getvalue())
        return buf.getvalue()

    def summary_line(self) -> str:
        m = self.machine
        gpu = (m.get("gpu") or {}).get("name") or "none"
        s = self.settings
        from .machine import busy

        why = busy(m)
        warn = f"; BUSY MACHINE: {why}, timings inflated and noisy" if why else ""
        return (
            f"{m.get('cpu_model')}, {m.get('physical_cores')} physical cores, {m.get('threads')} threads used; GPU: {gpu}; "
            f"torch {m['versions']['torch'] or 'not installed'}, onnxruntime {m['versions']['onnxruntime']}; {s.get('plan', '')}{warn}"
        )

    def to_markdown(self) -> str:
        """The table for a report: one line per row, latencies in ms, speed-up against eager on the same provider."""
        head = [
            "format",
            "provider",
            "batch",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "mean ± std ms",
            "img/s",
            "vs eager",
            "load s",
            "first s",
            "peak RSS MB",
            "GPU MB",
            "note",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            rest = r.cells() if r.ok else [*[""] * 10, f"{r.status}: {r.reason}"]
            cells = [r.format, r.provider_label, str(r.batch), *rest]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines) + f"\n\n{self.summary_line()}\n"

    def plot(self, path: str | Path) -> Path:
        return plot_latency(self, Path(path))


def _f(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return ""
    if digits is None:
        digits = 3 if value < 1 else 2 if value < 100 else 1
    return f"{value:.{digits}f}"


__all__ = ["BenchResult", "BenchRow"]
