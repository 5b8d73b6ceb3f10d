"""Batch-norm folding: ``conv -> BatchNorm`` (and ``linear -> BatchNorm1d``) becomes one conv
with the BN's affine map in its weight and bias; the BN module is replaced by ``nn.Identity``
(module names of the weighted layers do not change). Exact up to float rounding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from ._graph import call_counts, module_of, only_user, set_module

__all__ = ["fold_batchnorm"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm(model: nn.Module, graph: torch.fx.Graph) -> list[str]:
    """Fold every BN that is the only consumer of a conv/linear (each called once) into it, in
    place; return ``["conv -> bn", ...]``."""
    counts = call_counts(graph)
    folded = []
    for node in graph.nodes:
        layer = module_of(model, node)
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        nxt = only_user(node)
        bn = module_of(model, nxt) if nxt is not None else None
        if not isinstance(bn, _BN) or not bn.track_running_stats or bn.running_mean is None:
            continue
        if counts.get(str(node.target), 0) != 1 or counts.get(str(nxt.target), 0) != 1:  # type: ignore[union-attr]
            continue
        mean, var = bn.running_mean, bn.running_var
        assert var is not None
        gamma = bn.weight if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
        with torch.no_grad():
            if isinstance(layer, nn.Linear):
                if layer.out_features != mean.numel():
                    continue
                w, b = fuse_linear_bn_weights(layer.weight, layer.bias, mean, var, bn.eps,
                                              gamma, beta)
            else:
                w, b = fuse_conv_bn_weights(layer.weight, layer.bias, mean, var, bn.eps,
                                            gamma, beta)
            layer.weight = nn.Parameter(w.detach().clone())
            layer.bias = nn.Parameter(b.detach().clone())
        set_module(model, str(nxt.target), nn.Identity())  # type: ignore[union-attr]
        folded.append(f"{node.target} -> {nxt.target}")  # type: ignore[union-attr]
    return folded
