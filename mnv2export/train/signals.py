"""Signals during training: SIGTERM (a scheduler preempting the job, ``kill``, torchrun stopping its workers) stops
a run at its next batch as Ctrl-C does, and Ctrl-C waits while an epoch's files are written.

:func:`sigterm_as_interrupt` notes a SIGTERM, :func:`raise_if_terminated` raises :class:`~mnv2export.errors.Terminated`
where the loops check it (each batch, each epoch), :func:`sigint_deferred` holds a Ctrl-C over a few writes, and
:func:`worker_quiet_on_sigterm` makes a DataLoader worker end quietly on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

from ..errors import Terminated


def worker_quiet_on_sigterm(worker_id: int) -> None:
    """In a DataLoader worker: a SIGTERM from anyone ends it with status 0, as torch's own handler does only for one
    its parent sends. When a whole process group is terminated (a pod, a Slurm job), the main process then says so
    (:class:`Terminated`), not a 'DataLoader worker is killed by signal' traceback at its exit. A worker terminated
    alone still fails the run: the main process finds it gone ('exited unexpectedly')."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


_sigterm_received = threading.Event()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside: a SIGTERM (a scheduler preempting the job, ``kill``, torchrun stopping its workers) is noted, and the
    training and evaluation loops raise :class:`Terminated` at their next batch (:func:`raise_if_terminated`), so the run
    unwinds as Ctrl-C does: its epoch's files whole, a line saying how to resume, exit 143. The handler only notes it:
    an exception raised from a signal handler lands wherever the process is, and where it lands in an at-fork hook or a
    ``__del__`` Python drops it (seen: a SIGTERM lost in logging's fork hook as a DataLoader worker started, and the run
    went on). One noted after the last batch is raised when the block ends, so that nothing run after training (the
    pipeline's export) goes on. Only in the main thread, and only where SIGTERM has its default action (a caller's
    handler is kept). A process forked inside that gets SIGTERM before it sets its own handler dies of it, as it would
    have."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:  # a forked child inherited this handler: the default action, as if it had none
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _sigterm_received.set()

    _sigterm_received.clear()
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        noted = _sigterm_received.is_set()
        _sigterm_received.clear()
    if noted:  # one that came after the last batch (the last files, the pictures): never forgotten
        raise Terminated


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` once a SIGTERM has been noted (inside :func:`sigterm_as_interrupt`)."""
    if _sigterm_received.is_set():
        raise Terminated


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block ends, then raise it; no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # not the main thread, or SIGINT ignored (a background job of a non-interactive shell): leave it so
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def sigterm_noted() -> bool:
    """Whether a SIGTERM has been noted (inside :func:`sigterm_as_interrupt`) and not yet raised at a block's end."""
    return _sigterm_received.is_set()
