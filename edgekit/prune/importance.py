"""Channel importance: magnitude (l1, l2), batch-norm scale and first-order Taylor, made aware
of recurrent gates (a hidden unit's gate rows, four in an LSTM, three in a GRU, are scored
together)."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..errors import UsageError

__all__ = ["IMPORTANCES", "LSTMAware", "make_importance", "taylor_grads"]

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")
_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


class LSTMAware(tp.importance.Importance):
    """Wraps a torch-pruning importance; adds an L2 magnitude term for LSTM / GRU / RNN hidden
    units (over the gate rows of both weight matrices), which torch-pruning does not score."""

    def __init__(self, base: tp.importance.Importance, fallback=None) -> None:
        self.base, self.fallback = base, fallback

    def __call__(self, group) -> torch.Tensor | None:
        imp = self.base(group)
        if imp is None and self.fallback is not None:
            imp = self.fallback(group)
        lstm = None
        for dep, idxs in group:
            layer = dep.target.module
            if (isinstance(layer, (nn.LSTM, nn.GRU, nn.RNN))
                    and getattr(dep.handler, "__name__", "") == "prune_out_channels"):
                hid, gates = layer.hidden_size, _GATES[type(layer)]
                idx = torch.as_tensor(idxs, dtype=torch.long)
                score = torch.zeros(len(idx))
                for k in range(layer.num_layers):
                    for name in ("weight_ih", "weight_hh"):
                        w = getattr(layer, f"{name}_l{k}").detach()
                        rows = w.view(gates, hid, -1).pow(2).sum(dim=(0, 2))
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


def make_importance(kind: str):
    """The torch-pruning importance for ``kind`` (one of :data:`IMPORTANCES`), LSTM-aware."""
    if kind == "l1":
        return LSTMAware(tp.importance.MagnitudeImportance(p=1))
    if kind == "l2":
        return LSTMAware(tp.importance.MagnitudeImportance(p=2))
    if kind == "bn_scale":  # groups without batch norm fall back to L2 magnitude
        return LSTMAware(tp.importance.BNScaleImportance(),
                         fallback=tp.importance.MagnitudeImportance(p=2))
    if kind == "taylor":
        return LSTMAware(tp.importance.GroupTaylorImportance())
    raise UsageError(f"unknown importance {kind!r}", hint=f"choose one of {', '.join(IMPORTANCES)}")


def taylor_grads(model: nn.Module, inputs, task, batches: int = 4, batch_size: int = 128
                 ) -> None:
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
