"""Prune until a measured latency on a target profile is met."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, EdgekitError, UsageError
from .graph import as_inputs
from .pruner import PruneResult, prune
from .recover import merge_histories
from .targets import count_macs, count_params

__all__ = ["measure_latency", "prune_to_latency"]


def measure_latency(model: nn.Module, example_inputs, target: Any = "x86-onnxruntime-fp32", *,
                    runs: int = 100, warmup: int = 10, threads: int | None = None) -> float:
    """Median latency (ms) of ``model`` exported for ``target`` (a profile name, path or
    :class:`~edgekit.profiles.TargetProfile`), timed with :mod:`edgekit.measure.timing`, the timer
    every tool uses."""
    from ..backends import get_backend
    from ..measure.timing import time_interleaved
    from ..profiles import resolve_targets

    profile = resolve_targets([target])[0]
    inputs = as_inputs(example_inputs)
    backend = get_backend(profile.backend)
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-") as tmp:
        names_in = [f"input_{i}" for i in range(len(inputs))] if len(inputs) > 1 else ["input"]
        out = model(*inputs)
        n_out = len(out) if isinstance(out, (tuple, list)) else 1
        names_out = [f"output_{i}" for i in range(n_out)] if n_out > 1 else ["output"]
        art = backend.export(model.eval(), inputs, Path(tmp), input_names=names_in,
                             output_names=names_out, options=dict(profile.options))
        session = backend.load(art, threads=threads or profile.threads,
                               options=dict(profile.options))
        feed = [t.numpy() for t in inputs]
        stats = time_interleaved({"m": session}, {"m": feed}, warmup=warmup, runs=runs)
        return float(stats["m"].median_ms)


def prune_to_latency(model: nn.Module, example_inputs, *, latency_ms: float,
                     target: Any = "x86-onnxruntime-fp32", step: float = 0.15,
                     max_steps: int = 12, runs: int = 100, progress: bool = True,
                     **prune_kwargs: Any) -> tuple[PruneResult, dict[str, Any]]:
    """Prune ``model`` in place, ``step`` of its remaining MACs at a time, measuring the median
    latency on ``target`` after each step, until it is at most ``latency_ms``.

    Raises :class:`ConfigError` saying the best latency reached if the target cannot be met
    (the model is then left at its smallest pruned state)."""
    if not isinstance(latency_ms, (int, float)) or latency_ms <= 0:
        raise UsageError(f"latency_ms must be a positive number, got {latency_ms!r}")
    if not 0 < step < 1:
        raise UsageError(f"step must be between 0 and 1, got {step!r}")
    inputs = as_inputs(example_inputs)
    macs0, params0 = count_macs(model, inputs), count_params(model)
    measured = [measure_latency(model, inputs, target, runs=runs)]
    report: dict[str, Any] = {"target": str(getattr(target, "name", target)),
                              "latency_ms_goal": latency_ms, "latency_ms": measured}
    say = (lambda m: print(f"[edgekit] {m}", file=sys.stderr, flush=True)) if progress else (
        lambda m: None)
    say(f"unpruned: {measured[0]:.3f} ms on {report['target']} (goal {latency_ms} ms)")
    results: list[PruneResult] = []
    best = (measured[0], 0)
    while measured[-1] > latency_ms and len(results) < max_steps:
        try:
            res = prune(model, inputs, macs_reduction=step, **prune_kwargs)
        except EdgekitError:
            break
        results.append(res)
        measured.append(measure_latency(model, inputs, target, runs=runs))
        best = min(best, (measured[-1], len(results)))
        say(f"prune step {len(results)}: {macs0 / max(1, res.macs_after):.2f}x fewer MACs, "
            f"{measured[-1]:.3f} ms")
    if measured[-1] > latency_ms:
        raise ConfigError(
            f"latency goal {latency_ms} ms on {report['target']} not met: the best reached was "
            f"{best[0]:.3f} ms (unpruned {measured[0]:.3f} ms) after {best[1]} pruning steps",
            hint="raise the goal, allow more steps, or let fewer layers keep their width")
    if not results:  # already fast enough: an empty history
        history = {"format": "edgekit.prune/1", "target": {"latency_ms": latency_ms},
                   "groups": []}
        macs = macs0
        res = PruneResult(model, history, macs0, macs, params0, params0)
        return res, report
    hist = merge_histories(results)
    hist["target"] = {"latency_ms": float(latency_ms), "profile": report["target"]}
    return PruneResult(model, hist, macs0, count_macs(model, inputs), params0,
                       count_params(model), ignored=results[0].ignored), report
