"""The timing arguments of ``edgekit bench`` (``--runs`` and friends, ``edgekit.bench(...)``),
checked before anything is loaded."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["MAX_DURATION_S", "MAX_RUNS", "MAX_WARMUP", "check_bench_args", "seconds_arg"]

#: Bounds of the timing arguments (``bench --runs`` and friends, ``edgekit.bench(...)``).
MAX_RUNS = 1_000_000
MAX_WARMUP = 100_000
MAX_DURATION_S = 3600.0


def _int_arg(name: str, value: Any, lo: int, hi: int | None, flag: str) -> int:
    what = f"{flag}{name}"
    allowed = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
    number = value
    if isinstance(value, str):  # from the command line: "200", also "1e3"
        try:
            number = float(value) if any(c in value for c in ".eEnN") else int(value)
        except ValueError:
            raise UsageError(f"{what} {value} is not a number; give {allowed}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float, np.integer, np.floating)):
        raise UsageError(f"{what} {value} is not a number; give {allowed}")
    if isinstance(number, (float, np.floating)):
        if not math.isfinite(number) or number != int(number):
            raise UsageError(f"{what} {value} is not an integer; give {allowed}")
    number = int(number)
    if number < lo or (hi is not None and number > hi):
        raise UsageError(f"{what} {value} is out of range; give {allowed}")
    return number


def seconds_arg(name: str, value: Any, hi: float, flag: str) -> float:
    """``value`` as a number of seconds in (0, ``hi``]; :class:`UsageError` naming
    ``flag`` + ``name`` otherwise."""
    what = f"{flag}{name}"
    allowed = f"a number of seconds > 0 and <= {hi:g}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {value} is not a number; give {allowed}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise UsageError(f"{what} {value} is not a finite number; give {allowed}")
    if not 0 < number <= hi:
        raise UsageError(f"{what} {value} is out of range; give {allowed}")
    return number


def check_bench_args(*, runs: Any = None, duration: Any = None, warmup: Any = 20,
                     threads: Any = None, limit: Any = None, flag: str = ""
                     ) -> tuple[int | None, float | None, int, int | None, int | None]:
    """Validate the timing arguments before anything is loaded; :class:`UsageError` naming the
    argument (``flag`` + name: ``--runs`` on the command line), its value and the allowed range.

    ``runs`` 1..:data:`MAX_RUNS`, ``duration`` seconds in (0, :data:`MAX_DURATION_S`],
    ``warmup`` 0..:data:`MAX_WARMUP`, ``threads`` 1..``MAX_THREADS`` (256), ``limit`` >= 1;
    NaN, inf, zero, negative and fractional counts are refused. Returns them converted.
    """
    from ..backends._common import MAX_THREADS

    if runs is None and duration is None:
        raise UsageError("give a number of runs or a duration")
    return (
        None if runs is None else _int_arg("runs", runs, 1, MAX_RUNS, flag),
        None if duration is None else seconds_arg("duration", duration, MAX_DURATION_S, flag),
        _int_arg("warmup", warmup, 0, MAX_WARMUP, flag),
        None if threads is None else _int_arg("threads", threads, 1, MAX_THREADS, flag),
        None if limit is None else _int_arg("limit", limit, 1, None, flag),
    )
