"""SIGTERM (and SIGHUP) handled like Ctrl-C while a command runs.

Inside :func:`terminate_as_interrupt` the first SIGTERM/SIGHUP raises :class:`Terminated` (a
``KeyboardInterrupt``) in the main thread, so every ``except KeyboardInterrupt`` / ``finally``
that protects half-written work (the staged bundle, the benchmark's partial report) runs for a
``kill`` or a CI timeout exactly as for Ctrl-C. Further signals are ignored while that cleanup
runs. :func:`last_signal` says which signal interrupted the command (``None``: Ctrl-C or none).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "terminate_as_interrupt", "last_signal", "exit_code_for"]

_received: list[str] = []


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM or SIGHUP; handled like Ctrl-C."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signal_name = name


def last_signal() -> str | None:
    return _received[-1] if _received else None


def exit_code_for(name: str | None) -> int:
    """The shell's convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    num = getattr(signal, name, None) if name else None
    return 128 + int(num) if num is not None else 130


def _handler(signum: int, _frame: Any) -> None:
    name = signal.Signals(signum).name
    first = not _received
    _received.append(name)
    if first:
        for sig in _SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        raise Terminated(name)


_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
                 if s is not None)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Map SIGTERM/SIGHUP to :class:`Terminated` for the block (main thread only)."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, h)
