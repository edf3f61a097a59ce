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
    "artifacts_dir": "--artifacts",
}


@cache
def flag_names(command: str | None = None) -> dict[str, str]:
    """parameter name -> its flag (``calib_size`` -> ``--calib-size``): ``command``'s own options first, then the
    other commands' and ``RENAMED`` (bench's ``formats`` is ``--formats``, export's library ``formats`` is
    ``--format``)."""
    from . import app

    group = typer.main.get_command(app)
    names = dict(RENAMED)
    for cmd in group.commands.values():
        for sub in [*getattr(cmd, "commands", {}).values(), cmd]:
            _add_options(sub, names, replace=False)
    if command in group.commands:
        _add_options(group.commands[command], names, replace=True)
    return names


def _add_options(command, names: dict[str, str], *, replace: bool) -> None:
    for param in command.params:
        longs = [o for o in param.opts if o.startswith("--")]
        if longs and param.name and (replace or param.name not in names):
            names[param.name] = longs[0]
