"""The bench report as data: its skeleton and rows, latency fields, the baseline comparison,
the Pareto front and the machine description (:mod:`.report` writes it out)."""

from __future__ import annotations

import datetime as _dt
import math
import platform
from pathlib import Path
from typing import Any

from ..errors import EdgekitError
from ..measure.timing import LatencyStats
from .candidates import Candidate
from .memory import METHOD as MEMORY_METHOD

__all__ = ["SCHEMA_VERSION", "finish", "machine", "new_report", "new_row", "pareto_front",
           "pick_baseline", "runtime_label", "set_latency"]

#: Version of the report's JSON layout (``schema`` = "edgekit.bench").
SCHEMA_VERSION = 1


def new_report(*, device: str, threads: int | None, runs: int | None, duration: float | None,
               warmup: int, limit: int | None, remote: Any) -> dict[str, Any]:
    """The report before anything is measured: settings, method notes, no results."""
    return {
        "schema": "edgekit.bench",
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgekit_version": _version(),
        "status": "complete",
        "partial": False,
        "interrupted": False,
        "machine": machine(),
        "settings": {"device": device, "threads": threads, "runs": runs, "duration_s": duration,
                     "warmup": warmup, "data": None, "metric": None, "limit": limit,
                     "remote": remote.name if remote is not None else None},
        "method": {
            "latency": "warm-up calls untimed, then interleaved rounds (each round calls every "
                       "artifact once, the starting one rotating); time.perf_counter around "
                       "Session.run with inputs already in memory; batch from the artifact",
            "load": "wall time of the runtime's load/compile call (checksums checked before)",
            "first_inference": "the first call after loading, timed alone",
            "throughput": "batch * 1000 / mean_ms, single stream",
            "noise": "noisy = coefficient of variation (std/mean) > 0.25",
            "memory": MEMORY_METHOD,
            "fidelity": "outputs vs the fp32 PyTorch reference stored in the bundle's "
                        "reference.npz (else vs the baseline's outputs on the eval data)",
        },
        "baseline": None,
        "results": [],
        "errors": [],
    }


def new_row(c: Candidate, *, device: str, threads: int | None, remote: Any) -> dict[str, Any]:
    """One candidate's result row, every measurement still empty (status ``pending``)."""
    return {
        "name": c.name, "source": c.source, "target": c.target, "backend": c.backend,
        "location": "remote" if remote is not None else "local",
        "device": remote.name if remote is not None else device, "emulated": False,
        "status": "pending", "reason": None,
        "precision": c.artifact.precision if c.artifact else "fp32",
        "size_bytes": c.size_bytes, "threads": threads or c.threads or 2,
        "load_ms": None, "first_inference_ms": None, "latency": None, "samples_ms": None,
        "throughput_per_s": None, "memory": None, "accuracy": None, "fidelity": None,
        "vs_baseline": None, "pareto": False, "runtime": None, "info": None,
    }


def pick_baseline(names: list[str], baseline: str | None) -> str | None:
    """``baseline`` (checked against ``names``), else the first fp32 name, else the first."""
    if baseline is not None:
        if baseline not in names:
            from ..errors import UnknownNameError

            raise UnknownNameError("baseline", baseline, names)
        return baseline
    for n in names:
        if "fp32" in n:
            return n
    return names[0] if names else None


def pareto_front(points: dict[str, tuple[float, float]], higher_is_better: bool) -> set[str]:
    """Names not dominated in (latency: lower is better, quality: ``higher_is_better``)."""
    front = set()
    for a, (la, qa) in points.items():
        dominated = False
        for b, (lb, qb) in points.items():
            if a == b:
                continue
            better_q = qb >= qa if higher_is_better else qb <= qa
            strictly = lb < la or (qb > qa if higher_is_better else qb < qa)
            if lb <= la and better_q and strictly:
                dominated = True
                break
        if not dominated:
            front.add(a)
    return front


def runtime_label(info: dict[str, Any], backend: str) -> str:
    """"onnxruntime 1.20" from a session's info (the backend name when it says nothing)."""
    rt = info.get("runtime", backend)
    ver = str(info.get("version") or "").split("-")[0]
    return f"{rt} {ver}" if ver and str(ver) not in str(rt) else str(rt)


def set_latency(row: dict[str, Any], samples_s: list[float], batch: int) -> None:
    """Latency statistics, the samples and the throughput of ``samples_s`` into ``row``."""
    if not samples_s:
        return
    stats = LatencyStats.from_seconds(samples_s)
    row["latency"] = stats.to_json()
    row["samples_ms"] = [round(s * 1e3, 6) for s in samples_s]
    row["throughput_per_s"] = batch * 1e3 / stats.mean_ms if stats.mean_ms > 0 else None
    row["batch"] = batch


def finish(report: dict[str, Any], rows: dict[str, dict[str, Any]], baseline: str | None
           ) -> None:
    """Comparisons with the baseline, the Pareto front, the emulation note and the overall
    status, once every row is measured."""
    timed = [n for n, r in rows.items() if r["latency"]]
    base = None
    try:
        base = pick_baseline(timed, baseline) if timed else None
    except EdgekitError:
        base = None
    report["baseline"] = base
    if base is not None:
        b = rows[base]
        for r in rows.values():
            if not r["latency"]:
                continue
            vs: dict[str, Any] = {"speedup": b["latency"]["median_ms"] / r["latency"]["median_ms"]}
            if b["size_bytes"] and r["size_bytes"]:
                vs["size_ratio"] = r["size_bytes"] / b["size_bytes"]
            if b["accuracy"] and r["accuracy"]:
                vs["accuracy_delta"] = r["accuracy"]["value"] - b["accuracy"]["value"]
            r["vs_baseline"] = vs
    acc = {n: (r["latency"]["median_ms"], r["accuracy"]["value"]) for n, r in rows.items()
           if r["latency"] and r["accuracy"] and math.isfinite(r["accuracy"]["value"])}
    if acc:
        hib = next(r["accuracy"]["higher_is_better"] for r in rows.values() if r["accuracy"])
        for n in pareto_front(acc, hib):
            rows[n]["pareto"] = True
    if any(r["emulated"] for r in rows.values()):
        report["emulated_note"] = ("timings marked emulated ran under qemu-user emulation: they "
                                   "check correctness only and say nothing about ARM speed")
    if any(r["status"] in ("partial", "failed", "not_run") for r in rows.values()) \
            and report["status"] == "complete":
        report.update(status="partial", partial=True)


def _version() -> str:
    """The installed edgekit version."""
    from .. import __version__

    return __version__


def machine() -> dict[str, Any]:
    """The CPU, architecture, core count, system and Python of this machine."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "system": platform.system(), "python": platform.python_version()}
