"""``mnv2 info ARTIFACT``: parameters, MACs, layers and (for exported files) the graph and its metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..fileio import json_text
from .options import JsonOut, check_json_out, default_model_file, said_written, write_json_out


def info(
    artifact: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="ARTIFACT",
            help="A checkpoint (best.pt), TorchScript file or ONNX model (FP32, INT8, FP16); default: model.onnx (else the first model file) of the newest folder under export/ with a manifest.json.",
            show_default=False,
        ),
    ] = None,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", help="Show the per-layer table.")] = True,
    json_out: JsonOut = None,
) -> None:
    """Parameters (total, per block), MACs at the artifact's input size, per-layer table, file and graph details."""
    from ..info import describe

    if artifact is None:
        artifact = default_model_file("info")
    check_json_out(json_out)
    result = describe(artifact)
    if not write_json_out(json_out, result.to_dict()):
        _print(result, layers)
        said_written(json_out)


def _print(r, show_layers: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..info import human

    console = Console(highlight=False)

    def say(text: str, style: str | None = None) -> None:  # plain text: shapes like [batch, 3] are not markup
        console.print(text, markup=False, style=style)

    m = r.model
    size = "x".join(map(str, m.input_size))
    say(f"{r.path}  {r.format}, {r.precision}, {r.file_size / 1e6:.2f} MB ({r.file_size:,} bytes)", "bold")
    say(f"parameters: {r.params:,} ({human(r.params)}) - {r.params_source}")
    say(f"MACs: {m.macs:,} ({human(m.macs)}) at {size} - {r.model_source}")  # its parameters are the line above
    say(m.macs_note, "dim")
    if r.onnx is not None:
        g = r.onnx
        say(f"ONNX: opset {g.opset}, IR version {g.ir_version}, producer {g.producer or '?'}, {g.nodes} nodes")
        for kind, values in (("input", g.inputs), ("output", g.outputs)):
            for v in values:
                say(f"  {kind} {v['name']}: {v['dtype']} [{', '.join(map(str, v['shape']))}]")
        say("  ops: " + ", ".join(f"{op} {n}" for op, n in g.op_counts.items()))
        q = ", ".join(f"{op} {n}" for op, n in g.quantized_nodes.items())
        say(f"  quantized nodes: {g.quantized_total}" + (f" ({q})" if q else ""))
        say(
            f"  initializers: {g.weight_elements:,} weight/bias values, {g.quant_param_elements:,} scale/zero-point values, "
            f"{g.other_constant_elements:,} other constants"
        )
    say("metadata:")
    for key, value in _metadata_lines(r.metadata):
        say(f"  {key}: {value}")

    blocks = Table(title="blocks", title_justify="left")
    for col, just in (("block", "left"), ("what", "left"), ("output", "left"), ("params", "right"), ("MACs", "right")):
        blocks.add_column(col, justify=just)
    for b in m.blocks:
        blocks.add_row(b.name, b.description, "x".join(map(str, b.output_shape[1:])), f"{b.params:,}", f"{b.macs:,}")
    blocks.add_row("total", "", "", f"{m.params:,}", f"{m.macs:,}", style="bold")
    console.print(blocks)
    if show_layers:
        table = Table(title="layers", title_justify="left")
        for col, just in (
            ("layer", "left"),
            ("type", "left"),
            ("output", "left"),
            ("params", "right"),
            ("MACs", "right"),
        ):
            table.add_column(col, justify=just)
        for row in m.layers:
            table.add_row(
                row.name, row.type, "x".join(map(str, row.output_shape[1:])), f"{row.params:,}", f"{row.macs:,}"
            )
        console.print(table)


def _training_line(summary: dict) -> str:
    """Which epoch the weights are from and what they scored, then the run's best when that was another epoch:
    ``epoch 20 of 20, val top-1 93.10% (the run's best: 93.17% at epoch 19)``."""

    def pct(v) -> str | None:
        return f"{100 * v:.2f}%" if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else None

    epoch, best_epoch = summary.get("epoch", "?"), summary.get("best_epoch")
    line = f"epoch {epoch} of {summary.get('epochs', '?')}"
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    if (acc := pct(final.get("val_acc"))) and final.get("epoch") == epoch:
        line += f", val top-1 {acc}"
    if best := pct(summary.get("best_val_acc")):
        line += (
            " (the run's best)"
            if best_epoch == epoch and acc == best
            else f" (the run's best: {best} at epoch {best_epoch if best_epoch is not None else '?'})"
        )
    return line


def _metadata_lines(meta: dict) -> list[tuple[str, str]]:
    """The embedded metadata, one short line per key (the full dict is in --json)."""
    lines = []
    names = meta.get("class_names", [])
    lines.append(("classes", f"{len(names)}: " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")))
    summary = meta.get("train_summary") or {}
    if summary:
        lines.append(("training", _training_line(summary)))
    for key, value in meta.items():
        if key in ("class_names", "train_summary"):
            continue
        text = json_text(value, indent=None) if not isinstance(value, str) else value
        lines.append((key, text if len(text) <= 160 else text[:157] + "..."))
    return lines
