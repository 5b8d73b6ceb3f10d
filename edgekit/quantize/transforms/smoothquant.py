"""SmoothQuant (Xiao et al. 2023) for linear layers fed by a LayerNorm.

Activation outliers sit in a few channels of a transformer's LayerNorm output; int8 activation
scales are set by them. With ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``X_j`` = channel
``j`` of the LayerNorm output on the calibration data, ``W_j`` = column ``j`` of every linear
that reads it), the LayerNorm's weight and bias are divided by ``s`` and those columns
multiplied by it: ``(x / s) (s W)^T = x W^T``, the float function is kept exactly and the
outliers move into the weights, which are quantized per channel.

Patterns: ``LayerNorm -> Linear(s)`` (every consumer a Linear, e.g. q/k/v projections or a
classifier head), ``LayerNorm -> MultiheadAttention`` used as self-attention (query = key =
value, packed ``in_proj_weight``), and inside ``nn.TransformerEncoderLayer(norm_first=True)``
(norm1 -> self_attn, norm2 -> linear1). A post-norm layer's LayerNorm also feeds the residual
path and is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._graph import call_counts, module_of, run_batches

__all__ = ["Site", "find_sites", "smoothquant"]


@dataclass
class Site:
    """A LayerNorm (module name) and the weights that read its output (module, parameter)."""

    norm: str
    consumers: list[tuple[str, str]]


def find_sites(model: nn.Module, graph: torch.fx.Graph) -> list[Site]:
    counts = call_counts(graph)
    sites = []
    for node in graph.nodes:
        m = module_of(model, node)
        if isinstance(m, nn.TransformerEncoderLayer):
            if m.norm_first and counts[str(node.target)] == 1 and _attn_ok(m.self_attn):
                name = str(node.target)
                sites.append(Site(f"{name}.norm1", [(f"{name}.self_attn", "in_proj_weight")]))
                sites.append(Site(f"{name}.norm2", [(f"{name}.linear1", "weight")]))
            continue
        if not isinstance(m, nn.LayerNorm) or not m.elementwise_affine \
                or counts[str(node.target)] != 1 or len(m.normalized_shape) != 1:
            continue
        consumers: list[tuple[str, str]] = []
        for user in node.users:
            u = module_of(model, user)
            if isinstance(u, nn.Linear) and counts[str(user.target)] == 1 \
                    and user.args and user.args[0] is node and len(user.args) == 1:
                consumers.append((str(user.target), "weight"))
            elif isinstance(u, nn.MultiheadAttention) and _attn_ok(u) \
                    and counts[str(user.target)] == 1 and len(user.args) >= 3 \
                    and all(a is node for a in user.args[:3]) \
                    and not any(v is node for v in user.kwargs.values()):
                consumers.append((str(user.target), "in_proj_weight"))
            else:
                consumers = []
                break
        if consumers:
            sites.append(Site(str(node.target), consumers))
    return sites


def _attn_ok(a: nn.MultiheadAttention) -> bool:
    return bool(a._qkv_same_embed_dim) and a.in_proj_weight is not None


def smoothquant(model: nn.Module, sites: Sequence[Site], batches: Sequence[Sequence[np.ndarray]],
                alpha: float = 0.5) -> list[str]:
    """Migrate, in place, each site's activation ranges into its consumers' weights; return the
    LayerNorms changed."""
    if not sites or not batches:
        return []
    amax: dict[str, torch.Tensor] = {}
    hooks = []
    for site in sites:
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, name: str = site.norm) -> None:
            a = out.detach().abs().reshape(-1, out.shape[-1]).amax(0)
            amax[name] = torch.maximum(amax[name], a) if name in amax else a
        hooks.append(model.get_submodule(site.norm).register_forward_hook(hook))
    try:
        for _ in run_batches(model, batches):
            pass
    finally:
        for h in hooks:
            h.remove()
    done = []
    with torch.no_grad():
        for site in sites:
            if site.norm not in amax:
                continue
            norm = model.get_submodule(site.norm)
            ws = [getattr(model.get_submodule(m), p) for m, p in site.consumers]
            wmax = torch.stack([w.abs().amax(0) for w in ws]).amax(0)
            act = amax[site.norm]
            ok = (act > 0) & (wmax > 0)
            s = torch.where(ok, act.clamp_min(1e-8).pow(alpha)
                            / wmax.clamp_min(1e-8).pow(1 - alpha), torch.ones_like(act))
            s = s.clamp(1e-5, 1e5)
            norm.weight.data.div_(s)  # type: ignore[operator]
            if norm.bias is not None:
                norm.bias.data.div_(s)  # type: ignore[operator]
            for w in ws:
                w.data.mul_(s)
            done.append(site.norm)
    return done
