"""The ``mnv2`` command: a typer app whose commands parse options, call one library function and print its result.

Heavy libraries (torch, onnxruntime) are imported inside the commands, so ``mnv2 --help`` answers at once.
Errors: a known error prints ``error: <what> (<file>): <how to fix>`` and exits 1; a malformed command line exits 2;
``MNV2_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer
import typer.core

from ..errors import Mnv2Error, Terminated, first_line


class Interrupted(BaseException):
    """Ctrl-C inside a command. Typer turns a KeyboardInterrupt into a silent exit 130; raised as this instead, it
    reaches :func:`main`, which says ``error: interrupted``."""


class _Group(typer.core.TyperGroup):
    def invoke(self, ctx):  # every command, subcommands included, runs inside this call
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted from None


app = typer.Typer(
    cls=_Group,
    name="mnv2",
    help="Train MobileNetV2 classifiers, export them (TorchScript, ONNX FP32/INT8/FP16), check parity and benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from .version import report

        typer.echo("\n".join(report()))
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version of mnv2export, torch, torchvision, onnx and onnxruntime, and ONNX Runtime's providers.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


def setup_logging(level: int = logging.INFO) -> None:
    logger = logging.getLogger("mnv2export")
    logger.setLevel(level)
    if not any(getattr(h, "_mnv2", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(message)s" if level > logging.DEBUG else "%(levelname)s %(name)s: %(message)s")
        )
        handler._mnv2 = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    else:
        for h in logger.handlers:
            h.setLevel(level)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (it may be replaced, e.g. by a test runner)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _register() -> None:
    """Every command, in the order ``mnv2 --help`` lists them (the workflow's); the command modules define plain
    functions and never import the app."""
    from . import (
        bench_cmd,
        check_cmd,
        data_cmd,
        export_cmd,
        info_cmd,
        pipeline_cmd,
        predict_cmd,
        train_cmd,
        visualize_cmd,
    )

    for command in (
        train_cmd.train,
        export_cmd.export,
        check_cmd.check,
        bench_cmd.bench,
        info_cmd.info,
        predict_cmd.predict,
        visualize_cmd.visualize,
        pipeline_cmd.pipeline,
    ):
        app.command()(command)
    data_app = typer.Typer(help="Data set helpers.", no_args_is_help=True)
    data_app.command("synth")(data_cmd.data_synth)
    app.add_typer(data_app, name="data")


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mnv2`` console script."""
    debug = os.environ.get("MNV2_DEBUG", "") not in ("", "0")
    try:
        code = app(args=argv, prog_name="mnv2", standalone_mode=False)
        return int(code or 0)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # typer's (vendored click) usage errors: bad option, bad value type
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            return 0
        where = f" (try '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"error: {exc.format_message()}{where}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except Terminated:
        print(f"error: {Terminated.what}", file=sys.stderr)
        return Terminated.exit_code
    except (KeyboardInterrupt, Interrupted):
        print("error: interrupted", file=sys.stderr)
        return 130
    except Mnv2Error as exc:
        if debug:
            traceback.print_exc()
        from .flags import flag_names

        print(f"error: {exc.one_line(flag_names(command_name(argv)))}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line unless debugging
        if debug:
            raise
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in TRAIN_MODULES:
            print(f"error: {needs_train_extra(exc.name or '', argv)}", file=sys.stderr)
            return 1
        print(
            f"error: unexpected {type(exc).__name__}: {first_line(exc)} (set MNV2_DEBUG=1 for the traceback, and report it)",
            file=sys.stderr,
        )
        return 1


# what the train extra brings beyond a runtime-only install (predict, info and bench of ONNX files)
TRAIN_MODULES = ("torch", "torchvision", "onnxscript", "matplotlib")


def needs_train_extra(module: str, argv: list[str] | None) -> str:
    """The one line for a command that reached a library of the train extra on an install without it."""
    from ..device import TRAIN_INSTALL

    name = command_name(argv)
    command = f"mnv2 {name}" if name else "mnv2"
    return (
        f"{command} needs {module.split('.')[0]}, which this install lacks (a runtime-only install runs ONNX files: "
        f"predict, info, bench): {TRAIN_INSTALL}"
    )


def run() -> None:
    sys.exit(main())


def command_name(argv: list[str] | None) -> str | None:
    """The command a command line runs (``export`` in ``mnv2 -v export best.pt``), or None."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    return words[0] if words else None
