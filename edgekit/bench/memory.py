"""Peak memory of loading and running one artifact, measured in a fresh child process.

Method (recorded in every report): a new Python process imports edgekit and the runtime,
resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), reads its resident
set (``VmRSS``) as the baseline, loads the artifact, runs it ``runs`` times, and reads the peak
resident set (``VmHWM``). ``peak_rss_mb`` is that peak; ``delta_mb`` = peak - baseline is the
memory that loading and running the model cost. Where the peak counter cannot be reset,
``resource.getrusage`` is used and the imports' peak may be included (``method`` says so).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

METHOD = ("fresh child process per artifact: imports first, then /proc/self/clear_refs=5 "
          "resets the peak; delta_mb = VmHWM after load + runs minus VmRSS before load")


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure_in_child(artifact_json: dict[str, Any], *, threads: int, options: dict[str, Any],
                     runs: int = 10, timeout: float = 300.0) -> dict[str, Any]:
    """Run :func:`_child` in a fresh interpreter; returns its JSON (or ``error``)."""
    spec = json.dumps({"artifact": artifact_json, "threads": threads, "options": options,
                       "runs": runs})
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit.bench.memory"], input=spec,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s", "method": METHOD}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory probe failed: {tail}", "method": METHOD}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child() -> int:
    spec = json.loads(sys.stdin.read())
    from ..backends import Artifact, TensorSpec, get_backend

    a = spec["artifact"]
    artifact = Artifact(backend=a["backend"], root=Path(a["root"]), files=list(a["files"]),
                        inputs=[TensorSpec.from_json(t) for t in a["inputs"]],
                        outputs=[TensorSpec.from_json(t) for t in a["outputs"]],
                        precision=a.get("precision", "fp32"), info=dict(a.get("info", {})))
    backend = get_backend(artifact.backend)
    backend.import_runtime()  # before the baseline, so the import is not counted
    feeds = [np.zeros([d if d > 0 else 1 for d in s.shape], dtype=s.dtype)
             for s in artifact.inputs]
    reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        pass
    base_kb = _status_kb("VmRSS")
    session = backend.load(artifact, threads=spec["threads"], options=spec["options"])
    for _ in range(max(1, int(spec["runs"]))):
        session.run(feeds)
    hwm_kb = _status_kb("VmHWM") if reset else None
    ru_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_kb = hwm_kb if hwm_kb is not None else ru_kb
    out = {
        "peak_rss_mb": round(peak_kb / 1024, 2),
        "baseline_rss_mb": round(base_kb / 1024, 2) if base_kb is not None else None,
        "delta_mb": round((peak_kb - base_kb) / 1024, 2) if base_kb is not None else None,
        "runs": int(spec["runs"]),
        "method": METHOD if reset else "getrusage ru_maxrss (peak includes imports)",
        "pid": os.getpid(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
