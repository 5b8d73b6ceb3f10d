"""Run the edgekit CLI in a child process under a memory cap (the reliability tests' harness).

``run_capped(["unpack", ...], cap_gib=4)`` runs ``python -m edgekit ...`` with ``RLIMIT_AS``
set to the cap (a runaway allocation fails inside the child instead of taking the machine),
and returns the exit code, stdout, stderr and the child's peak resident memory, so a test can
assert all four: the exit code, a message naming the file/name/limit, no traceback, memory
below the cap.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Capped:
    code: int
    out: str
    err: str
    peak_rss_bytes: int
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out + self.err


def run_capped(args: list[str], *, cap_gib: float = 4.0, cwd: str | Path | None = None,
               timeout: float = 300, env: dict[str, str] | None = None,
               module: str = "edgekit") -> Capped:
    cap = int(cap_gib * 2**30)

    def limit() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        full_env["EDGEKIT_TEST_PEAK_FILE"] = str(peak_file)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _BOOT, module, *args], cwd=cwd,
                              env=full_env, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=limit)
        took = time.perf_counter() - start
        # the child's own peak resident memory (KiB), written at exit; -1 if it died by a
        # signal
        peak = int(peak_file.read_text()) * 1024 if peak_file.exists() else -1
    return Capped(proc.returncode, proc.stdout, proc.stderr, peak, took)


# the child: record its own peak resident memory at exit, then run the module as __main__
_BOOT = """
import atexit, os, resource, runpy, sys
def _peak():
    # VmHWM (KiB) belongs to this program's own memory map; ru_maxrss would carry the forking
    # parent's peak across exec on Linux
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as st:
            kib = next(int(l.split()[1]) for l in st if l.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    with open(os.environ["EDGEKIT_TEST_PEAK_FILE"], "w") as fh:
        fh.write(str(kib))
atexit.register(_peak)
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
