"""Quiet by default: third-party output of a build step is captured, not printed.

Converters and runtimes write to the process's file descriptors 1 and 2 from C++ (absl/glog
lines, LiteRT's progress tree), and Python libraries warn or print progress bars. Around each
step, :func:`quiet` points fds 1 and 2 at a temporary file and records Python warnings:

* edgekit's own lines (those starting with ``[edgekit]``) still reach stderr;
* warnings edgekit raises itself (e.g. ``Int8SlowerWarning``) are raised again after the step;
* when the step fails, the tail of what it printed is added to the exception as a note;
* with verbose output on (``verbose=True``, ``--verbose``, ``EDGEKIT_VERBOSE=1``) nothing is
  captured.

Example::

    with quiet("x86-tflite-fp32: export"):
        backend.export(...)
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["TAIL_LINES", "is_verbose", "quiet", "set_verbose"]

#: Lines of captured output shown with a failure.
TAIL_LINES = 40
_PREFIX = "[edgekit]"
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_state: dict[str, Any] = {"verbose": None, "active": False}


def set_verbose(on: bool | None) -> None:
    """Show third-party output (True), capture it (False), or follow ``EDGEKIT_VERBOSE`` (None)."""
    _state["verbose"] = on


def is_verbose() -> bool:
    """Whether third-party output is shown as it comes."""
    if _state["verbose"] is not None:
        return bool(_state["verbose"])
    return os.environ.get("EDGEKIT_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


class _Router(io.TextIOBase):
    """A text stream sending ``[edgekit]`` lines to ``own`` and everything else to ``other``."""

    def __init__(self, own: IO[str], other: IO[str]) -> None:
        super().__init__()
        self._own, self._other, self._line = own, other, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            self._emit(line + "\n")
        return len(text)

    def _emit(self, text: str) -> None:
        stream = self._own if text.lstrip("\r").startswith(_PREFIX) else self._other
        stream.write(text)
        stream.flush()

    def release(self, stream: IO[str]) -> None:
        """After the step: everything goes to ``stream`` (a logging handler created during the
        step keeps this router as its stream and must not write to the closed capture)."""
        self.flush()
        self._own = self._other = stream

    def flush(self) -> None:
        if self._line:
            self._emit(self._line)
            self._line = ""


def _own_stream(current: IO[str], saved_fd: int) -> IO[str]:
    """Where edgekit's lines go while fd 2 is captured: the saved real stderr, unless
    ``sys.stderr`` was already something else (a test's capture, a StringIO)."""
    try:
        if current.fileno() == 2:
            return open(saved_fd, "w", closefd=False, buffering=1, encoding="utf-8",
                        errors="replace")
    except (AttributeError, OSError, ValueError):
        pass
    return current


def _tail(sink: IO[bytes]) -> str:
    sink.flush()
    sink.seek(0)
    text = sink.read().decode("utf-8", "replace")
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return "\n".join(lines[-TAIL_LINES:])


@contextmanager
def quiet(step: str, *, verbose: bool = False) -> Iterator[None]:
    """Capture third-party output of ``step`` (see the module docstring) unless ``verbose`` or
    :func:`is_verbose`; inside another capture it adds nothing."""
    if verbose or _state["active"] or is_verbose():
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    with tempfile.TemporaryFile() as sink:
        caught = yield from _captured(step, sink)
    for w in caught:  # edgekit's own warnings are part of its output; the rest stays quiet
        if _own_warning(w):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _captured(step: str, sink: IO[bytes]) -> Generator[None, None, list[warnings.WarningMessage]]:
    """The body of :func:`quiet` with fds 1 and 2 on ``sink``; returns the recorded warnings."""
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    old_out, old_err = sys.stdout, sys.stderr
    text_sink = io.TextIOWrapper(sink, encoding="utf-8", errors="replace", write_through=True)
    own = _own_stream(old_err, saved[2])
    routers = (_Router(own, text_sink), _Router(own, text_sink))
    _state["active"] = True
    try:
        for fd in (1, 2):
            os.dup2(sink.fileno(), fd)
        sys.stdout, sys.stderr = routers
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            except BaseException as exc:
                sys.stdout.flush()
                sys.stderr.flush()
                for w in caught:
                    if not _own_warning(w):
                        text_sink.write(warnings.formatwarning(w.message, w.category,
                                                               w.filename, w.lineno))
                tail = _tail(sink)
                if tail and not isinstance(exc, KeyboardInterrupt) and hasattr(exc, "add_note"):
                    exc.add_note(f"output of {step} (last lines):\n{tail}")
                raise
        return caught or []
    finally:
        for router, old in zip(routers, (old_out, old_err), strict=True):
            router.release(old)
        sys.stdout, sys.stderr = old_out, old_err
        for fd, dup in saved.items():
            os.dup2(dup, fd)
            os.close(dup)
        if own is not old_err:
            own.close()
        text_sink.detach()
        _state["active"] = False


def _own_warning(w: warnings.WarningMessage) -> bool:
    """A warning edgekit raised: its category is edgekit's, or it comes from edgekit's code."""
    return type(w.message).__module__.startswith("edgekit.") or \
        os.path.abspath(w.filename or "").startswith(_PACKAGE)
