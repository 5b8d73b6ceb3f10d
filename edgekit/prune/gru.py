"""A torch-pruning pruner for ``nn.GRU`` hidden units.

Removing hidden unit ``h`` removes, in every layer, rows ``{h, H+h, 2H+h}`` (the reset, update
and new gates) of ``weight_ih``, ``weight_hh``, ``bias_ih`` and ``bias_hh``, column ``h`` of
``weight_hh`` and, for layers after the first, column ``h`` of ``weight_ih`` (the previous
layer's hidden state). Whatever consumes the GRU output loses the same inputs through
torch-pruning's dependency graph. A unit whose incoming and outgoing weights are all zero stays
at zero from ``h0 = 0`` (``h' = (1 - z) * n + z * h`` with ``n = tanh(0) = 0``), so removing it
changes nothing else: the tests check that equivalence.

Bidirectional GRUs are refused (both directions share ``hidden_size`` while the consumer sees
``2H`` features); keep them with ``keep_layers`` and the layers around them still prune.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from .lstm import _keep, _take

__all__ = ["GRUPruner", "RNNPruner", "check_gru"]


def check_gru(layer: nn.GRU | nn.RNN, name: str = "") -> str | None:
    """Why ``layer``'s hidden units cannot be pruned by :class:`GRUPruner` / :class:`RNNPruner`
    (``None`` if they can)."""
    if layer.bidirectional:
        return (f"nn.{type(layer).__name__} {name!r} (bidirectional: both directions share "
                "hidden_size while its consumer sees them side by side)")
    return None


class GRUPruner(tp.pruner.function.BasePruningFunc):
    """Prunes hidden units (out channels) and input features (in channels) of an ``nn.GRU``."""

    TARGET_MODULES: type[nn.RNNBase] = nn.GRU
    GATES = 3

    def prune_out_channels(self, layer: nn.GRU, idxs) -> nn.Module:
        reason = check_gru(layer)
        if reason:
            raise ValueError(reason)
        hidden = layer.hidden_size
        keep = _keep(hidden, idxs)
        gates = torch.cat([keep + g * hidden for g in range(self.GATES)])
        for k in range(layer.num_layers):
            sfx = f"_l{k}"
            w_ih = _take(getattr(layer, "weight_ih" + sfx), gates, 0)
            setattr(layer, "weight_ih" + sfx, _take(w_ih, keep, 1) if k > 0 else w_ih)
            w_hh = _take(getattr(layer, "weight_hh" + sfx), gates, 0)
            setattr(layer, "weight_hh" + sfx, _take(w_hh, keep, 1))
            if layer.bias:
                for b in ("bias_ih", "bias_hh"):
                    setattr(layer, b + sfx, _take(getattr(layer, b + sfx), gates, 0))
        layer.hidden_size = len(keep)
        layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
        return layer

    def prune_in_channels(self, layer: nn.GRU, idxs) -> nn.Module:
        keep = _keep(layer.input_size, idxs)
        for name in ("weight_ih_l0", "weight_ih_l0_reverse") if layer.bidirectional else (
                "weight_ih_l0",):
            setattr(layer, name, _take(getattr(layer, name), keep, 1))
        layer.input_size = len(keep)
        layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
        return layer

    def get_out_channels(self, layer: nn.GRU) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.GRU) -> int:
        return layer.input_size


class RNNPruner(GRUPruner):
    """Prunes hidden units of an Elman ``nn.RNN`` (one gate: rows ``h`` of each matrix)."""

    TARGET_MODULES = nn.RNN
    GATES = 1
