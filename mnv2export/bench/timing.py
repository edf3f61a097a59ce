"""The timed loop: first call, warm-up (a count or seconds), then a fixed number of calls or a duration.

Each timed call is bracketed by ``time.perf_counter_ns``; on a GPU the call is followed, inside the timer, by a
synchronisation (``sync``), so an asynchronous launch cannot make a call look faster than it is, and the queue is
empty when the next timer starts (the previous call's synchronisation saw to that). The loop does nothing else
per call but append one integer, so what it adds to a millisecond-scale inference is a few hundred nanoseconds
(``benchmarks/harness_overhead.py`` measures it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_WARMUP = 10
DEFAULT_DURATION = 2.0  # seconds, when neither iters nor duration is given
MIN_ITERS = 10  # a duration-bound loop still times at least this many calls


@dataclass(frozen=True)
class Plan:
    """How long to warm up and to measure. ``warmup_s`` (seconds) replaces the ``warmup`` count when set;
    ``iters`` and ``duration`` exclude each other, neither means ``DEFAULT_DURATION`` seconds."""

    warmup: int = DEFAULT_WARMUP
    warmup_s: float | None = None
    iters: int | None = None
    duration: float | None = None
    min_iters: int = MIN_ITERS

    def describe(self) -> str:
        warm = f"{self.warmup_s:g} s" if self.warmup_s is not None else f"{self.warmup} calls"
        if self.iters is not None:
            timed = f"{self.iters} calls"
        else:
            timed = f"{self.duration if self.duration is not None else DEFAULT_DURATION:g} s (at least {self.min_iters} calls)"
        return f"warm-up {warm}, then {timed}"


def measure(call: Callable[[], Any], sync: Callable[[], Any] | None, plan: Plan) -> tuple[float, list[float]]:
    """Run ``call`` (then ``sync`` if given) per ``plan``: (seconds of the very first call, ms of each timed call)."""
    clock = time.perf_counter_ns
    t0 = clock()
    call()
    if sync is not None:
        sync()
    first_s = (clock() - t0) / 1e9
    _warm(call, sync, plan)
    times: list[int] = []
    append = times.append
    if plan.iters is not None:
        if sync is None:
            for _ in range(plan.iters):
                t0 = clock()
                call()
                append(clock() - t0)
        else:
            for _ in range(plan.iters):
                t0 = clock()
                call()
                sync()
                append(clock() - t0)
    else:
        duration = plan.duration if plan.duration is not None else DEFAULT_DURATION
        deadline = clock() + int(duration * 1e9)
        while True:
            t0 = clock()
            call()
            if sync is not None:
                sync()
            t1 = clock()
            append(t1 - t0)
            if t1 >= deadline and len(times) >= plan.min_iters:
                break
    return first_s, [t / 1e6 for t in times]


def _warm(call: Callable[[], Any], sync: Callable[[], Any] | None, plan: Plan) -> None:
    if plan.warmup_s is not None:
        end = time.perf_counter() + plan.warmup_s
        while time.perf_counter() < end:
            call()
            if sync is not None:
                sync()
        return
    for _ in range(plan.warmup):
        call()
        if sync is not None:
            sync()
