"""What a pruning target is measured in (MACs, parameters) and the check of the requested
reduction: exactly one of ``ratio``, ``macs_reduction``, ``params_reduction``, each in (0, 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["check_ratio", "count_macs", "count_params", "pruning_targets"]


def count_params(model: nn.Module) -> int:
    """The number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """MACs of one batch-1 forward pass (the zoo's analytic counter: convs, linears, LSTM gate
    matmuls and ``nn.MultiheadAttention``; torch-pruning's own counter over-counts LSTMs ~8x),
    plus the attention products (scores and weighted values) of the attention modules edgekit
    prunes head-wise, which the zoo's counter does not see."""
    from ..models.zoo import count_macs as _count
    from .attention import PrunableMultiheadAttention, find_sites

    extra = 0

    def products(site):
        def hook(mod, args, kwargs, _out):
            nonlocal extra
            tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
            if not tensors or tensors[0].dim() < 2:
                return
            q = tensors[0]
            k = tensors[1] if len(tensors) > 1 and isinstance(mod, PrunableMultiheadAttention) \
                else q
            seq = -2 if not isinstance(mod, PrunableMultiheadAttention) or mod.batch_first \
                or q.dim() == 2 else 0
            extra += q.shape[seq] * k.shape[seq] * site.heads * (site.head_dim + site.v_head_dim)
        return hook

    hooks = [s.module.register_forward_hook(products(s), with_kwargs=True)
             for s in find_sites(model)]
    try:
        return int(_count(model, tuple(example_inputs))) + int(extra)
    finally:
        for h in hooks:
            h.remove()


def check_ratio(name: str, value: float | None) -> None:
    """:class:`UsageError` unless ``value`` is None or a number strictly between 0 and 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise UsageError(f"{name} must be a number strictly between 0 and 1, got {value!r}",
                         hint="e.g. 0.5 removes half")


def pruning_targets(ratio: float | None, macs_reduction: float | None,
                    params_reduction: float | None) -> dict[str, float]:
    """The one target given, by name; :class:`UsageError` unless exactly one is, in (0, 1)."""
    targets = {k: v for k, v in (("ratio", ratio), ("macs_reduction", macs_reduction),
                                 ("params_reduction", params_reduction)) if v is not None}
    if len(targets) != 1:
        raise UsageError("give exactly one pruning target: ratio, macs_reduction or "
                         f"params_reduction (got {', '.join(targets) or 'none'})")
    for k, v in targets.items():
        check_ratio(k, v)
    return targets
