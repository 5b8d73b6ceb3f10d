"""The one timer: warm-up, then interleaved timed calls, then robust statistics.

What latency means, for every tool (``edgekit bench``, the quantize latency check, prune's
latency goal, ``benchmarks/``): the artifact's own call at its native I/O. A session that
converts at its boundary (a TFLite int8 model with float I/O quantizes its inputs and
dequantizes its outputs in Python) offers ``timed(feeds)``, returning the inner session and
the feeds already converted; :func:`timed_call` picks that, and the timers here always time
what it returns, so the conversion is never part of a latency.

Example::

    stats = time_interleaved({"fp32": s32, "int8": s8}, {"fp32": feed, "int8": feed})
    print(stats["int8"].median_ms)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..backends.base import Session

__all__ = ["NOISY_CV", "Interleaved", "LatencyStats", "TimedSession", "collect_interleaved",
           "time_interleaved", "timed_call"]

#: Coefficient of variation above which a measurement is flagged as noisy.
NOISY_CV = 0.25


@runtime_checkable
class TimedSession(Protocol):
    """A session whose timed call differs from ``run``: ``timed(feeds)`` returns the session
    to time (the artifact's own call at its native I/O) and the feeds converted for it."""

    def timed(self, feeds: list[np.ndarray]) -> tuple[Session, list[np.ndarray]]: ...


def timed_call(session: Session, feeds: list[np.ndarray]) -> tuple[Session, list[np.ndarray]]:
    """The session and feeds a latency measures (see the module notes)."""
    if isinstance(session, TimedSession):
        return session.timed(feeds)
    return session, feeds


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of per-call latencies, in milliseconds."""

    n: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    max_ms: float

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean)."""
        return self.std_ms / self.mean_ms if self.mean_ms > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        if not samples:
            raise ValueError("no latency samples")
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        return cls(
            n=int(ms.size),
            mean_ms=float(ms.mean()),
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cv": self.cv, "noisy": self.noisy}


def time_interleaved(
    sessions: Mapping[str, Session],
    feeds: Mapping[str, list[np.ndarray]],
    *,
    warmup: int = 20,
    runs: int = 200,
) -> dict[str, LatencyStats]:
    """Time several sessions side by side so machine noise hits them alike.

    Each round calls every session once; the starting session rotates every round so none
    always runs first. Every session gets ``warmup`` untimed calls first.
    """
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    samples = collect_interleaved(sessions, feeds, warmup=warmup, runs=runs).samples
    return {name: LatencyStats.from_seconds(s) for name, s in samples.items()}


@dataclass
class Interleaved:
    """Raw per-call latencies (seconds) per session, and whether Ctrl-C cut the run short."""

    samples: dict[str, list[float]]
    rounds: int
    interrupted: bool = False
    seconds: float = 0.0

    def median_ms(self, name: str) -> float:
        """The median of ``name``'s calls, in milliseconds."""
        return float(np.median(np.asarray(self.samples[name], dtype=np.float64))) * 1e3


def collect_interleaved(
    sessions: Mapping[str, Session],
    feeds: Mapping[str, list[np.ndarray]],
    *,
    warmup: int = 20,
    runs: int | None = 200,
    duration_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Interleaved:
    """Like :func:`time_interleaved` but returns raw samples, stops after ``duration_s``
    seconds of timed rounds when given (``runs`` then caps the rounds if set), and keeps the
    samples taken so far when interrupted with Ctrl-C (``interrupted`` is then true)."""
    names = list(sessions)
    if (runs is not None and runs < 1) or warmup < 0 or (runs is None and not duration_s):
        raise ValueError("runs must be >= 1 (or a duration given) and warmup >= 0")
    if duration_s is not None and duration_s <= 0:
        raise ValueError("duration must be > 0 seconds")
    calls = {name: timed_call(sessions[name], list(feeds[name])) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    done = 0
    t_start = clock()
    try:
        for name in names:
            session, feed = calls[name]
            for _ in range(warmup):
                session.run(feed)
        t_start = clock()
        deadline = t_start + duration_s if duration_s else None
        next_note = t_start + 5.0
        while (runs is None or done < runs) and (deadline is None or done == 0
                                                 or clock() < deadline):
            for k in range(len(names)):
                name = names[(done + k) % len(names)]
                session, feed = calls[name]
                start = clock()
                session.run(feed)
                samples[name].append(clock() - start)
            done += 1
            if progress is not None and clock() > next_note:
                progress(f"{done} rounds timed")
                next_note = clock() + 5.0
    except KeyboardInterrupt:
        n = min((len(v) for v in samples.values()), default=0)
        return Interleaved({k: v[:n] for k, v in samples.items()}, n, True, clock() - t_start)
    return Interleaved(samples, done, False, clock() - t_start)
