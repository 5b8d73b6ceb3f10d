"""A correct torch-pruning pruner for ``nn.LSTM`` hidden units.

torch-pruning 1.6.1's own ``LSTMPruner.prune_out_channels`` prunes ``weight_hh_l0`` twice on
dim 0 with the plain hidden indices and ``weight_ih_l0`` on dim 1 with the gate-expanded ones,
which raises ``IndexError``. Here removing hidden unit ``h`` removes, in every layer, rows
``{h, H+h, 2H+h, 3H+h}`` (the input, forget, cell and output gates) of ``weight_ih``,
``weight_hh``, ``bias_ih`` and ``bias_hh``, column ``h`` of ``weight_hh`` and, for layers
after the first, column ``h`` of ``weight_ih`` (the previous layer's hidden state). Whatever
consumes the LSTM output loses the same inputs through torch-pruning's dependency graph.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["LSTMPruner", "check_lstm"]


def check_lstm(layer: nn.LSTM, name: str = "") -> str | None:
    """Why ``layer`` cannot be pruned by :class:`LSTMPruner` (``None`` if it can)."""
    if layer.bidirectional:
        return f"nn.LSTM {name!r} (bidirectional)"
    if getattr(layer, "proj_size", 0):
        return f"nn.LSTM {name!r} (proj_size > 0)"
    return None


def _keep(n: int, idxs) -> torch.Tensor:
    drop = set(int(i) for i in idxs)
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


def _take(param: nn.Parameter, keep: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(torch.index_select(param.data, dim, keep.to(param.device)).contiguous(),
                        requires_grad=param.requires_grad)


def prune_gated_units(layer: nn.RNNBase, idxs, gates: int) -> nn.RNNBase:
    """Remove hidden units ``idxs`` of a unidirectional recurrent layer with ``gates`` stacked
    gate blocks (LSTM 4, GRU 3, RNN 1): their rows of every gate in ``weight_ih``,
    ``weight_hh`` and the biases, their column of ``weight_hh`` and, after the first layer,
    of ``weight_ih``."""
    hidden = layer.hidden_size
    keep = _keep(hidden, idxs)
    rows = torch.cat([keep + g * hidden for g in range(gates)])
    for k in range(layer.num_layers):
        sfx = f"_l{k}"
        w_ih = _take(getattr(layer, "weight_ih" + sfx), rows, 0)
        setattr(layer, "weight_ih" + sfx, _take(w_ih, keep, 1) if k > 0 else w_ih)
        w_hh = _take(getattr(layer, "weight_hh" + sfx), rows, 0)
        setattr(layer, "weight_hh" + sfx, _take(w_hh, keep, 1))
        if layer.bias:
            for b in ("bias_ih", "bias_hh"):
                setattr(layer, b + sfx, _take(getattr(layer, b + sfx), rows, 0))
    layer.hidden_size = len(keep)
    layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
    return layer


def prune_gated_inputs(layer: nn.RNNBase, idxs) -> nn.RNNBase:
    """Remove input features ``idxs`` of a recurrent layer (columns of the first layer's
    ``weight_ih``, both directions)."""
    keep = _keep(layer.input_size, idxs)
    names = ["weight_ih_l0"] + (["weight_ih_l0_reverse"] if layer.bidirectional else [])
    for name in names:
        setattr(layer, name, _take(getattr(layer, name), keep, 1))
    layer.input_size = len(keep)
    layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
    return layer


class LSTMPruner(tp.pruner.function.BasePruningFunc):
    """Prunes hidden units (out channels) and input features (in channels) of an ``nn.LSTM``."""

    TARGET_MODULES = tp.ops.TORCH_LSTM

    def prune_out_channels(self, layer: nn.LSTM, idxs) -> nn.Module:
        reason = check_lstm(layer)
        if reason:
            raise ValueError(reason)
        return prune_gated_units(layer, idxs, 4)

    def prune_in_channels(self, layer: nn.LSTM, idxs) -> nn.Module:
        return prune_gated_inputs(layer, idxs)

    def get_out_channels(self, layer: nn.LSTM) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.LSTM) -> int:
        return layer.input_size
