"""Structured pruning on torch-pruning's dependency graph, with a replayable history.

:func:`prune` removes whole channels / hidden units / attention heads or head dimensions from a
model, keeps every coupled layer consistent (residual adds, concatenations, depthwise convs,
LSTM and GRU gates, attention head counts) and returns a :class:`PruneResult` whose
``history`` is plain JSON: the pruned groups in order (root layer name, out/in, indices, and
the layers each group touched; attention records name the heads removed).
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

from ..errors import ConfigError, EdgekitError, NotSupportedError, UsageError
from .atomic import commit, failing_layer, pruning_failure, working_copy
from .attention import (
    ATTENTION_MODES,
    find_sites,
    prune_site,
    replace_module,
    split_multihead_attention,
    split_record,
    sync_configs,
    unrecognised_attention,
    wanted,
)
from .couplings import check_reshaped_couplings
from .graph import (
    as_inputs,
    build_graph,
    custom_pruners,
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
from .targets import check_ratio, count_macs, count_params, pruning_targets

__all__ = ["PruneResult", "prune"]


@dataclass
class PruneResult:
    """What :func:`prune` did. ``model`` is the model that was passed, now pruned."""

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
    attention: str = "head_dim",
    max_layer_ratio: float = 0.9,
    task: Any = None,
    steps: int = 1,
    step_callback: Callable[[int, nn.Module], None] | None = None,
    progress: bool = False,
) -> PruneResult:
    """Prune ``model`` and return a :class:`PruneResult`; all or nothing.

    The work happens on a copy: only when every step succeeded does ``model`` (the same object,
    and every submodule object it holds) take the pruned weights and structure. Any failure
    leaves it exactly as it was and raises an edgekit error naming the layer.

    Exactly one target: ``ratio`` (fraction of channels removed per group), ``macs_reduction``
    or ``params_reduction`` (fraction of MACs / parameters to remove, e.g. 0.5 = 2x fewer);
    the last two prune in small steps until the target is met.
    ``importance``: ``l1``, ``l2`` (magnitude), ``bn_scale`` (batch-norm scale, L2 where a
    group has no batch norm) or ``taylor`` (first-order Taylor: weight x gradient of ``task``'s
    loss on training batches, or of the outputs' energy without a task).
    ``global_pruning`` ranks channels across layers instead of pruning each layer by the same
    ratio; ``round_to`` keeps pruned widths multiples of 8/16. ``ignored_layers`` replaces the
    automatic list of layers that keep their width (:func:`default_ignored_layers`);
    ``keep_layers`` adds to it. ``attention``: ``head_dim`` shrinks every head's dimension by
    the same amount (``nn.MultiheadAttention`` together with its embedding width), ``heads``
    removes whole heads (least L2 norm first; at least one stays), ``keep`` leaves attention
    widths alone; the transformer library's BERT/ViT/CLIP-style attention modules get their
    head attributes (and config) updated. ``steps`` > 1 with ``ratio`` reaches the ratio in
    equal steps, calling ``step_callback(step, pruned_model)`` after each (e.g. to fine-tune in
    between; ``pruned_model`` is the working copy until the end).

    >>> res = prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)  # doctest: +SKIP
    >>> res.macs_ratio  # doctest: +SKIP
    3.1
    """
    inputs = as_inputs(example_inputs)
    targets = pruning_targets(ratio, macs_reduction, params_reduction)
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise UsageError(f"round_to must be a positive integer, got {round_to!r}")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    if attention not in ATTENTION_MODES:
        raise UsageError(f"unknown attention mode {attention!r}",
                         hint=f"choose one of {', '.join(ATTENTION_MODES)}")
    imp = make_importance(importance)
    if importance == "taylor" and task is None and progress:
        print("[edgekit] taylor importance without a task: using output-energy gradients",
              file=sys.stderr)
    check_ratio("max_layer_ratio", max_layer_ratio)

    work, mapping = working_copy(model)
    work.eval()
    # fail early, naming the module, if the model cannot be traced
    build_graph(work, inputs)
    kept_user = [*resolve_layers(model, ignored_layers or ()),
                 *resolve_layers(model, keep_layers)]
    missing = [type(m).__name__ for m in kept_user if m not in mapping]
    if missing:
        raise UsageError(f"ignored_layers / keep_layers hold modules that are not part of "
                         f"{type(model).__name__}: {', '.join(missing)}",
                         hint="pass layer names (model.named_modules()) or the model's own "
                         "submodules")
    if ignored_layers is None:
        ignored = default_ignored_layers(work, inputs, keep_embeddings=keep_embeddings)
    else:
        ignored = [mapping[m] for m in resolve_layers(model, ignored_layers)]
    ignored += [mapping[m] for m in resolve_layers(model, keep_layers)
                if mapping[m] not in ignored]
    try:
        result = _prune_copy(work, inputs, targets, ratio=ratio, macs_reduction=macs_reduction,
                             params_reduction=params_reduction, imp=imp, importance=importance,
                             global_pruning=global_pruning, round_to=round_to, ignored=ignored,
                             attention=attention, max_layer_ratio=max_layer_ratio, task=task,
                             steps=steps, step_callback=step_callback, progress=progress)
    except EdgekitError:
        raise
    except Exception as exc:
        where = failing_layer(work, inputs)
        raise pruning_failure(exc, layer=where[0] if where else None, coupled=[],
                              during="inside torch-pruning" if where is None else
                              "when the pruned model ran") from exc
    commit(model, work, mapping)
    result.model = model.eval()
    return result


def _prune_copy(work: nn.Module, inputs: tuple, targets: dict[str, float], *, ratio,
                macs_reduction, params_reduction, imp, importance: str, global_pruning: bool,
                round_to,
                ignored: list[nn.Module], attention: str, max_layer_ratio: float, task: Any,
                steps: int, step_callback, progress: bool) -> PruneResult:
    """:func:`prune` on the working copy ``work`` (arguments checked)."""
    macs0, params0 = _macs(work, inputs, "before pruning"), count_params(work)
    names = module_names(work)
    reported = [names.get(m, "") for m in ignored]
    check_supported(work, ignored)
    groups: list[dict[str, Any]] = []

    # attention: nn.MultiheadAttention loses whole heads only in its split form
    if attention == "heads":
        for name, mod in list(work.named_modules()):
            if isinstance(mod, nn.MultiheadAttention) and mod not in ignored:
                replace_module(work, name, split_multihead_attention(mod))
                groups.append(split_record(name))
        names = module_names(work)
    sites = [s for s in find_sites(work)
             if not {s.module, s.q, s.k, s.v} & set(ignored)]
    all_sites = find_sites(work)
    inner: list[nn.Module] = [lin for s in all_sites for lin in (s.q, s.k, s.v)]
    inner += unrecognised_attention(work, all_sites)
    if attention == "keep":
        inner += [m for m in work.modules() if isinstance(m, nn.MultiheadAttention)]
    tp_ignored = ignored + [m for m in inner if m not in ignored]
    start = {s.name: (s.heads if attention == "heads" else s.head_dim) for s in sites}

    if ratio is not None:
        final, iterative_steps = float(ratio), steps
        if ratio > max_layer_ratio:
            max_layer_ratio = min(0.99, float(ratio))
    else:
        final, iterative_steps = max_layer_ratio, 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            work, inputs, importance=imp, global_pruning=global_pruning,
            pruning_ratio=final, max_pruning_ratio=max_layer_ratio,
            iterative_steps=iterative_steps, ignored_layers=tp_ignored, round_to=round_to,
            num_heads=head_counts(work), prune_num_heads=False, prune_head_dims=True,
            customized_pruners=custom_pruners(),
            unwrapped_parameters=list(unwrapped_parameters(work).items()),
            forward_fn=forward_fn, output_transform=output_transform,
            root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM,
                               tp.ops.TORCH_EMBED, nn.GRU, nn.RNN],
        )
    dg = pruner.DG
    check_concat_into_grouped(work, dg, names, tp_ignored)
    check_reshaped_couplings(work, dg, inputs, names, tp_ignored)
    reached = False
    for step in range(iterative_steps):
        fraction = pruner.per_step_pruning_ratio[min(step + 1, iterative_steps)]
        for site in sites if attention != "keep" else []:
            now = site.heads if attention == "heads" else site.head_dim
            gone = start[site.name] - now
            rec = prune_site(site, attention,
                             wanted(start[site.name], fraction, max_layer_ratio) - gone)
            if rec is not None:
                groups.append(rec)
        if sites:
            sync_configs(work)
        if importance == "taylor":
            taylor_grads(work, inputs, task)
        names = module_names(work)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for group in pruner.step(interactive=True):
                check_not_emptied(group, names, dg, round_to)
                record = group_record(group, names, dg)
                try:
                    group.prune()
                except Exception as exc:
                    raise pruning_failure(
                        exc, layer=record["root"], coupled=[n for n, _ in record["layers"]],
                        during=f"while pruning the group rooted at {record['root']!r} (layers "
                               f"{sorted({n for n, _ in record['layers']})})") from exc
                groups.append(record)
        work.zero_grad(set_to_none=True)
        _check_runs(work, inputs, groups)
        if ratio is not None:
            if step_callback is not None:
                step_callback(step, work)
            continue
        macs, params = _macs(work, inputs, "after a pruning step"), count_params(work)
        if progress:
            print(f"[edgekit] prune step {step + 1}: {macs0 / max(macs, 1):.2f}x fewer MACs, "
                  f"{params0 / max(params, 1):.2f}x fewer parameters", file=sys.stderr)
        if (macs_reduction is not None and macs <= (1 - macs_reduction) * macs0) or (
                params_reduction is not None and params <= (1 - params_reduction) * params0):
            reached = True
            break
    if ratio is None and not reached:
        macs, params = _macs(work, inputs, "after pruning"), count_params(work)
        what, want, got = (("MACs", macs_reduction, 1 - macs / macs0) if macs_reduction is not None
                           else ("parameters", params_reduction, 1 - params / params0))
        raise ConfigError(
            f"a {what} reduction of {want:.0%} needs more than {max_layer_ratio:.0%} of some "
            f"layer's channels removed: the most reached keeping every layer was {got:.1%}",
            hint="lower the target, raise max_layer_ratio, or let fewer layers keep their width")
    if ratio is not None and not groups:
        _nothing_pruned(work, ratio, round_to, tp_ignored, names)
    check_no_empty_layer(work)
    work.eval()
    history = {
        "format": HISTORY_FORMAT,
        "importance": importance, "global_pruning": bool(global_pruning), "round_to": round_to,
        "attention": attention,
        "target": {k: float(v) for k, v in targets.items()},
        "groups": groups,
    }
    return PruneResult(work, history, macs0, _macs(work, inputs, "after pruning"), params0,
                       count_params(work), ignored=reported)


def _macs(work: nn.Module, inputs: tuple, when: str) -> int:
    """MACs of the working copy; a failure names the layer the forward failed in."""
    try:
        return count_macs(work, inputs)
    except EdgekitError:
        raise
    except Exception as exc:
        where = failing_layer(work, inputs)
        raise pruning_failure(exc, layer=where[0] if where else None, coupled=[],
                              during=f"while counting MACs {when}") from exc


def _check_runs(work: nn.Module, inputs: tuple, groups: list[dict[str, Any]]) -> None:
    """Run the pruned copy; a failure names the layer and the groups that pruned its inputs."""
    broken = failing_layer(work, inputs)
    if broken is None:
        return
    layer, what = broken
    if layer in {g["layer"] for g in groups if g.get("kind") == "attention"}:
        raise NotSupportedError(
            f"pruning failed at attention layer {layer!r} when the pruned model ran: {what}. "
            "The model passed in is unchanged.",
            hint="its forward does not follow the head count / head size attributes edgekit "
                 "updated (e.g. it reshapes the heads' output to the input width): leave "
                 f"attention widths alone with attention='keep' or keep_layers=[{layer!r}]")
    coupled = sorted({n for g in groups for n, kind in g.get("layers", ())
                      if kind == "out" and [layer, "in"] in g.get("layers", ())} | {layer})
    raise pruning_failure(RuntimeError(what), layer=layer, coupled=coupled,
                          during="when the pruned model ran")


def _nothing_pruned(work: nn.Module, ratio: float, round_to, ignored: list[nn.Module],
                    names: dict) -> None:
    """The ConfigError for a ratio that pruned nothing, with the actual reason."""
    from .graph import prunable_types

    free = [m for m in work.modules() if isinstance(m, prunable_types()) and m not in ignored
            and not isinstance(m, nn.Embedding)]
    if not free:
        kept = sorted(n for m, n in names.items() if m in ignored)
        raise ConfigError(
            f"ratio {ratio} prunes nothing: every prunable layer keeps its width (the "
            f"model's output layers and the ones kept: {kept})",
            hint="keep fewer layers (keep_layers / ignored_layers), or prune a model with "
                 "hidden layers between its inputs and outputs")
    raise ConfigError(
        f"ratio {ratio}{f' with round_to {round_to}' if round_to else ''} prunes nothing: "
        "every layer is too narrow to lose a channel (a layer whose rounded width would "
        "be zero keeps its width)", hint="use a larger ratio or a smaller round_to")
