"""Latency-target pruning at deployment shapes, on each runtime.

    python -m benchmarks.prune_latency [--models resnet18_224] [--goal 0.5] [--runs 30]
                                       [--out benchmarks/results]

For each model and each runtime's fp32 target (ONNX Runtime, OpenVINO, LiteRT on x86), a fresh
copy of the model (random weights, BatchNorm statistics settled on random inputs: latency
does not depend on training) is pruned with ``edgekit.prune.prune_to_latency`` to ``goal`` x
its own unpruned latency on that runtime, measured by the same timer after every 15% MAC step.
Reported per cell: the unpruned and pruned medians timed side by side (interleaved) after the
search, the MAC reduction, the steps, and that latency speed-up against the MAC reduction (the
pruning issue's aim: at least 0.6). One thread (two multi-threaded ONNX Runtime sessions
timed in turn slow each other down), batch 1. Writes ``prune_latency.{json,md}``. Numbers
are measured, not asserted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import FP32, RUNTIMES, cpu_name, settle_batchnorm, write_results

RESULTS = Path(__file__).resolve().parent / "results"
#: The pruning issue's aim: latency speed-up >= this x the MAC reduction.
AIM = 0.6


def log(msg: str) -> None:
    print(f"[prune-latency] {msg}", file=sys.stderr, flush=True)


def interleaved_ms(models: dict[str, torch.nn.Module], x: tuple[torch.Tensor, ...],
                   profile: Any, runs: int) -> dict[str, float]:
    """Median ms of each model exported for ``profile``, timed side by side (interleaved) at
    its thread count: the ratio of two such medians is what the machine's noise leaves
    alone."""
    import tempfile

    from edgekit.backends import get_backend
    from edgekit.measure.timing import time_interleaved
    backend = get_backend(profile.backend)
    names_in = [f"input_{i}" for i in range(len(x))] if len(x) > 1 else ["input"]
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-latency-") as tmp:
        sessions = {}
        for key, model in models.items():
            art = backend.export(model.eval(), x, Path(tmp) / key, input_names=names_in,
                                 output_names=["output"], options=dict(profile.options))
            sessions[key] = backend.load(art, threads=profile.threads,
                                         options=dict(profile.options))
        feed = [t.numpy() for t in x]
        stats = time_interleaved(sessions, {k: feed for k in sessions}, warmup=10, runs=runs)
        return {k: float(v.median_ms) for k, v in stats.items()}


def run_cell(name: str, runtime: str, goal: float, runs: int) -> dict[str, Any]:
    """One model pruned to ``goal`` x its unpruned latency on ``runtime``'s fp32 target."""
    from edgekit.errors import EdgekitError
    from edgekit.models.deploy import build_deploy, deploy_inputs
    from edgekit.prune import prune_to_latency
    from edgekit.prune.latency import measure_latency

    x = deploy_inputs(name)
    model = build_deploy(name).eval()
    rng = np.random.default_rng(0)
    settle_batchnorm(model, [[rng.standard_normal(tuple(t.shape)).astype(np.float32)
                              for t in x] for _ in range(4)])
    t0 = time.perf_counter()
    from edgekit.profiles import resolve_targets

    # one thread: two multi-threaded ONNX Runtime sessions timed in turn slow each other
    # down (the idle pool's threads spin), which would corrupt the side-by-side ratio
    target = dataclasses.replace(resolve_targets([FP32[runtime]])[0], threads=1)
    base = measure_latency(model, x, target, runs=runs)
    cell: dict[str, Any] = {"target": target.name, "threads": 1, "unpruned_ms": base,
                            "goal_ms": goal * base}
    original = copy.deepcopy(model)
    try:
        res, report = prune_to_latency(model, x, latency_ms=goal * base, target=target,
                                       runs=runs, progress=False)
    except EdgekitError as exc:
        cell["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        cell["seconds"] = round(time.perf_counter() - t0, 1)
        return cell
    macs_x = res.macs_before / max(1, res.macs_after)
    # the speed-up from the unpruned and pruned models timed side by side (the per-step
    # measurements, each alone, are what the goal was checked against)
    pair = interleaved_ms({"unpruned": original, "pruned": model}, x, target, 3 * runs)
    speedup = pair["unpruned"] / pair["pruned"]
    cell.update({"unpruned_ms": pair["unpruned"], "pruned_ms": pair["pruned"],
                 "goal_met_ms": report["latency_ms"][-1],
                 "steps": len(report["latency_ms"]) - 1,
                 "latency_per_step_ms": report["latency_ms"],
                 "macs_reduction_x": macs_x, "params_reduction_x":
                 res.params_before / max(1, res.params_after), "speedup_x": speedup,
                 "speedup_over_macs": speedup / macs_x,
                 "meets_aim": speedup / macs_x >= AIM,
                 "seconds": round(time.perf_counter() - t0, 1)})
    return cell


def markdown(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    lines = ["# Latency-target pruning at deployment shapes", "",
             f"`python -m benchmarks.prune_latency` on {m['cpu']} ({m['cores']} cores), 1 thread, "
             "batch 1; goal "
             f"{results['goal']} x each model's unpruned latency on each runtime; "
             "`prune_to_latency` prunes 15% of the remaining MACs per step and times "
             f"the fp32 export after each (median of {results['runs']} calls); the unpruned and "
             "pruned columns are the two models timed side by side afterwards (3x as many "
             "interleaved calls), the speed-up their ratio. Aim: "
             f"latency speed-up >= {AIM} x the MAC reduction.", "",
             "| model | runtime | unpruned ms | goal ms | pruned ms | steps | MACs fewer | "
             "speed-up | speed-up / MAC reduction | aim |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, cells in results["models"].items():
        for rt, c in cells.items():
            if "error" in c:
                lines.append(f"| {name} | {rt} | {c['unpruned_ms']:.2f} | {c['goal_ms']:.2f} | "
                             f"failed: {c['error'][:120]} | | | | | |")
                continue
            lines.append(
                f"| {name} | {rt} | {c['unpruned_ms']:.2f} | {c['goal_ms']:.2f} | "
                f"{c['pruned_ms']:.2f} | {c['steps']} | {c['macs_reduction_x']:.2f}x | "
                f"{c['speedup_x']:.2f}x | {c['speedup_over_macs']:.2f} | "
                f"**{'met' if c['meets_aim'] else 'missed'}** |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18_224")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--goal", type=float, default=0.5,
                    help="latency goal as a fraction of the unpruned latency (default 0.5)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "goal": args.goal, "runs": args.runs, "aim": AIM,
        "measured": time.strftime("%Y-%m-%d %H:%M"), "models": {}}
    for name in [m for m in args.models.split(",") if m]:
        results["models"][name] = {}
        for rt in [r for r in args.runtimes.split(",") if r]:
            cell = run_cell(name, rt, args.goal, args.runs)
            results["models"][name][rt] = cell
            brief = {k: v for k, v in cell.items() if k != "latency_per_step_ms"}
            log(f"{name} {rt}: {json.dumps(brief, default=str)}")
    write_results(Path(args.out), "prune_latency", results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
