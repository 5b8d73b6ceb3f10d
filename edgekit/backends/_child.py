"""A runtime call that can kill its process, run first in a child process.

Some int8 files crash the runtime's native code: LiteRT aborts (SIGABRT) preparing a file whose
requantization scales a kernel refuses, and OpenVINO's CPU plugin has crashed (SIGSEGV)
compiling an ONNX Runtime QDQ model of Phi. Neither raises a Python exception: the process, and
the user's build with it, is gone. :func:`run_in_child` runs the call in a child first; a child
killed by a signal becomes a :class:`ModelRunError` naming the signal and the runtime's last
lines, and the caller's process (and the other int8 source) lives on::

    done = run_in_child(code, [str(path)], backend="tflite", doing=f"preparing {path.name}",
                        hint="...")
    # None: the child ran past its time (slow, not dead); else the finished process
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

from ..errors import ModelRunError

__all__ = ["run_in_child"]

#: Seconds a child process gets before the caller goes on without its answer.
CHILD_SECONDS = 300


def run_in_child(code: str, args: Sequence[str], *, backend: str, runtime: str, doing: str,
                 hint: str, timeout: float = CHILD_SECONDS
                 ) -> subprocess.CompletedProcess[str] | None:
    """Run ``python -c code *args``. Return the finished process (its own exit code: 0, or a
    Python error the caller reports as it would in-process), None when it ran past
    ``timeout``; raise ModelRunError (``runtime`` killed the process ``doing`` ...) when a
    signal killed it."""
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode >= 0:
        return done
    try:
        how = signal.Signals(-done.returncode).name
    except ValueError:
        how = f"signal {-done.returncode}"
    # its last words, without start-up lines ("INFO: Created TensorFlow Lite XNNPACK
    # delegate for CPU.")
    tail = [ln for ln in done.stderr.splitlines()
            if ln.strip() and not ln.startswith("INFO: ")][-5:]
    raise ModelRunError(
        f"{runtime} killed the process ({how}) {doing}"
        + (": " + " | ".join(tail) if tail else " (it printed nothing)"),
        backend=backend, hint=hint)
