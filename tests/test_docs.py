"""The docs agree with the code: the committed CLI reference is the one the typer app generates."""

from __future__ import annotations

from pathlib import Path

from mnv2export.cli.reference import markdown

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_cli_reference_matches_the_app():
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == markdown(), "docs/cli.md is stale: run python -m mnv2export.cli.reference > docs/cli.md"


def test_every_command_of_the_app_has_a_section_in_the_reference():
    import typer.main

    from mnv2export.cli import app

    names = typer.main.get_command(app).commands
    text = markdown()
    assert len(names) >= 9
    for name in names:
        assert f"## `mnv2 {name}`" in text
