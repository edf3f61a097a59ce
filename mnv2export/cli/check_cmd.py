"""``mnv2 check``: parity and accuracy of every exported artifact against the trained model; exit 1 when a tolerance
is broken (the table says which and by how much)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import JsonOut, Provider, check_json_out, csv_list, default_export, said_written, write_json_out


def check(
    checkpoint: Annotated[
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
    ] = None,
    artifacts: Annotated[
        Optional[Path],
        typer.Option(
            "--artifacts",
            "-a",
            help="With a checkpoint: the folder written by `mnv2 export` (with manifest.json); default export/<run>.",
        ),
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data",
            help="Real images: synth, fashion-mnist, an ImageFolder root (val/ is used) or a folder of images (default: the checkpoint's own validation data).",
        ),
    ] = None,
    provider: Provider = "cpu",
    samples: Annotated[
        Optional[int],
        typer.Option(
            "--samples",
            "-n",
            help="Real images to compare on (drawn at random, seeded; default 500).",
            show_default=False,
        ),
    ] = None,
    atol: Annotated[
        Optional[float],
        typer.Option(
            "--atol",
            help="Absolute bound for FP32 logits (default 1e-4); for FP16 a fraction of each sample's largest |logit| (default 2e-2).",
        ),
    ] = None,
    rtol: Annotated[
        Optional[float],
        typer.Option(
            "--rtol",
            help="Relative bound for FP32 / FP16 logits (default 1e-3 / 5e-2); a logit fails only past both --atol and --rtol.",
        ),
    ] = None,
    min_top1_agreement: Annotated[
        Optional[float],
        typer.Option(
            "--min-top1-agreement",
            help="Percent of samples on which every artifact must pick the reference's class (default FP32 100, FP16 and INT8 99).",
        ),
    ] = None,
    max_acc_drop: Annotated[
        Optional[float],
        typer.Option("--max-acc-drop", help="Top-1 accuracy points INT8 may lose on labelled data (default 1)."),
    ] = None,
    json_out: JsonOut = None,
    debug_int8: Annotated[
        bool,
        typer.Option(
            "--debug-int8",
            help="Name the INT8 layers whose activations diverge most from FP32 (ONNX Runtime's QDQ debugger).",
        ),
    ] = False,
) -> None:
    """Compare every artifact with the checkpoint's PyTorch model: logits, top-1/top-5 agreement, accuracy.

    Without TARGET: the --artifacts folder, else the newest export folder under export/ (said on the first line),
    each checked against the checkpoint its manifest.json names.
    """
    from ..parity_report import with_overrides

    if checkpoint is None:  # a folder alone is checked against the checkpoint its manifest names
        checkpoint, artifacts = artifacts or default_export("check"), None
    check_json_out(json_out)
    tolerances = with_overrides(
        atol=atol, rtol=rtol, min_top1_agreement=min_top1_agreement, max_acc_drop_pts=max_acc_drop
    )
    from .. import parity

    report = parity.check(
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
    from rich.table import Table

    from ..parity_report import details, format_metrics, num

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    table = Table(
        title=f"parity against {Path(report.checkpoint).name} (PyTorch FP32, eval, CPU)", title_justify="left"
    )
    for name, justify in (
        ("artifact", "left"),
        ("prec", "left"),
        ("provider", "left"),
        ("status", "left"),
        ("max abs", "right"),
        ("mean abs", "right"),
        ("max rel", "right"),
        ("cosine", "right"),
        ("top-1", "right"),
        ("top-5", "right"),
        ("acc ref", "right"),
        ("acc", "right"),
        ("drop", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=name != "artifact")
    style = {"pass": "green", "fail": "bold red", "unavailable": "yellow", "error": "bold red"}
    for r in report.rows:
        table.add_row(
            escape(r.artifact), r.precision, r.provider, f"[{style[r.status]}]{r.status}[/]", *format_metrics(r.metrics)
        )
    console.print(table)
    for r in report.rows:
        if r.status != "pass" and details(r):
            console.print(
                f"[{style[r.status]}]{r.status}[/] {escape(r.artifact)} on {r.provider}: " + escape(details(r)),
                soft_wrap=True,
            )
    if report.int8_debug and report.int8_debug.get("layers"):
        dbg = Table(
            title=f"INT8 vs FP32 by tensor ({report.int8_debug['samples']} images; SQNR in dB, higher is better)",
            title_justify="left",
        )
        for name in ("tensor", "layer", "SQNR vs FP32", "SQNR of its inputs", "dB lost here"):
            dbg.add_column(name, justify="left" if name in ("tensor", "layer") else "right")
        for t in report.int8_debug["layers"]:
            dbg.add_row(
                escape(t["tensor"]),
                escape(t["layer"]),
                *(num(t[k], ".1f") for k in ("xmodel_sqnr_db", "input_sqnr_db", "lost_db")),
            )
        console.print(dbg)
    for note in report.notes:
        console.print(f"- {note}", soft_wrap=True, markup=False)
    console.print(
        "[green]passed[/]"
        if report.passed
        else "[bold red]FAILED[/]: " + ", ".join(f"{r.artifact}/{r.provider}" for r in report.rows if not r.passed)
    )
