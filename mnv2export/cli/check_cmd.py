"""``mnv2 check``: parity and accuracy of every exported artifact against the trained model; exit 1 when a tolerance
is broken (the table says which and by how much)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import JsonOut, Provider, check_json_out, csv_list, default_export, said_written, write_json_out

Target = Annotated[
    Optional[Path],
    typer.Argument(
        metavar="TARGET",
        show_default=False,
        help=(
            "A checkpoint written by `mnv2 train` (best.pt / last.pt), or a folder written by `mnv2 export`: it is then "
            "checked against the checkpoint its manifest.json names. Default: --artifacts, else the newest folder under "
            "export/ with a manifest.json."
        ),
    ),
]
Artifacts = Annotated[
    Optional[Path],
    typer.Option(
        "--artifacts",
        "-a",
        help="With a checkpoint: the folder written by `mnv2 export` (with manifest.json); default export/<run>.",
    ),
]
RealData = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="Real images: synth, fashion-mnist, an ImageFolder root (val/ is used) or a folder of images (default: the checkpoint's own validation data).",
    ),
]
Samples = Annotated[
    Optional[int],
    typer.Option(
        "--samples",
        "-n",
        help="Real images to compare on (drawn at random, seeded; default 500).",
        show_default=False,
    ),
]
Atol = Annotated[
    Optional[float],
    typer.Option(
        "--atol",
        help="Absolute bound for FP32 logits (default 1e-4); for FP16 a fraction of each sample's largest |logit| (default 2e-2).",
    ),
]
Rtol = Annotated[
    Optional[float],
    typer.Option(
        "--rtol",
        help="Relative bound for FP32 / FP16 logits (default 1e-3 / 5e-2); a logit fails only past both --atol and --rtol.",
    ),
]
MinTop1Agreement = Annotated[
    Optional[float],
    typer.Option(
        "--min-top1-agreement",
        help="Percent of samples on which every artifact must pick the reference's class (default FP32 100, FP16 and INT8 99).",
    ),
]
MaxAccDrop = Annotated[
    Optional[float],
    typer.Option("--max-acc-drop", help="Top-1 accuracy points INT8 may lose on labelled data (default 1)."),
]
DebugInt8 = Annotated[
    bool,
    typer.Option(
        "--debug-int8",
        help="Name the INT8 layers whose activations diverge most from FP32 (ONNX Runtime's QDQ debugger).",
    ),
]
STATUS_STYLE = {"pass": "green", "fail": "bold red", "unavailable": "yellow", "error": "bold red"}
METRIC_COLUMNS = ("max abs", "mean abs", "max rel", "cosine", "top-1", "top-5", "acc ref", "acc", "drop")


def check(
    checkpoint: Target = None,
    artifacts: Artifacts = None,
    data: RealData = None,
    provider: Provider = "cpu",
    samples: Samples = None,
    atol: Atol = None,
    rtol: Rtol = None,
    min_top1_agreement: MinTop1Agreement = None,
    max_acc_drop: MaxAccDrop = None,
    json_out: JsonOut = None,
    debug_int8: DebugInt8 = False,
) -> None:
    """Compare every artifact with the checkpoint's PyTorch model: logits, top-1/top-5 agreement, accuracy.

    Without TARGET: the --artifacts folder, else the newest export folder under export/ (said on the first line),
    each checked against the checkpoint its manifest.json names.
    """
    from ..check import check as check_artifacts
    from ..check import with_overrides

    if checkpoint is None:  # a folder alone is checked against the checkpoint its manifest names
        checkpoint, artifacts = artifacts or default_export("check"), None
    check_json_out(json_out)
    tolerances = with_overrides(
        atol=atol, rtol=rtol, min_top1_agreement=min_top1_agreement, max_acc_drop_pts=max_acc_drop
    )
    report = check_artifacts(
        checkpoint,
        artifacts,
        data=data,
        providers=csv_list(provider, "--provider"),
        samples=samples,
        tolerances=tolerances,
        debug_int8=debug_int8,
    )
    if not write_json_out(json_out, report.to_dict()):
        _print(report)
        said_written(json_out)
    if not report.passed:
        raise typer.Exit(code=1)


def _print(report) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape

    from ..check.report import details

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    console.print(_parity_table(report))
    for r in report.rows:
        if r.status != "pass" and details(r):
            console.print(
                f"[{STATUS_STYLE[r.status]}]{r.status}[/] {escape(r.artifact)} on {r.provider}: " + escape(details(r)),
                soft_wrap=True,
            )
    if report.int8_debug and report.int8_debug.get("layers"):
        console.print(_int8_table(report.int8_debug))
    for note in report.notes:
        console.print(f"- {note}", soft_wrap=True, markup=False)
    console.print(
        "[green]passed[/]"
        if report.passed
        else "[bold red]FAILED[/]: " + ", ".join(f"{r.artifact}/{r.provider}" for r in report.rows if not r.passed)
    )


def _parity_table(report):
    """One line per artifact and provider: its status and metrics."""
    from rich.markup import escape
    from rich.table import Table

    from ..check.report import format_metrics

    table = Table(
        title=f"parity against {Path(report.checkpoint).name} (PyTorch FP32, eval, CPU)", title_justify="left"
    )
    for name in ("artifact", "prec", "provider", "status"):
        table.add_column(name, justify="left", no_wrap=name != "artifact")
    for name in METRIC_COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    for r in report.rows:
        status = f"[{STATUS_STYLE[r.status]}]{r.status}[/]"
        table.add_row(escape(r.artifact), r.precision, r.provider, status, *format_metrics(r.metrics))
    return table


def _int8_table(dbg: dict):
    """``--debug-int8``: the tensors where INT8 diverges most from FP32."""
    from rich.markup import escape
    from rich.table import Table

    from ..check.report import sqnr_cells

    table = Table(
        title=f"INT8 vs FP32 by tensor ({dbg['samples']} images; SQNR in dB, higher is better)", title_justify="left"
    )
    for name in ("tensor", "layer", "SQNR vs FP32", "SQNR of its inputs", "dB lost here"):
        table.add_column(name, justify="left" if name in ("tensor", "layer") else "right")
    for t in dbg["layers"]:
        table.add_row(escape(t["tensor"]), escape(t["layer"]), *sqnr_cells(t))
    return table
