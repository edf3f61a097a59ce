"""The one table from the library's parameter names to the CLI's flags, read from the typer app itself.

A library error names a parameter in braces (``{calib_size}``, see :mod:`mnv2export.errors`); the CLI prints it as the
flag that sets it (``--calib-size``). The table is built from every command's options, so a new option is in it at
once; ``RENAMED`` holds the parameters whose library name differs from the option's.
"""

from __future__ import annotations

from functools import cache

import typer

# library parameter -> the flag that sets it, where the two names differ
RENAMED = {
    "batches": "--batch",
    "batch_sizes": "--batch",
    "providers": "--provider",
    "formats": "--format",  # export's; bench's --formats is named alike
    "calib_method": "--calib-method",
    "max_acc_drop_pts": "--max-acc-drop",
    "img_size": "--img-size",
    "top_k": "--top-k",
}


@cache
def flag_names() -> dict[str, str]:
    """parameter name -> its flag (``calib_size`` -> ``--calib-size``), from every command of the app."""
    from . import app

    names: dict[str, str] = {}
    for command in typer.main.get_command(app).commands.values():
        for sub in getattr(command, "commands", {}).values() or [command]:
            _add_options(sub, names)
        _add_options(command, names)
    return {**names, **RENAMED}


def _add_options(command, names: dict[str, str]) -> None:
    for param in command.params:
        longs = [o for o in param.opts if o.startswith("--")]
        if longs and param.name:
            names.setdefault(param.name, longs[0])
