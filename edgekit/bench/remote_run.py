"""``edgekit bench --remote``: each artifact on the remote device, its outputs compared with
the same artifact run on this machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..measure.metrics import compare_outputs
from .candidates import Candidate
from .evaldata import EvalData, example_feeds
from .summary import set_latency

__all__ = ["run_on_remote"]


def run_on_remote(live: list[Candidate], rows: dict[str, dict[str, Any]], remote: Any,
                 ev: EvalData | None, refs: dict[str, Any], *, runs: int, warmup: int,
                 threads: int | None, say: Callable[[str], None]) -> None:
    """Each artifact on the remote device, one after another (the device is locked per run);
    outputs are compared with the same artifact run on this machine."""
    from ..backends import get_backend
    from .remote import RemoteError, run_remote

    for c in live:
        if c.artifact is None:
            rows[c.name].update(status="skipped", reason="PyTorch models run locally only")
            continue
        feeds = example_feeds(c, ev, refs[c.name])
        files = [c.artifact.root / f for f in c.artifact.files]
        try:
            res = run_remote(remote, files, feeds, threads=threads or c.threads or 2, runs=runs,
                             warmup=warmup, progress=say)
        except RemoteError as exc:
            part = exc.partial
            rows[c.name].update(status="partial" if part else "failed", reason=str(exc),
                                emulated=bool(part.get("emulated")))
            _fill_remote(rows[c.name], part)
            exc.partial = exc.partial or {"partial": True}
            raise
        _fill_remote(rows[c.name], res)
        rows[c.name]["status"] = "ok"
        local = get_backend(c.backend).load(c.artifact, threads=threads or c.threads or 2,
                                            options=c.options).run(feeds)
        cmp = compare_outputs(local, res["outputs"], [s.name for s in c.outputs],
                              classifier=bool(ev and ev.classifier))
        cmp["reference"] = "the same artifact on this machine, same inputs"
        rows[c.name]["fidelity"] = cmp
        rows[c.name]["remote_outputs_match_local"] = bool(
            all(o["max_abs"] <= 1e-4 * max(1.0, float(np.max(np.abs(lo))))
                for o, lo in zip(cmp["outputs"], local)))


def _fill_remote(row: dict[str, Any], res: dict[str, Any]) -> None:
    """A remote run's result (or partial result) into ``row``."""
    row["emulated"] = bool(res.get("emulated"))
    row["load_ms"] = res.get("load_ms")
    row["first_inference_ms"] = res.get("first_inference_ms")
    if res.get("runtime"):
        row["runtime"] = f"{res['runtime']} {res.get('version', '')}".strip()
    row["remote"] = {k: res.get(k) for k in ("device_name", "device", "emulator", "wall_s",
                                              "runner_version", "status", "partial")}
    lat = res.get("latencies_ms") or []
    if lat:
        set_latency(row, [v / 1e3 for v in lat], row.get("batch") or 1)
