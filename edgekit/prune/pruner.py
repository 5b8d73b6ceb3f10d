"""Structured pruning on torch-pruning's dependency graph, with a replayable history.

:func:`prune` removes whole channels / hidden units / attention head dimensions from a model,
keeps every coupled layer consistent (residual adds, concatenations, depthwise convs, LSTM gates,
``num_heads``) and returns a :class:`PruneResult` whose ``history`` is plain JSON: the pruned
groups in order (root layer name, out/in, indices, and the layers each group touched).
:func:`~edgekit.prune.history.replay` applies such a history to a fresh model, so
``replay(spec.factory(), history)`` followed by ``load_state_dict(pruned_state_dict)`` rebuilds
the pruned model without pickled code.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch_pruning as tp
from torch import nn

from ..errors import ConfigError, UsageError
from .graph import (
    as_inputs,
    build_graph,
    default_ignored_layers,
    forward_fn,
    head_counts,
    module_names,
    output_transform,
    resolve_layers,
    unwrapped_parameters,
)
from .groups import (
    check_concat_into_grouped,
    check_no_empty_layer,
    check_not_emptied,
    check_supported,
    group_record,
)
from .history import HISTORY_FORMAT
from .importance import make_importance, taylor_grads
from .lstm import LSTMPruner
from .targets import check_ratio, count_macs, count_params, pruning_targets

__all__ = ["PruneResult", "prune"]


@dataclass
class PruneResult:
    """What :func:`prune` did. ``model`` is pruned in place (the same object that was passed)."""

    model: nn.Module
    history: dict[str, Any]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ignored: list[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        """How many times fewer MACs the pruned model has."""
        return self.macs_before / max(1, self.macs_after)

    @property
    def params_ratio(self) -> float:
        return self.params_before / max(1, self.params_after)

    def to_json(self) -> dict[str, Any]:
        return {"stage": "prune", "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "ignored": list(self.ignored), "pruning": self.history}


def prune(
    model: nn.Module,
    example_inputs,
    *,
    ratio: float | None = None,
    macs_reduction: float | None = None,
    params_reduction: float | None = None,
    importance: str = "l2",
    global_pruning: bool = False,
    round_to: int | None = None,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    keep_layers: Sequence[str | nn.Module] | None = None,
    keep_embeddings: bool = False,
    max_layer_ratio: float = 0.9,
    task: Any = None,
    steps: int = 1,
    step_callback: Callable[[int, nn.Module], None] | None = None,
    progress: bool = False,
) -> PruneResult:
    """Prune ``model`` in place and return a :class:`PruneResult`.

    Exactly one target: ``ratio`` (fraction of channels removed per group), ``macs_reduction``
    or ``params_reduction`` (fraction of MACs / parameters to remove, e.g. 0.5 = 2x fewer);
    the last two prune in small steps until the target is met.
    ``importance``: ``l1``, ``l2`` (magnitude), ``bn_scale`` (batch-norm scale, L2 where a
    group has no batch norm) or ``taylor`` (first-order Taylor: weight x gradient of ``task``'s
    loss on training batches, or of the outputs' energy without a task).
    ``global_pruning`` ranks channels across layers instead of pruning each layer by the same
    ratio; ``round_to`` keeps pruned widths multiples of 8/16. ``ignored_layers`` replaces the
    automatic list of layers that keep their width (:func:`default_ignored_layers`);
    ``keep_layers`` adds to it. ``steps`` > 1 with ``ratio`` reaches the ratio in equal steps,
    calling ``step_callback(step, model)`` after each (e.g. to fine-tune in between).
    """
    inputs = as_inputs(example_inputs)
    targets = pruning_targets(ratio, macs_reduction, params_reduction)
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise UsageError(f"round_to must be a positive integer, got {round_to!r}")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    imp = make_importance(importance)
    if importance == "taylor" and task is None:
        print("[edgekit] taylor importance without a task: using output-energy gradients",
              file=sys.stderr) if progress else None
    check_ratio("max_layer_ratio", max_layer_ratio)

    model.eval()
    # fail early, naming the module, if the model cannot be traced
    build_graph(model, inputs)
    macs0, params0 = count_macs(model, inputs), count_params(model)
    if ignored_layers is None:
        ignored = default_ignored_layers(model, inputs, keep_embeddings=keep_embeddings)
    else:
        ignored = resolve_layers(model, ignored_layers)
    ignored += [m for m in resolve_layers(model, keep_layers) if m not in ignored]
    check_supported(model, ignored)
    names = module_names(model)

    if ratio is not None:
        final, iterative_steps = float(ratio), steps
        if ratio > max_layer_ratio:
            max_layer_ratio = min(0.99, float(ratio))
    else:
        final, iterative_steps = max_layer_ratio, 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model, inputs, importance=imp, global_pruning=global_pruning,
            pruning_ratio=final, max_pruning_ratio=max_layer_ratio,
            iterative_steps=iterative_steps, ignored_layers=ignored, round_to=round_to,
            num_heads=head_counts(model), prune_num_heads=False, prune_head_dims=True,
            customized_pruners={nn.LSTM: LSTMPruner()},
            unwrapped_parameters=list(unwrapped_parameters(model).items()),
            forward_fn=forward_fn, output_transform=output_transform,
            root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM,
                               tp.ops.TORCH_EMBED],
        )
    dg = pruner.DG
    check_concat_into_grouped(model, dg, names, ignored)
    groups: list[dict[str, Any]] = []
    reached = False
    for step in range(iterative_steps):
        if importance == "taylor":
            taylor_grads(model, inputs, task)
        names = module_names(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for group in pruner.step(interactive=True):
                check_not_emptied(group, names, dg, round_to)
                groups.append(group_record(group, names, dg))
                group.prune()
        model.zero_grad(set_to_none=True)
        if ratio is not None:
            if step_callback is not None:
                step_callback(step, model)
            continue
        macs, params = count_macs(model, inputs), count_params(model)
        if progress:
            print(f"[edgekit] prune step {step + 1}: {macs0 / max(macs, 1):.2f}x fewer MACs, "
                  f"{params0 / max(params, 1):.2f}x fewer parameters", file=sys.stderr)
        if (macs_reduction is not None and macs <= (1 - macs_reduction) * macs0) or (
                params_reduction is not None and params <= (1 - params_reduction) * params0):
            reached = True
            break
    if ratio is None and not reached:
        macs, params = count_macs(model, inputs), count_params(model)
        what, want, got = (("MACs", macs_reduction, 1 - macs / macs0) if macs_reduction is not None
                           else ("parameters", params_reduction, 1 - params / params0))
        raise ConfigError(
            f"a {what} reduction of {want:.0%} needs more than {max_layer_ratio:.0%} of some "
            f"layer's channels removed: the most reached keeping every layer was {got:.1%}",
            hint="lower the target, raise max_layer_ratio, or let fewer layers keep their width")
    if ratio is not None and not groups:
        raise ConfigError(
            f"ratio {ratio}{f' with round_to {round_to}' if round_to else ''} prunes nothing: "
            "every layer is too narrow to lose a channel (a layer whose rounded width would "
            "be zero keeps its width)", hint="use a larger ratio or a smaller round_to")
    check_no_empty_layer(model)
    model.eval()
    history = {
        "format": HISTORY_FORMAT,
        "importance": importance, "global_pruning": bool(global_pruning), "round_to": round_to,
        "target": {k: float(v) for k, v in targets.items()},
        "groups": groups,
    }
    return PruneResult(model, history, macs0, count_macs(model, inputs), params0,
                       count_params(model), ignored=[names.get(m, "") for m in ignored])
