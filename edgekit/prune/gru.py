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

import torch_pruning as tp
from torch import nn

from .lstm import prune_gated_inputs, prune_gated_units

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
        return prune_gated_units(layer, idxs, self.GATES)

    def prune_in_channels(self, layer: nn.GRU, idxs) -> nn.Module:
        return prune_gated_inputs(layer, idxs)

    def get_out_channels(self, layer: nn.GRU) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.GRU) -> int:
        return layer.input_size


class RNNPruner(GRUPruner):
    """Prunes hidden units of an Elman ``nn.RNN`` (one gate: rows ``h`` of each matrix)."""

    TARGET_MODULES = nn.RNN
    GATES = 1
