"""Recovery after pruning: fine-tuning with knowledge distillation from the unpruned model, and
iterative prune / fine-tune schedules."""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import UsageError
from .graph import as_inputs
from .pruner import PruneResult, prune
from .targets import count_macs, count_params

__all__ = ["fine_tune", "prune_and_fine_tune", "merge_histories"]


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[edgekit] {msg}", file=sys.stderr, flush=True)


def fine_tune(model: nn.Module, task: Any, *, teacher: nn.Module | None = None,
              epochs: int | None = None, distill_weight: float = 0.5, lr: float | None = None,
              seed: int = 0, progress: bool = True, **fit_kwargs: Any) -> dict[str, Any]:
    """Fine-tune a pruned ``model`` on ``task`` with :func:`edgekit.train.fit`; with a
    ``teacher`` (usually the unpruned model) the loss mixes in knowledge distillation
    (``distill_weight``). Progress goes to stderr. Returns fit's history."""
    from ..train import fit

    if teacher is not None:
        teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    return fit(model, task, epochs=epochs, lr=lr, seed=seed, progress=progress,
               teacher=teacher, distill_weight=distill_weight if teacher is not None else 0.5,
               **fit_kwargs)


def merge_histories(results: Sequence[PruneResult]) -> dict[str, Any]:
    """One replayable history out of consecutive :func:`prune` results on the same model."""
    first = results[0].history
    return {**first, "target": [r.history["target"] for r in results],
            "groups": [g for r in results for g in r.history["groups"]]}


def prune_and_fine_tune(
    model: nn.Module,
    example_inputs,
    task: Any,
    *,
    ratio: float | None = None,
    macs_reduction: float | None = None,
    params_reduction: float | None = None,
    steps: int = 1,
    epochs_per_step: int | None = None,
    final_epochs: int | None = None,
    distill: bool = True,
    distill_weight: float = 0.5,
    teacher: nn.Module | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    **prune_kwargs: Any,
) -> tuple[PruneResult, dict[str, Any]]:
    """Prune in ``steps`` equal steps (each removing the same fraction of what is left, so the
    last step reaches the target), fine-tuning after each; the last fine-tune runs
    ``final_epochs``. With ``distill`` the unpruned model (a copy taken first, or ``teacher``)
    teaches the pruned one. Returns the combined :class:`PruneResult` (one replayable history)
    and a report with the metric after each step."""
    from ..train import evaluate

    inputs = as_inputs(example_inputs)
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    given = {k: v for k, v in (("ratio", ratio), ("macs_reduction", macs_reduction),
                               ("params_reduction", params_reduction)) if v is not None}
    if len(given) != 1:
        raise UsageError("give exactly one pruning target: ratio, macs_reduction or "
                         "params_reduction")
    (kind, value), = given.items()
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UsageError(f"{kind} must be a number strictly between 0 and 1, got {value!r}")
    if teacher is None and distill:
        teacher = copy.deepcopy(model).eval()
    macs0, params0 = count_macs(model, inputs), count_params(model)
    before = evaluate(model, task.test, task)
    per_step = 1 - (1 - value) ** (1 / steps)
    results: list[PruneResult] = []
    report: dict[str, Any] = {"metric": task.metric, "before": before, "steps": []}
    for step in range(steps):
        res = prune(model, inputs, **{kind: per_step}, task=task, progress=progress,
                    **prune_kwargs)
        results.append(res)
        pruned = evaluate(model, task.test, task)
        _say(progress, f"prune step {step + 1}/{steps}: {macs0 / max(1, res.macs_after):.2f}x "
             f"fewer MACs, {task.metric} {pruned:.4g} before fine-tuning")
        last = step == steps - 1
        epochs = final_epochs if last and final_epochs is not None else epochs_per_step
        hist = fine_tune(model, task, teacher=teacher if distill else None, epochs=epochs,
                         distill_weight=distill_weight, lr=lr, seed=seed + step,
                         progress=progress)
        tuned = evaluate(model, task.test, task)
        _say(progress, f"fine-tune step {step + 1}/{steps}: {task.metric} {tuned:.4g}")
        report["steps"].append({"macs": res.macs_after, "params": res.params_after,
                                "pruned": pruned, "fine_tuned": tuned,
                                "epochs": len(hist["loss"])})
    combined = PruneResult(model, merge_histories(results), macs0, count_macs(model, inputs),
                           params0, count_params(model), ignored=results[0].ignored)
    report["after_prune"] = report["steps"][0]["pruned"] if steps == 1 else report["steps"][-1][
        "pruned"]
    report["after_fine_tune"] = report["steps"][-1]["fine_tuned"]
    return combined, report
