"""Couplings torch-pruning can get wrong, checked before anything is pruned.

A convolution's feature map reshaped or flattened into a linear layer (frequency x channels
into a projection, as speech front ends do; a patch grid folded into tokens) couples each
channel to *several* inputs of the linear layer. torch-pruning follows a plain ``flatten``
but not every permute/reshape chain. :func:`check_reshaped_couplings` asks the model itself:
it marks one channel of the convolution's output with NaN, runs the model, and reads which
inputs of each coupled linear layer turned NaN. When torch-pruning would remove different
inputs than those, the group is refused, naming the layers, before anything changes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError

__all__ = ["check_reshaped_couplings"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _group_inputs(dg: tp.DependencyGraph, conv: nn.Module, channel: int
                  ) -> dict[nn.Module, set[int]]:
    """Inputs of each linear layer torch-pruning removes with ``conv``'s output ``channel``."""
    pruner = dg.get_pruner_of_module(conv)
    group = dg.get_pruning_group(conv, pruner.prune_out_channels, [channel])
    found: dict[nn.Module, set[int]] = {}
    for dep, idxs in group:
        mod = dep.target.module
        if isinstance(mod, nn.Linear) and not dg.is_out_channel_pruning_fn(dep.handler):
            found.setdefault(mod, set()).update(int(i) for i in idxs)
    return found


def _probe(model: nn.Module, inputs: tuple[torch.Tensor, ...], conv: nn.Module, channel: int,
           linears: list[nn.Module]) -> dict[nn.Module, set[int]]:
    """Inputs (last dim) of each of ``linears`` that depend on ``conv``'s output ``channel``."""
    seen: dict[nn.Module, set[int]] = {lin: set() for lin in linears}

    def mark(_mod, _inp, out):
        out = out.clone()
        out[:, channel] = float("nan")
        return out

    def read(mod):
        def hook(_mod, inp):
            x = inp[0]
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                bad = torch.isnan(x).reshape(-1, x.shape[-1]).any(0)
                seen[mod].update(int(i) for i in bad.nonzero().flatten())
        return hook

    hooks = [conv.register_forward_hook(mark)]
    hooks += [lin.register_forward_pre_hook(read(lin)) for lin in linears]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def check_reshaped_couplings(model: nn.Module, dg: tp.DependencyGraph,
                             inputs: tuple[torch.Tensor, ...], names: dict[Any, str],
                             ignored: list[nn.Module]) -> None:
    """Refuse, naming the layers, a convolution whose channels reach a linear layer through a
    reshape torch-pruning maps differently from what the model computes."""
    for conv in list(model.modules()):
        if not isinstance(conv, _CONV) or conv in ignored or conv not in dg.module2node:
            continue
        width = conv.out_channels
        mapped = _group_inputs(dg, conv, 0)
        linears = [lin for lin in mapped if lin.in_features != width]
        if not linears:
            continue
        for channel in sorted({0, width // 2, width - 1}):
            want = _probe(model, inputs, conv, channel, linears)
            got = _group_inputs(dg, conv, channel) if channel else mapped
            for lin in linears:
                if want[lin] != got.get(lin, set()):
                    c, lname = names.get(conv, type(conv).__name__), names.get(lin, "?")
                    raise ConfigError(
                        f"coupled group not prunable: channel {channel} of {c!r} reaches "
                        f"{len(want[lin])} inputs of linear layer {lname!r} through a "
                        f"reshape/permute, but torch-pruning would remove "
                        f"{len(got.get(lin, set()))} other inputs; pruning would corrupt "
                        f"{lname!r}. Nothing was pruned.",
                        hint=f"keep {c!r}'s width with keep_layers=[{c!r}] (the layers before "
                        "it still prune), or flatten channel-major with torch.flatten(x, 1)")
