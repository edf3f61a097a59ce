"""One vocabulary for what a caller passes: comma lists, choices, whole numbers and ranges.

Each check raises a :class:`ConfigError` that names the parameter in braces (``{batch_size} = 1 is out of range``):
``str(exc)`` reads ``batch_size``, the CLI writes ``--batch-size`` (:mod:`mnv2export.cli.flags`). Ground floor: it
imports nothing of the package but :mod:`errors`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError

ALL = "all"


def is_int(value: Any) -> bool:
    """A whole number, and not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split_items(value: str | Iterable[Any], param: str) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (stripped, lower case). An empty item beside others (``a,,b``, a
    trailing comma) is an error, not dropped: it is a typo more often than not; nothing at all gives ``[]``."""
    parts = [value] if isinstance(value, str) else [str(v) for v in value]
    items = [item.strip().lower() for part in parts for item in part.split(",")]
    if any(items) and not all(items):
        raise ConfigError(
            f"empty item in the {{{param}}} list {','.join(items)!r}",
            hint="separate the items with single commas, no trailing one",
        )
    return [item for item in items if item]


def choose(
    value: str | Iterable[Any], allowed: Iterable[str], param: str, *, everything: Iterable[str] | None = None
) -> tuple[list[str], bool]:
    """``"b,a"`` / ``["a"]`` / ``"all"`` -> (the items chosen, in ``allowed``'s order; whether every one was named
    rather than brought by ``all``). ``all`` stands for ``everything`` (default: every allowed item)."""
    allowed = tuple(allowed)
    items = split_items(value, param)
    unknown = [v for v in items if v not in (*allowed, ALL)]
    if unknown or not items:
        raise ConfigError(
            f"unknown {{{param}}} {', '.join(unknown) or '(none)'}",
            hint=f"choose from {', '.join(allowed)} or {ALL}",
        )
    chosen = set(allowed if everything is None else everything) if ALL in items else set()
    chosen |= {v for v in items if v != ALL}
    return [v for v in allowed if v in chosen], ALL not in items


def check_choice(param: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else a one-line error listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"unknown {{{param}}} {value!r}", hint=f"choose one of {', '.join(allowed)}")
    return value


def check_int(param: str, value: Any, lo: int, hi: int | None = None, *, why: str = "") -> int:
    """``value`` if it is a whole number in ``[lo, hi]`` (no upper bound when ``hi`` is None); ``why`` ends the hint."""
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"{{{param}}} = {value!r} is out of range", hint=f"use a whole number {bounds}{why}")
    return value


def check_number(param: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` if it is a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    ok = is_number(value) and math.isfinite(value) and value <= hi and (value > lo if lo_open else value >= lo)
    if not ok:
        low = f"> {lo}" if lo_open else f">= {lo}"
        raise ConfigError(f"{{{param}}} = {value!r} is out of range", hint=f"use a value {low} and <= {hi}")
    return value


def check_ints(param: str, values: Any, lo: int = 1) -> list[int]:
    """A non-empty list of whole numbers >= ``lo`` (batch sizes and the like)."""
    items = list(values) if isinstance(values, (list, tuple)) else None
    if not items or not all(is_int(v) and v >= lo for v in items):
        raise ConfigError(f"{{{param}}} = {values!r} is out of range", hint=f"use whole numbers >= {lo}")
    return items
