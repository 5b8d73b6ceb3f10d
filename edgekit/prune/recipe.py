"""The optional ``[prune]`` table of a build recipe (zoo models)::

    model = "mobilenet_v2"
    targets = ["x86-onnxruntime-fp32"]

    [prune]
    macs_reduction = 0.55     # or ratio = 0.5, params_reduction = ..., latency_ms = ...
    importance = "l2"         # l1, l2, bn_scale, taylor
    round_to = 8
    steps = 2                 # prune / fine-tune steps
    fine_tune_epochs = 12     # after the last step (default: the model's epochs; 0: none)
    distill = true            # distillation from the unpruned model
    keep = ["features.0.0"]   # layers that keep their width, besides the automatic ones
    attention = "heads"       # head_dim (default), heads (remove whole heads) or keep
    global = false
    latency_target = "x86-onnxruntime-fp32"   # with latency_ms (default: the first target)
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..manifest import StageRecord, add_stage

if TYPE_CHECKING:
    from .pruner import PruneResult

__all__ = ["add_prune_record", "apply_prune_table", "check_prune_table"]

_TYPES: dict[str, Any] = {
    "ratio": (int, float), "macs_reduction": (int, float), "params_reduction": (int, float),
    "latency_ms": (int, float), "latency_target": str, "importance": str, "round_to": int,
    "steps": int, "fine_tune_epochs": int, "distill": bool, "keep": list, "global": bool,
    "attention": str,
}
_GOALS = ("ratio", "macs_reduction", "params_reduction", "latency_ms")


def check_prune_table(table: Any, source: str) -> dict[str, Any]:
    """Validate a recipe's ``[prune]`` table; errors name the recipe and the key."""
    def fail(msg: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"recipe {source}: [prune] {msg}", hint=hint)

    if not isinstance(table, dict):
        raise fail("must be a table")
    for key, value in table.items():
        if key not in _TYPES:
            raise fail(f"unknown key {key!r}", hint=f"allowed: {', '.join(sorted(_TYPES))}")
        want = _TYPES[key]
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise fail(f"{key!r} has the wrong type: {value!r}")
    goals = [k for k in _GOALS if k in table]
    if len(goals) != 1:
        raise fail(f"needs exactly one of {', '.join(_GOALS)} (got {', '.join(goals) or 'none'})")
    for key in ("ratio", "macs_reduction", "params_reduction"):
        if key in table and not 0 < table[key] < 1:
            raise fail(f"{key} = {table[key]} must be strictly between 0 and 1")
    if "latency_ms" in table and table["latency_ms"] <= 0:
        raise fail(f"latency_ms = {table['latency_ms']} must be positive")
    if table.get("importance", "l2") not in ("l1", "l2", "bn_scale", "taylor"):
        raise fail(f"importance {table['importance']!r} is not one of l1, l2, bn_scale, taylor")
    for key, low in (("round_to", 1), ("steps", 1), ("fine_tune_epochs", 0)):
        if key in table and table[key] < low:
            raise fail(f"{key} = {table[key]} must be at least {low}")
    if table.get("attention", "head_dim") not in ("head_dim", "heads", "keep"):
        raise fail(f"attention {table['attention']!r} is not one of head_dim, heads, keep")
    if not all(isinstance(k, str) and k for k in table.get("keep", [])):
        raise fail("'keep' must be a list of layer names")
    return dict(table)


def apply_prune_table(model, spec, task, table: dict[str, Any], history: list[StageRecord], *,
                      targets: list, seed: int, progress: bool) -> StageRecord:
    """Prune (and fine-tune) ``model`` in place as the table says; append the prune record to
    ``history`` and return it."""
    from ..train import evaluate
    from .latency import prune_to_latency
    from .recover import fine_tune, prune_and_fine_tune

    x = spec.example_inputs(1)
    opts = dict(importance=table.get("importance", "l2"),
                global_pruning=table.get("global", False), round_to=table.get("round_to"),
                keep_layers=table.get("keep") or None,
                attention=table.get("attention", "head_dim"))
    distill = table.get("distill", True)
    ft_epochs = table.get("fine_tune_epochs")
    before = evaluate(model, task.test, task)
    teacher = copy.deepcopy(model).eval() if distill else None
    if "latency_ms" in table:
        res, _ = prune_to_latency(model, x, latency_ms=table["latency_ms"],
                                  target=table.get("latency_target", targets[0]),
                                  progress=progress, task=task, **opts)
        after_prune = evaluate(model, task.test, task)
        if ft_epochs != 0:
            fine_tune(model, task, teacher=teacher, epochs=ft_epochs, seed=seed,
                      progress=progress)
        after = evaluate(model, task.test, task)
    else:
        goal = {k: table[k] for k in ("ratio", "macs_reduction", "params_reduction") if k in table}
        if ft_epochs == 0:
            from .pruner import prune

            res = prune(model, x, **goal, task=task, **opts)
            after_prune = after = evaluate(model, task.test, task)
        else:
            res, rep = prune_and_fine_tune(model, x, task, **goal, steps=table.get("steps", 1),
                                           final_epochs=ft_epochs, distill=distill,
                                           teacher=teacher, seed=seed, progress=progress, **opts)
            after_prune, after = rep["after_prune"], rep["after_fine_tune"]
    model.eval()
    return add_prune_record(history, res, metric=task.metric, test_before=round(before, 4),
                            test_after_prune=round(after_prune, 4),
                            test_after_fine_tune=round(after, 4))


def add_prune_record(history: list[StageRecord], result: PruneResult, **data: Any) -> StageRecord:
    """Append ``result``'s prune record, with ``data`` (the task metric, accuracies), to
    ``history``."""
    record = {k: v for k, v in result.to_json().items() if k != "stage"}
    return add_stage(history, "prune", **record, **data)
