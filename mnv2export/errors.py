"""Errors a person can act on.

Every error the library raises on purpose is an :class:`Mnv2Error`: it carries *what* went wrong, the *file*
it concerns (if any) and *how to fix it*. The CLI prints it as one line,
``error: <what> (<file>): <how to fix>``, and exits 1.

A parameter is named in braces, ``{batch_size}``, as the library's functions and config fields name it: ``str(exc)``
reads ``batch_size``, and the CLI renders it as its flag, ``--batch-size`` (one table: :mod:`mnv2export.cli.flags`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

PARAMETER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class Mnv2Error(Exception):
    """Base class of every error the tool raises for a reason a user can fix."""

    exit_code = 1

    def __init__(self, what: str, *, path: str | Path | None = None, hint: str | None = None):
        self.what = what  # may name parameters in braces: ``{threads} = 0 is out of range``
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.one_line())

    @property
    def parameters(self) -> list[str]:
        """The parameters this error names, in order."""
        return PARAMETER.findall(f"{self.what} {self.hint or ''}")

    def one_line(self, names: Mapping[str, str] | None = None) -> str:
        """``what (file): hint``, each ``{parameter}`` written as ``names`` says (a flag), else as its bare name."""
        names = names or {}

        def render(text: str) -> str:  # the path stays as it is: a folder may have braces in its name
            return PARAMETER.sub(lambda m: names.get(m[1], m[1]), text)

        text = render(self.what)
        if self.path:
            text += f" ({self.path})"
        if self.hint:
            text += f": {render(self.hint)}"
        return text


class ConfigError(Mnv2Error):
    """A setting is missing, out of range, or contradicts another one."""


class CheckpointError(Mnv2Error):
    """A checkpoint is missing, unreadable, unsafe or of another architecture."""


class DataError(Mnv2Error):
    """A data set is missing, empty or inconsistent."""


class ExportError(Mnv2Error):
    """An export step failed or produced an artifact that does not match the model."""


class ArtifactError(Mnv2Error):
    """An exported artifact (TorchScript, ONNX) is missing, malformed or does not describe itself."""


class ParityError(Mnv2Error):
    """An artifact does not answer like the reference model."""


class ProviderUnavailable(Mnv2Error):
    """An execution device / provider was asked for explicitly but cannot be used here."""


class OutputError(Mnv2Error):
    """An output folder or file cannot be written."""


class TrainingDiverged(Mnv2Error):
    """The weights became NaN or infinite during training: the run stops before any checkpoint holds them."""


class DistributedError(Mnv2Error):
    """A multi-process (torchrun) job cannot go on: another of its processes stopped."""


class Terminated(BaseException):
    """SIGTERM during training (a cluster scheduler preempting the job, ``kill``, torchrun stopping its workers),
    raised at the next batch so that the run unwinds as Ctrl-C does: the epoch's files whole, a line saying how to
    resume. Like KeyboardInterrupt it is no ``Exception`` (no ``except Exception`` swallows it), but it is not one
    either: typer turns a KeyboardInterrupt into a silent exit 130, and this one exits 143 (128 + SIGTERM), as a
    process the signal had killed reports, after ``error: terminated (SIGTERM)``."""

    exit_code = 143
    what = "terminated (SIGTERM)"  # how the trainer's log, the pipeline's step and the CLI's error line name it


def first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says (third-party errors run to pages), or its type's name when it says nothing."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
