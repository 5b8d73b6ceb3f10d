"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"; AIMET's CLE) with
bias absorption.

For two weighted layers ``A -> [act] -> B`` where A's output goes only to B and ``act`` is
positively homogeneous (``act(s x) = s act(x)`` for ``s > 0``: ReLU, LeakyReLU, none), output
channel ``c`` of A is divided by ``s_c`` and input channel ``c`` of B multiplied by it; with
``s_c = sqrt(r1_c / r2_c)`` (``r1`` = A's per-output-channel weight range, ``r2`` = B's
per-input-channel range) both ranges become ``sqrt(r1_c r2_c)``: the per-tensor and the
per-channel int8 grids then waste less of their range. Pairs are equalized repeatedly until the
scales settle, so ``conv1x1 -> depthwise -> conv1x1`` chains (MobileNetV2) balance across all
three. Grouped and depthwise convolutions are handled per group.

ReLU6 is not scale-equivariant (its clamp at 6 does not move with the scale). AIMET replaces
ReLU6 by ReLU before equalizing, which changes the float function. Here ``relu6`` chooses:

* ``"clamp"``: equalize through it and replace the ReLU6 by :class:`ChannelClamp`,
  ``min(relu(x), u_c)`` with the per-channel bound ``u_c = 6 / s_c``: the float function is
  kept exactly (the runtimes see Relu + Min instead of one clipped activation);
* ``"skip"``: leave pairs joined by a ReLU6 alone.

Bias absorption: after equalization, where ``A -> ReLU -> B`` and B sees no zero padding
(linear, or a convolution without padding), the part ``c_c`` of A's output that is positive on
every calibration sample (``min(min y_c, mean y_c - 3 std y_c)``, at least 0) moves from A's
bias into B's (``b2 += W2 c``). It shrinks the activation range B's input is quantized with; the
float outputs are unchanged wherever A's output stays above ``c`` (every calibration sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._graph import (
    PASS_THROUGH,
    activation_kind,
    call_counts,
    module_of,
    only_user,
    run_batches,
    set_module,
)

__all__ = ["ChannelClamp", "Pair", "find_pairs", "equalize", "absorb_bias"]

RELU6_MODES = ("clamp", "skip")


class ChannelClamp(nn.Module):
    """``min(relu(x), upper)`` with one bound per channel (``dim`` 1 for convolutions, the
    last for linear layers): a ReLU6 after its channels were rescaled."""

    def __init__(self, upper: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("upper", upper.detach().clone().float())

    def _shaped(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim if self.dim >= 0 else x.dim() + self.dim] = -1
        return self.upper.reshape(shape)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), self._shaped(x))


@dataclass
class Pair:
    """``first -> [act] -> second``: module names, the activation kind and its module name."""

    first: str
    second: str
    act: str | None  # None, "relu", "relu6"
    act_module: str | None


def _compatible(a: nn.Module, b: nn.Module) -> bool:
    if isinstance(a, nn.Linear) and isinstance(b, nn.Linear):
        return a.out_features == b.in_features
    if type(a) is type(b) and isinstance(a, (nn.Conv1d, nn.Conv2d)):
        return a.out_channels == b.in_channels and b.padding_mode == "zeros"  # type: ignore[union-attr]
    return False


def find_pairs(model: nn.Module, graph: torch.fx.Graph, relu6: str = "clamp") -> list[Pair]:
    """Every ``A -> [act] -> B`` chain where A's output reaches only B (pass-through modules
    such as Identity and Dropout skipped); each module called once."""
    counts = call_counts(graph)
    pairs = []
    for node in graph.nodes:
        a = module_of(model, node)
        if not isinstance(a, (nn.Conv1d, nn.Conv2d, nn.Linear)) or counts[str(node.target)] != 1:
            continue
        act: str | None = None
        act_module: str | None = None
        cur = only_user(node)
        while cur is not None:
            m = module_of(model, cur)
            if isinstance(m, PASS_THROUGH):
                cur = only_user(cur)
                continue
            kind = activation_kind(model, cur)
            if kind is not None and act is None:
                if kind == "relu6" and (m is None or relu6 == "skip"
                                        or counts[str(cur.target)] != 1):
                    cur = None
                    break
                act, act_module = kind, (str(cur.target) if m is not None else None)
                cur = only_user(cur)
                continue
            break
        b = module_of(model, cur) if cur is not None else None
        if b is None or counts.get(str(cur.target), 0) != 1 or not _compatible(a, b):  # type: ignore[union-attr]
            continue
        pairs.append(Pair(str(node.target), str(cur.target), act, act_module))  # type: ignore[union-attr]
    return pairs


def _out_range(w: torch.Tensor) -> torch.Tensor:
    return w.abs().reshape(w.shape[0], -1).amax(1)


def _weight(layer: nn.Module) -> torch.Tensor:
    w = layer.weight
    assert isinstance(w, torch.Tensor)
    return w


def _in_view(layer: nn.Module) -> tuple[torch.Tensor, int]:
    """B's weight as (groups, out per group, in per group, rest) and its group count (a view:
    writing to it writes the weight)."""
    w = _weight(layer).data
    groups = int(getattr(layer, "groups", 1))
    out_g, in_g = w.shape[0] // groups, w.shape[1]
    return w.reshape(groups, out_g, in_g, -1), groups


def _in_range(layer: nn.Module) -> torch.Tensor:
    v, _ = _in_view(layer)
    return v.abs().amax(dim=(1, 3)).reshape(-1)


def _act_dim(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


@torch.no_grad()
def _scale_pair(model: nn.Module, pair: Pair) -> float:
    a, b = model.get_submodule(pair.first), model.get_submodule(pair.second)
    r1, r2 = _out_range(a.weight.data), _in_range(b)  # type: ignore[arg-type]
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))),
                    torch.ones_like(r1)).clamp(1e-4, 1e4)
    with torch.no_grad():
        a.weight.data.div_(s.reshape(-1, *([1] * (a.weight.dim() - 1))))  # type: ignore[operator]
        if a.bias is not None:
            a.bias.data.div_(s)  # type: ignore[operator]
        v, groups = _in_view(b)
        v.mul_(s.reshape(groups, 1, -1, 1))
        if pair.act == "relu6":
            assert pair.act_module is not None
            act = model.get_submodule(pair.act_module)
            if not isinstance(act, ChannelClamp):
                upper = torch.full_like(s, 6.0)
                if isinstance(act, nn.Hardtanh):
                    upper = torch.full_like(s, float(act.max_val))
                act = ChannelClamp(upper, _act_dim(a))
                set_module(model, pair.act_module, act)
            act.upper.div_(s)  # type: ignore[operator]
    return float(s.log().abs().max())


def equalize(model: nn.Module, pairs: Sequence[Pair], rounds: int = 50,
             tol: float = 1e-4) -> int:
    """Equalize ``pairs`` in place until the largest |log s| of a round is below ``tol``
    (at most ``rounds``); return the rounds run."""
    for r in range(1, rounds + 1):
        if max((_scale_pair(model, p) for p in pairs), default=0.0) < tol:
            return r
    return rounds


def absorb_bias(model: nn.Module, pairs: Sequence[Pair],
                batches: Sequence[Sequence[np.ndarray]]) -> list[str]:
    """Move the always-positive part of ``A``'s output into ``B``'s bias (see the module
    notes); return the pairs changed."""
    cand = []
    for p in pairs:
        a, b = model.get_submodule(p.first), model.get_submodule(p.second)
        padded = any(int(x) != 0 for x in getattr(b, "padding", (0,))) \
            if not isinstance(getattr(b, "padding", 0), str) else b.padding != "valid"  # type: ignore[union-attr]
        if p.act in ("relu", "relu6") and a.bias is not None and not padded:
            cand.append(p)
    if not cand or not batches:
        return []
    stats: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for p in cand:
        a = model.get_submodule(p.first)
        dim = _act_dim(a)

        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, name: str = p.first,
                 d: int = dim) -> None:
            y = out.detach().movedim(d, 0).reshape(out.shape[d], -1).double()
            cur = [y.amin(1), y.sum(1), (y * y).sum(1), torch.tensor(float(y.shape[1]))]
            if name in stats:
                old = stats[name]
                cur = [torch.minimum(old[0], cur[0]), old[1] + cur[1], old[2] + cur[2],
                       old[3] + cur[3]]
            stats[name] = cur
        hooks.append(a.register_forward_hook(hook))
    try:
        for _ in run_batches(model, batches):
            pass
    finally:
        for h in hooks:
            h.remove()
    changed = []
    for p in cand:
        lo, s1, s2, n = stats[p.first]
        mean = s1 / n
        std = (s2 / n - mean * mean).clamp_min(0).sqrt()
        c = torch.minimum(lo, mean - 3 * std).clamp_min(0).float()
        if not bool((c > 0).any()):
            continue
        a, b = model.get_submodule(p.first), model.get_submodule(p.second)
        with torch.no_grad():
            a.bias.data.sub_(c)  # type: ignore[operator, union-attr]
            v, groups = _in_view(b)
            shift = (v.sum(3) * c.reshape(groups, 1, -1)).sum(2).reshape(-1)
            if b.bias is None:
                b.bias = nn.Parameter(torch.zeros(v.shape[0] * v.shape[1]))
            b.bias.data.add_(shift)  # type: ignore[operator]
            if p.act == "relu6":
                act = model.get_submodule(p.act_module or "")
                if isinstance(act, ChannelClamp):
                    act.upper.sub_(c)  # type: ignore[operator]
                else:  # a ReLU6 whose channels were not rescaled: it needs its bounds per channel
                    set_module(model, p.act_module or "",
                               ChannelClamp(6.0 - c, _act_dim(a)))
        changed.append(f"{p.first} -> {p.second}")
    return changed
