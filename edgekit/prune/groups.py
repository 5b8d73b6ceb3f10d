"""Coupled groups: the record of one pruned group in the history, and the checks that refuse
a group torch-pruning would get wrong (unsupported recurrent layers, a concatenation into a
grouped convolution, a layer emptied of every channel)."""

from __future__ import annotations

from typing import Any

import torch_pruning as tp
from torch import nn

from ..errors import ConfigError, UsageError
from .graph import module_names, prunable_types
from .gru import check_gru
from .lstm import check_lstm

__all__ = ["check_concat_into_grouped", "check_no_empty_layer", "check_not_emptied",
           "check_supported", "group_record"]


def group_record(group, names: dict[Any, str], dg: tp.DependencyGraph) -> dict[str, Any]:
    """One pruned group as history JSON: root layer, out/in, indices, layers it touched."""
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


def check_supported(model: nn.Module, ignored: list[nn.Module]) -> None:
    """Refuse recurrent layers edgekit cannot prune (bidirectional GRU/RNN, bidirectional or
    projected LSTMs) unless kept; the hint keeps just that layer (``keep_layers``), so the
    model's output layers stay kept too."""
    names = module_names(model)
    for mod in model.modules():
        if mod in ignored or not isinstance(mod, (nn.LSTM, nn.GRU, nn.RNN)):
            continue
        name = names.get(mod, "")
        reason = check_lstm(mod, name) if isinstance(mod, nn.LSTM) else check_gru(mod, name)
        if reason:
            raise UsageError(f"cannot prune the hidden units of {reason}",
                             hint=f"keep its width with keep_layers=[{name!r}]; the layers "
                             "around it still prune")


def check_concat_into_grouped(model: nn.Module, dg: tp.DependencyGraph, names: dict,
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
            if isinstance(node.module, prunable_types()):
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


def check_not_emptied(group, names: dict, dg: tp.DependencyGraph, round_to) -> None:
    """Refuse a group that would remove every channel of one of its layers."""
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


def check_no_empty_layer(model: nn.Module) -> None:
    """Refuse a pruned model with a layer of width zero."""
    for name, mod in model.named_modules():
        widths = [getattr(mod, a, None) for a in ("out_channels", "out_features", "hidden_size",
                                                  "embedding_dim", "in_channels", "in_features")]
        if any(w == 0 for w in widths if isinstance(w, int)):
            raise ConfigError(f"pruning would remove every channel of layer {name!r}",
                              hint="use a smaller ratio or a lower max_layer_ratio")
