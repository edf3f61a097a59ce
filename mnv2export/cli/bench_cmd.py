"""``mnv2 bench``: latency of every format on every provider, as a table (speed-up against eager), JSON, CSV, PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import JsonOut, check_json_out, csv_list, default_export, said_written, write_json_out


def _batches(text: str) -> list[int]:
    try:
        return [int(b) for b in csv_list(text, "--batch")]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated whole numbers, got {text!r}", param_hint="--batch"
        ) from None


def _warmup(text: str) -> tuple[int, Optional[float]]:
    """``10`` (calls) or ``2s`` / ``1.5s`` (seconds) -> (count, seconds or None)."""
    t = text.strip().lower()
    try:
        if t.endswith("s"):
            return 0, float(t[:-1])
        return int(t), None
    except ValueError:
        raise typer.BadParameter(
            f"expected a number of calls (10) or seconds (2s), got {text!r}", param_hint="--warmup"
        ) from None


Target = Annotated[
    Optional[Path],
    typer.Argument(
        metavar="TARGET",
        help="An artifacts folder written by `mnv2 export` (with manifest.json), or a checkpoint; default: the newest folder under export/ with a manifest.json.",
        show_default=False,
    ),
]
Formats = Annotated[
    str, typer.Option("--formats", "-f", help="eager, torchscript, onnx, int8, fp16 or all (comma-separated).")
]
Providers = Annotated[
    str,
    typer.Option(
        "--provider",
        help="Execution provider(s): cpu, cuda, tensorrt (ONNX rows only) or all (cpu and cuda), comma-separated.",
    ),
]
Batches = Annotated[str, typer.Option("--batch", "-b", help="Batch sizes, comma-separated.")]
Warmup = Annotated[str, typer.Option("--warmup", help="Warm-up before timing: calls (10) or seconds (2s).")]
Iters = Annotated[Optional[int], typer.Option("--iters", help="Timed calls per row (excludes --duration).")]
Duration = Annotated[
    Optional[float], typer.Option("--duration", help="Seconds of timed calls per row (default 2, at least 10 calls).")
]
Threads = Annotated[
    Optional[int], typer.Option("--threads", help="Intra-op threads (default: the machine's physical cores).")
]
IncludeCopies = Annotated[
    bool,
    typer.Option(
        "--include-copies", help="On CUDA, also time with host arrays in and out (host-device copies inside the timer)."
    ),
]
Amp = Annotated[
    bool,
    typer.Option(
        "--amp",
        help="Also time eager and TorchScript under torch.autocast (FP16 on CUDA, BF16 on the CPU) as <format>+amp rows.",
    ),
]
CudaGraph = Annotated[
    bool,
    typer.Option(
        "--cuda-graph",
        help="On CUDA, also time each ONNX format as a CUDA graph (ONNX Runtime's enable_cuda_graph) as <format>+graph rows.",
    ),
]
Rounds = Annotated[
    int,
    typer.Option(
        "--rounds", help="Repeat the sweep, alternating its order, and pool the timings (for shared machines)."
    ),
]
CsvOut = Annotated[Optional[Path], typer.Option("--csv", help="Also write the rows (and machine columns) as CSV.")]
PlotOut = Annotated[Optional[Path], typer.Option("--plot", help="Also write a PNG of latency by format and provider.")]
CheckResult = Annotated[
    Optional[Path],
    typer.Option(
        "--check",
        metavar="CHECK_JSON",
        help="A `mnv2 check --json` result of these files: end with what to ship, the fastest file that passed its check for each provider and batch.",
    ),
]
Strict = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Exit 1 when any row failed (error), not only when none was measured; unavailable rows do not count.",
    ),
]


def bench(
    target: Target = None,
    formats: Formats = "all",
    provider: Providers = "all",
    batch: Batches = "1,8,32",
    warmup: Warmup = "10",
    iters: Iters = None,
    duration: Duration = None,
    threads: Threads = None,
    include_copies: IncludeCopies = False,
    amp: Amp = False,
    cuda_graph: CudaGraph = False,
    rounds: Rounds = 1,
    json_out: JsonOut = None,
    csv_out: CsvOut = None,
    plot_out: PlotOut = None,
    check: CheckResult = None,
    strict: Strict = False,
) -> None:
    """Time each format (eager, TorchScript, ONNX FP32 / INT8 / FP16) on each provider and batch size.

    Without TARGET: the newest export folder under export/ (said on the first line).
    """
    from ..bench import run
    from ..bench.ship import read_check
    from ..fileio import check_output_file

    count, seconds = _warmup(warmup)
    parity = read_check(check) if check is not None else None  # before minutes of timing
    if target is None:
        target = default_export("bench")
    check_json_out(json_out)  # the output paths before minutes of timing, not after
    for path, option in ((csv_out, "--csv"), (plot_out, "--plot")):
        if path:
            check_output_file(path, option)
    result = run(
        target,
        formats=csv_list(formats, "--formats"),
        providers=csv_list(provider, "--provider"),
        batches=_batches(batch),
        warmup=count,
        warmup_s=seconds,
        iters=iters,
        duration=duration,
        threads=threads,
        include_copies=include_copies,
        rounds=rounds,
        amp=amp,
        cuda_graph=cuda_graph,
    )
    _write_outputs(result, parity, json_out, csv_out, plot_out)
    _raise_unless_measured(result, target, strict)


def _write_outputs(result, parity, json_out: Path | None, csv_out: Path | None, plot_out: Path | None) -> None:
    """The table and what to ship (unless ``--json -`` printed the JSON instead), and the files asked for; no plot
    of nothing."""
    from ..bench.ship import recommend, to_markdown

    choices = recommend(result, parity) if parity is not None else None
    data = result.to_dict() | ({"ship": [c.to_dict() for c in choices]} if choices is not None else {})
    printed = write_json_out(json_out, data)
    if csv_out:
        result.to_csv(csv_out)
    measured = any(r.ok for r in result.rows)
    if plot_out and measured:
        result.plot(plot_out)
    if not printed:
        _print(result)
        if choices is not None:
            typer.echo(f"\nWhat to ship (the fastest file that passed its parity check):\n{to_markdown(choices)}")
        said_written(json_out, csv_out, plot_out if measured else None)


def _raise_unless_measured(result, target: Path, strict: bool) -> None:
    """Exit 1 when no row was measured, or (``--strict``) when any row failed."""
    from ..errors import Mnv2Error

    if not any(r.ok for r in result.rows):
        first = result.rows[0] if result.rows else None
        raise Mnv2Error(
            f"no row could be measured ({first.label} batch {first.batch}: {first.reason})"
            if first
            else "nothing to measure",
            path=target,
            hint="see each row's reason above",
        )
    failed = [r for r in result.rows if r.status == "error"]
    if strict and failed:
        raise Mnv2Error(
            f"{len(failed)} row(s) failed ({failed[0].label} batch {failed[0].batch}: {failed[0].reason})",
            path=target,
            hint="--strict makes a failed row fatal; see each row's reason above",
        )


def _print(result) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title="mnv2 bench: latency per call (ms), speed-up against PyTorch eager on the same provider and batch"
    )
    for name, justify in (
        ("format", "left"),
        ("provider", "left"),
        ("batch", "right"),
        ("p50", "right"),
        ("p90", "right"),
        ("p99", "right"),
        ("mean ± std", "right"),
        ("img/s", "right"),
        ("vs eager", "right"),
        ("load s", "right"),
        ("first s", "right"),
        ("peak RSS MB", "right"),
        ("GPU MB", "right"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")
    shown: set[tuple[str, str]] = set()
    reasons: list[tuple[str, str]] = []  # (style, text) of each row that did not run, said in full under the table
    for r in result.rows:
        prov = r.provider_label
        if r.ok:
            table.add_row(r.format, prov, str(r.batch), *r.cells())
            continue
        # one line per (provider, reason) for rows that did not run: the same reason for every batch says nothing new
        key = (r.provider, r.reason or "")
        if r.status == "unavailable" and key in shown:
            continue
        shown.add(key)
        same = (
            [x for x in result.rows if x.status == "unavailable" and (x.provider, x.reason) == key]
            if r.status == "unavailable"
            else [r]
        )
        fmts = ", ".join(dict.fromkeys(x.format for x in same))
        batches = ", ".join(str(b) for b in dict.fromkeys(x.batch for x in same))
        style = "yellow" if r.status == "unavailable" else "red"
        reasons.append((style, f"{r.status}: {fmts} on {prov}, batch {batches}: {r.reason}"))
        table.add_row(fmts, prov, batches, *[""] * 10, f"[{style}]{r.status} [{len(reasons)}][/{style}]")
    console = Console(width=max(160, Console().width))
    console.print(table)
    for i, (style, text) in enumerate(reasons, 1):  # in full, not folded into the narrow note column
        console.print(f"[{style}]\\[{i}][/{style}] {escape(text)}", soft_wrap=True, highlight=False)
    console.print(result.summary_line(), soft_wrap=True, highlight=False)
    failed = sum(r.status == "error" for r in result.rows)
    if failed and any(r.ok for r in result.rows):  # none measured: the command's error line says so instead
        console.print(f"[red]{failed} row(s) failed[/red]; the others were measured", highlight=False)
