"""Structured pruning on torch-pruning's dependency graph, with a replayable history.

:func:`prune` removes whole channels / hidden units / attention head dimensions from a model,
keeps every coupled layer consistent (residual adds, concatenations, depthwise convs, LSTM gates,
``num_heads``) and returns a :class:`PruneResult` whose ``history`` is plain JSON: the pruned
groups in order (root layer name, out/in, indices, and the layers each group touched).
:func:`replay` applies such a history to a fresh model, so ``replay(spec.factory(), history)``
followed by ``load_state_dict(pruned_state_dict)`` rebuilds the pruned model without pickled code.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError, UsageError
from .lstm import LSTMPruner, check_lstm

__all__ = [
    "PruneResult", "prune", "replay", "default_ignored_layers", "count_macs", "count_params",
    "IMPORTANCES", "HISTORY_FORMAT",
]

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")
HISTORY_FORMAT = "edgekit.prune/1"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """MACs of one batch-1 forward pass (the zoo's analytic counter: convs, linears, LSTM gate
    matmuls and attention; torch-pruning's own counter over-counts LSTMs ~8x)."""
    from ..models.zoo import count_macs as _count

    return int(_count(model, tuple(example_inputs)))


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


# --------------------------------------------------------------------------- helpers

def _as_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    inputs = tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise UsageError("example_inputs must be a tensor or a tuple of tensors")
    return inputs


def _forward_fn(model: nn.Module, inputs) -> Any:
    return model(*inputs)


def _output_transform(out) -> torch.Tensor:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    total = None
    for o in outs:
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            total = o.sum() if total is None else total + o.sum()
    return total


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules() if n}


def _prunable_types() -> tuple[type, ...]:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear,
            nn.LSTM, nn.Embedding)


def layers_feeding_outputs(model: nn.Module, example_inputs) -> list[nn.Module]:
    """Prunable layers whose output reaches a model output through shape-keeping ops only
    (no other prunable layer in between): their output width is fixed by the model's outputs."""
    inputs = _as_inputs(example_inputs)
    produced: dict[Any, nn.Module] = {}

    def hook(mod, _inp, out):
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, tuple):  # LSTM's (h, c)
                for t in o:
                    if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                        produced[t.grad_fn] = mod
            elif isinstance(o, torch.Tensor) and o.grad_fn is not None:
                produced[o.grad_fn] = mod

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, _prunable_types())]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack = [o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if fn in produced:
            if produced[fn] not in found:
                found.append(produced[fn])
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def default_ignored_layers(model: nn.Module, example_inputs, *,
                           keep_embeddings: bool = False) -> list[nn.Module]:
    """The layers whose width must stay: the model's ``OUTPUT_LAYERS`` (see
    :func:`edgekit.models.output_layers`), every prunable layer that feeds a model output
    directly, and (``keep_embeddings=True``) every ``nn.Embedding``. An embedding's vocabulary is
    never pruned either way; without ``keep_embeddings`` its vector width may shrink together with
    the layers it is coupled to (e.g. a transformer's residual stream)."""
    from ..models import output_layers

    found: list[nn.Module] = []
    for m in [*output_layers(model), *layers_feeding_outputs(model, example_inputs)]:
        if m not in found:
            found.append(m)
    if keep_embeddings:
        found += [m for m in model.modules() if isinstance(m, nn.Embedding) and m not in found]
    return found


def _resolve_layers(model: nn.Module, layers) -> list[nn.Module]:
    named = dict(model.named_modules())
    out: list[nn.Module] = []
    for layer in layers or ():
        if isinstance(layer, str):
            if layer not in named or not layer:
                raise UsageError(f"no layer named {layer!r} in {type(model).__name__}",
                                 hint="names are those of model.named_modules()")
            out.append(named[layer])
        elif isinstance(layer, nn.Module):
            out.append(layer)
        else:
            raise UsageError(f"ignored_layers entries must be layer names or modules, "
                             f"got {type(layer).__name__}")
    return out


def _num_heads(model: nn.Module) -> dict[nn.Module, int]:
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def _unwrapped(model: nn.Module) -> dict[nn.Parameter, int]:
    """Free-standing parameters (e.g. a positional embedding): prune along their last dim."""
    wrapped = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.Linear, nn.LSTM, nn.GRU, nn.RNN, nn.Embedding, nn.MultiheadAttention,
               nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU,
               nn.modules.instancenorm._InstanceNorm)
    found = {}
    for mod in model.modules():
        if isinstance(mod, wrapped):
            continue
        for p in mod.parameters(recurse=False):
            if p.dim() >= 1:
                found[p] = p.dim() - 1
    return found


def _check_supported(model: nn.Module, ignored: list[nn.Module]) -> None:
    names = _module_names(model)
    for mod in model.modules():
        if isinstance(mod, nn.LSTM) and mod not in ignored:
            reason = check_lstm(mod, names.get(mod, ""))
            if reason:
                raise UsageError(f"cannot prune {reason}",
                                 hint=f"keep it with ignored_layers=[{names.get(mod, '')!r}]")
        if isinstance(mod, (nn.GRU, nn.RNN)) and mod not in ignored:
            raise UsageError(f"cannot prune {type(mod).__name__} {names.get(mod, '')!r}: "
                             "only LSTM recurrent layers are supported",
                             hint=f"keep it with ignored_layers=[{names.get(mod, '')!r}]")


def build_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """torch-pruning's dependency graph with edgekit's LSTM pruner; a tracing failure names the
    module that could not be traced."""
    inputs = _as_inputs(example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, forward_fn=_forward_fn,
                output_transform=_output_transform,
                unwrapped_parameters=list(_unwrapped(model).items()),
                customized_pruners={nn.LSTM: LSTMPruner()}, verbose=False)
        except Exception as exc:
            raise _trace_error(model, inputs, exc) from exc


def _trace_error(model: nn.Module, inputs, exc: Exception) -> UsageError:
    """Find the innermost module whose forward raised while torch-pruning traced the model."""
    culprit: list[str] = []
    names = _module_names(model)

    def pre(mod, _inp):
        stack.append(mod)

    def post(mod, _inp, _out):
        stack.pop()

    stack: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()]
    hooks += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.enable_grad():
            model(*inputs)
    except Exception:
        culprit = [names.get(m, type(m).__name__) for m in stack[1:]]
    finally:
        for h in hooks:
            h.remove()
    where = culprit[-1] if culprit else None
    if where is None:  # forward works, the graph walk itself failed: name the module types
        where = next((f"{n} ({type(m).__name__})" for m, n in names.items()
                      if not list(m.children()) and not isinstance(m, _prunable_types())
                      and type(m).__module__.split(".")[0] != "torch"), type(model).__name__)
    return UsageError(
        f"torch-pruning cannot trace {type(model).__name__} at module {where}: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        hint="add that module to ignored_layers, or make its forward traceable "
             "(tensor ops only, no data-dependent Python control flow)")


# --------------------------------------------------------------------------- importance

class _LSTMAware(tp.importance.Importance):
    """Wraps a torch-pruning importance; adds an L2 magnitude term for LSTM hidden units (over
    the four gate rows of both weight matrices), which torch-pruning does not score."""

    def __init__(self, base: tp.importance.Importance, fallback=None) -> None:
        self.base, self.fallback = base, fallback

    def __call__(self, group) -> torch.Tensor | None:
        imp = self.base(group)
        if imp is None and self.fallback is not None:
            imp = self.fallback(group)
        lstm = None
        for dep, idxs in group:
            layer = dep.target.module
            if (isinstance(layer, nn.LSTM)
                    and getattr(dep.handler, "__name__", "") == "prune_out_channels"):
                hid = layer.hidden_size
                idx = torch.as_tensor(idxs, dtype=torch.long)
                score = torch.zeros(len(idx))
                for k in range(layer.num_layers):
                    for name in ("weight_ih", "weight_hh"):
                        w = getattr(layer, f"{name}_l{k}").detach()
                        rows = w.view(4, hid, -1).pow(2).sum(dim=(0, 2))
                        score = score + rows[idx]
                    score = score + getattr(layer, f"weight_hh_l{k}").detach()[:, idx].pow(2).sum(0)
                score = score.sqrt()
                score = score / score.mean().clamp_min(1e-12)
                lstm = score if lstm is None else lstm + score
        if imp is None:
            return lstm
        if lstm is not None and len(lstm) == len(imp):
            imp = imp / imp.mean().clamp_min(1e-12) + lstm
        return imp


def _importance(kind: str):
    if kind == "l1":
        return _LSTMAware(tp.importance.MagnitudeImportance(p=1))
    if kind == "l2":
        return _LSTMAware(tp.importance.MagnitudeImportance(p=2))
    if kind == "bn_scale":  # groups without batch norm fall back to L2 magnitude
        return _LSTMAware(tp.importance.BNScaleImportance(),
                          fallback=tp.importance.MagnitudeImportance(p=2))
    if kind == "taylor":
        return _LSTMAware(tp.importance.GroupTaylorImportance())
    raise UsageError(f"unknown importance {kind!r}", hint=f"choose one of {', '.join(IMPORTANCES)}")


def _taylor_grads(model: nn.Module, inputs, task, batches: int = 4, batch_size: int = 128) -> None:
    """Accumulate gradients of the task loss (or of the outputs' squared sum without a task)."""
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        if task is None:
            out = model(*inputs)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            sum(o.float().pow(2).mean() for o in outs if o.is_floating_point()).backward()
        else:
            split = task.train
            for b in range(batches):
                sl = slice(b * batch_size, (b + 1) * batch_size)
                batch = tuple(t[sl] for t in split.inputs)
                if len(batch[0]) == 0:
                    break
                task.loss(model(*batch), split.targets[sl], batch).backward()
    model.train(was_training)


# --------------------------------------------------------------------------- prune

def _group_record(group, names: dict[Any, str], dg: tp.DependencyGraph) -> dict[str, Any]:
    dep0, idxs0 = group[0]
    layers = []
    for dep, _idxs in group:
        mod = dep.target.module
        name = names.get(mod) or dg._param_to_name.get(mod) if not isinstance(mod, nn.Module) \
            else names.get(mod)
        kind = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
        if name and [name, kind] not in layers:
            layers.append([name, kind])
    return {"root": names.get(dep0.target.module, ""),
            "dim": "out" if dg.is_out_channel_pruning_fn(dep0.handler) else "in",
            "idxs": [int(i) for i in idxs0], "layers": layers}


def _check_ratio(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise UsageError(f"{name} must be a number strictly between 0 and 1, got {value!r}",
                         hint="e.g. 0.5 removes half")


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
    inputs = _as_inputs(example_inputs)
    targets = {k: v for k, v in (("ratio", ratio), ("macs_reduction", macs_reduction),
                                 ("params_reduction", params_reduction)) if v is not None}
    if len(targets) != 1:
        raise UsageError("give exactly one pruning target: ratio, macs_reduction or "
                         f"params_reduction (got {', '.join(targets) or 'none'})")
    for k, v in targets.items():
        _check_ratio(k, v)
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise UsageError(f"round_to must be a positive integer, got {round_to!r}")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    imp = _importance(importance)
    if importance == "taylor" and task is None:
        print("[edgekit] taylor importance without a task: using output-energy gradients",
              file=sys.stderr) if progress else None
    _check_ratio("max_layer_ratio", max_layer_ratio)

    model.eval()
    # fail early, naming the module, if the model cannot be traced
    build_graph(model, inputs)
    macs0, params0 = count_macs(model, inputs), count_params(model)
    if ignored_layers is None:
        ignored = default_ignored_layers(model, inputs, keep_embeddings=keep_embeddings)
    else:
        ignored = _resolve_layers(model, ignored_layers)
    ignored += [m for m in _resolve_layers(model, keep_layers) if m not in ignored]
    _check_supported(model, ignored)
    names = _module_names(model)

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
            num_heads=_num_heads(model), prune_num_heads=False, prune_head_dims=True,
            customized_pruners={nn.LSTM: LSTMPruner()},
            unwrapped_parameters=list(_unwrapped(model).items()),
            forward_fn=_forward_fn, output_transform=_output_transform,
            root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM,
                               tp.ops.TORCH_EMBED],
        )
    dg = pruner.DG
    _check_concat_into_grouped(model, dg, names, ignored)
    groups: list[dict[str, Any]] = []
    reached = False
    for step in range(iterative_steps):
        if importance == "taylor":
            _taylor_grads(model, inputs, task)
        names = _module_names(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for group in pruner.step(interactive=True):
                _check_not_emptied(group, names, dg, round_to)
                groups.append(_group_record(group, names, dg))
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
    _check_no_empty_layer(model)
    model.eval()
    history = {
        "format": HISTORY_FORMAT,
        "importance": importance, "global_pruning": bool(global_pruning), "round_to": round_to,
        "target": {k: float(v) for k, v in targets.items()},
        "groups": groups,
    }
    return PruneResult(model, history, macs0, count_macs(model, inputs), params0,
                       count_params(model), ignored=[names.get(m, "") for m in ignored])


def _check_concat_into_grouped(model: nn.Module, dg: tp.DependencyGraph, names: dict,
                               ignored: list[nn.Module]) -> None:
    """torch-pruning maps a concatenation's channels wrongly into a grouped (not depthwise)
    convolution's per-group inputs; refuse before anything is pruned, naming the group, unless
    the grouped conv and every concatenated layer keep their width."""
    for module in model.modules():
        if not isinstance(module, nn.Conv2d | nn.Conv1d) or module.groups == 1 or \
                module.groups == module.in_channels or module not in dg.module2node:
            continue
        seen, todo, sources, concat = set(), list(dg.module2node[module].inputs), [], False
        kept = module in ignored
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.type == tp.ops.OPTYPE.CONCAT:
                concat = True
            if isinstance(node.module, _prunable_types()):
                sources.append(names.get(node.module, type(node.module).__name__))
                kept = kept and node.module in ignored
                continue
            todo.extend(node.inputs)
        if concat and not kept:
            name = names.get(module, type(module).__name__)
            raise ConfigError(
                f"coupled group not prunable: the concatenation of {sorted(sources)} feeds "
                f"grouped convolution {name!r} (groups={module.groups}); torch-pruning cannot "
                "map concatenated channels into its per-group inputs, so pruning would "
                "corrupt the layer. Nothing was pruned.",
                hint=f"keep these widths: keep_layers={sorted(sources) + [name]!r}, or make "
                f"{name!r} depthwise or plain")


def _check_not_emptied(group, names: dict, dg: tp.DependencyGraph, round_to) -> None:
    for dep, idxs in group:
        mod = dep.target.module
        if not isinstance(mod, nn.Module) or not dg.is_out_channel_pruning_fn(dep.handler):
            continue
        width = dg.get_out_channels(mod)
        if width is not None and len(set(idxs)) >= width:
            raise ConfigError(
                f"this target would remove every channel of layer {names.get(mod, '?')!r} "
                f"({width} channels{f', rounded to multiples of {round_to}' if round_to else ''})",
                hint="use a smaller ratio or round_to, or keep the layer with keep_layers "
                     "(the model passed in may be partly pruned: prune a copy)")


def _check_no_empty_layer(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        widths = [getattr(mod, a, None) for a in ("out_channels", "out_features", "hidden_size",
                                                  "embedding_dim", "in_channels", "in_features")]
        if any(w == 0 for w in widths if isinstance(w, int)):
            raise ConfigError(f"pruning would remove every channel of layer {name!r}",
                              hint="use a smaller ratio or a lower max_layer_ratio")


def replay(model: nn.Module, history: dict[str, Any] | Sequence[dict[str, Any]],
           example_inputs=None) -> nn.Module:
    """Apply a pruning ``history`` (from :attr:`PruneResult.history`, a manifest's prune record,
    or a list of them) to a freshly built ``model`` of the same architecture, in place.

    Load the pruned ``state_dict`` afterwards to get the pruned model back exactly.
    ``example_inputs`` default to the zoo spec's when the model comes from the zoo.
    """
    records = [history] if isinstance(history, dict) else list(history)
    records = [r.get("pruning", r) for r in records if r.get("stage", "prune") == "prune"]
    if example_inputs is None:
        name = getattr(model, "edgekit_name", None)
        if name is None:
            raise UsageError("replay needs example_inputs for a model that is not from the zoo")
        from ..models import get_spec

        example_inputs = get_spec(name).example_inputs(1)
    inputs = _as_inputs(example_inputs)
    model.eval()
    for rec in records:
        if rec.get("format") != HISTORY_FORMAT:
            raise ConfigError(f"unknown pruning history format {rec.get('format')!r}",
                              hint=f"expected {HISTORY_FORMAT}")
        dg = build_graph(model, inputs)
        named = dict(model.named_modules())
        for g in rec["groups"]:
            if g["root"] not in named:
                raise ConfigError(f"pruning history names layer {g['root']!r}, which "
                                  f"{type(model).__name__} does not have")
            module = named[g["root"]]
            pruner = dg.get_pruner_of_module(module)
            fn = pruner.prune_out_channels if g["dim"] == "out" else pruner.prune_in_channels
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dg.get_pruning_group(module, fn, list(g["idxs"])).prune(record_history=False)
    return model.eval()


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
