"""Head-aware attention pruning: remove whole heads, or shrink every head's dimension by the
same amount, so that each kept head computes from its own channels only.

An attention *site* is a query/key/value projection triple, the output projection that reads
the heads' concatenation, and the attributes its forward reads (number of heads, head size,
all-head size). Sites are found for

* ``nn.MultiheadAttention`` (replaced first by :class:`PrunableMultiheadAttention`, the same
  computation with separate q/k/v projections, because ``nn.MultiheadAttention`` ties its
  inner width to the embedding width),
* the popular transformer library's attention modules: BERT-style ``query``/``key``/``value``
  with the parent's ``output.dense`` (``num_attention_heads``, ``attention_head_size``,
  ``all_head_size``) and ``q_proj``/``k_proj``/``v_proj`` with ``o_proj``/``out_proj``
  (``num_heads`` or ``num_attention_heads``, ``head_dim``), as in ViT, CLIP or wav2vec 2.0,
* fused projections (timm's and edgekit's own ViT / BERT layout): one ``qkv`` linear layer
  whose rows are the q, k and v blocks one after the other (each ``heads * head_dim`` wide),
  ``proj`` / ``out_proj`` reading the heads' concatenation, and ``heads`` / ``num_heads`` and
  ``head_dim`` attributes the forward reshapes with. The three blocks lose the same rows, so
  q, k and v keep one head size.

Removing head ``h`` removes rows ``h*d .. h*d+d-1`` of the q, k and v projections and the same
columns of the output projection; the kept heads' weights are untouched, so they compute
exactly what they did. A head's importance is the L2 norm of those rows and columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UsageError

__all__ = ["ATTENTION_MODES", "AttentionSite", "PrunableMultiheadAttention", "apply_record",
           "find_sites", "head_importance", "prune_site", "split_multihead_attention",
           "unrecognised_attention"]

#: ``heads``: remove whole heads; ``head_dim``: shrink every head's dimension by the same
#: amount; ``keep``: leave attention widths as they are.
ATTENTION_MODES = ("head_dim", "heads", "keep")

_Q, _K, _V = ("query", "q_proj", "q_lin"), ("key", "k_proj", "k_lin"), ("value", "v_proj", "v_lin")
_OUT = ("o_proj", "out_proj", "out_lin")
_FUSED, _FUSED_OUT = ("qkv", "qkv_proj", "Wqkv"), ("proj", "o_proj", "out_proj", "out_lin")
_PROJ_HINTS = ("qkv", "query", "key", "value", "q_", "k_", "v_", "to_q", "to_k", "to_v",
               "in_proj", "c_attn")
_HEADS = ("num_attention_heads", "num_heads", "n_heads", "heads")
_DIM = ("attention_head_size", "head_dim")


class PrunableMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s computation with separate ``q_proj``/``k_proj``/``v_proj``
    and ``out_proj`` whose inner width (``num_heads * head_dim``) may differ from
    ``embed_dim``. Same call signature and outputs; the softmax scale stays the original
    ``1/sqrt(head_dim)`` when heads shrink."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, scaling: float | None = None) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.v_head_dim = head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.scaling = scaling if scaling is not None else head_dim ** -0.5
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        # what nn.TransformerEncoderLayer reads to decide on its fused fast path (not taken)
        self.in_proj_bias = None
        self._qkv_same_embed_dim = False

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, tq, ts = query.shape[0], query.shape[1], key.shape[1]
        q = self.q_proj(query).view(b, tq, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, ts, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, ts, -1, self.v_head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scaling
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tq, ts, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.view(b, -1, tq, ts)
            scores = (scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool
                      else scores + mask)
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(b, 1, 1, ts)
            scores = (scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool
                      else scores + kpm)
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, tq, -1)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        weights = None
        if need_weights:
            weights = attn.mean(1) if average_attn_weights else attn
            if not batched:
                weights = weights.squeeze(0)
        return out, weights


def split_multihead_attention(mha: nn.MultiheadAttention) -> PrunableMultiheadAttention:
    """A :class:`PrunableMultiheadAttention` computing exactly what ``mha`` computes."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ConfigError("nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot lose "
                          "heads", hint="prune it with attention='head_dim' or keep it")
    e, h = mha.embed_dim, mha.num_heads
    bias = mha.in_proj_bias is not None
    new = PrunableMultiheadAttention(e, h, mha.head_dim, kdim=mha.kdim, vdim=mha.vdim,
                                     bias=bias, batch_first=mha.batch_first, dropout=mha.dropout)
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        for lin, w in zip((new.q_proj, new.k_proj, new.v_proj), (wq, wk, wv)):
            lin.weight.copy_(w)
        if bias:
            for lin, bb in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.chunk(3)):
                lin.bias.copy_(bb)
            new.out_proj.bias.copy_(mha.out_proj.bias)
        new.out_proj.weight.copy_(mha.out_proj.weight)
    new.train(mha.training)
    return new.to(mha.out_proj.weight.device, mha.out_proj.weight.dtype)


@dataclass
class AttentionSite:
    """One attention module: its q/k/v/out projections and the attributes its forward reads."""

    name: str
    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out: nn.Linear
    heads_attr: str
    dim_attr: str
    #: q, k and v are the three row blocks of one linear layer (``q is k is v``)
    fused: bool = False

    @property
    def heads(self) -> int:
        return int(getattr(self.module, self.heads_attr))

    @property
    def head_dim(self) -> int:
        return int(getattr(self.module, self.dim_attr))

    @property
    def v_head_dim(self) -> int:
        return self.v_width // self.heads

    @property
    def qk_width(self) -> int:
        """Rows of the query (and key) projection."""
        return self.q.out_features // 3 if self.fused else self.q.out_features

    @property
    def v_width(self) -> int:
        """Rows of the value projection."""
        return self.v.out_features // 3 if self.fused else self.v.out_features


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    for n in names:
        c = getattr(module, n, None)
        if isinstance(c, nn.Linear):
            return c
    return None


def find_sites(model: nn.Module) -> list[AttentionSite]:
    """The attention modules of ``model`` edgekit can prune head-wise (``nn.MultiheadAttention``
    must first be split with :func:`split_multihead_attention`)."""
    named = dict(model.named_modules())
    sites: list[AttentionSite] = []
    for name, mod in named.items():
        q, k, v = _child(mod, _Q), _child(mod, _K), _child(mod, _V)
        heads_attr = next((a for a in _HEADS if isinstance(getattr(mod, a, None), int)
                           and not isinstance(getattr(mod, a), bool)), None)
        dim_attr = next((a for a in _DIM if isinstance(getattr(mod, a, None), int)), None)
        if heads_attr is None or dim_attr is None:
            continue
        fused = _child(mod, _FUSED)
        if fused is not None and q is None and k is None and v is None:
            out = _child(mod, _FUSED_OUT)
            width = getattr(mod, heads_attr) * getattr(mod, dim_attr)
            if out is not None and fused.out_features == 3 * width and \
                    out.in_features == width and width > 0:
                sites.append(AttentionSite(name, mod, fused, fused, fused, out, heads_attr,
                                           dim_attr, fused=True))
            continue
        if q is None or k is None or v is None:
            continue
        out = _child(mod, _OUT)
        if out is None and name:  # BERT: the parent's output.dense
            parent = named.get(name.rpartition(".")[0])
            dense = getattr(getattr(parent, "output", None), "dense", None)
            out = dense if isinstance(dense, nn.Linear) else None
        heads, dim = getattr(mod, heads_attr), getattr(mod, dim_attr)
        if out is None or q.out_features != heads * dim or k.out_features != heads * dim or \
                v.out_features % heads or out.in_features != v.out_features:
            continue
        sites.append(AttentionSite(name, mod, q, k, v, out, heads_attr, dim_attr))
    return sites


def unrecognised_attention(model: nn.Module, sites: list[AttentionSite]) -> list[nn.Module]:
    """The q/k/v-like linear layers of attention-like modules (with a head-count attribute)
    that are not sites, e.g. a fused qkv projection: they keep their widths, so no channel
    pruning can mix heads there."""
    known = {s.module for s in sites}
    found: list[nn.Module] = []
    for mod in model.modules():
        if mod in known or isinstance(mod, (nn.MultiheadAttention, PrunableMultiheadAttention)):
            continue
        if any(isinstance(getattr(mod, a, None), int) for a in _HEADS):
            found += [c for n, c in mod.named_children() if isinstance(c, nn.Linear)
                      and any(key in n.lower() for key in _PROJ_HINTS)]
    return found


def head_importance(site: AttentionSite) -> torch.Tensor:
    """Each head's L2 norm over its q/k/v rows and output-projection columns."""
    h, d, dv = site.heads, site.head_dim, site.v_head_dim
    wq, wk, wv = _qkv_weights(site)
    with torch.no_grad():
        score = (wq.view(h, d, -1).pow(2).sum((1, 2)) + wk.view(h, d, -1).pow(2).sum((1, 2)))
        score = score + wv.view(h, dv, -1).pow(2).sum((1, 2))
        score = score + site.out.weight.detach().float().view(-1, h, dv).pow(2).sum((0, 2))
    return score.sqrt()


def _qkv_weights(site: AttentionSite) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query, key and value weights of ``site`` (the row blocks of a fused layer)."""
    if site.fused:
        wq, wk, wv = site.q.weight.detach().float().split(
            [site.qk_width, site.qk_width, site.v_width])
        return wq, wk, wv
    return (site.q.weight.detach().float(), site.k.weight.detach().float(),
            site.v.weight.detach().float())


def _dim_importance(site: AttentionSite) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head, per-position L2 norms: (heads, head_dim) for q/k, (heads, v_head_dim) for v."""
    h, d, dv = site.heads, site.head_dim, site.v_head_dim
    wq, wk, wv = _qkv_weights(site)
    with torch.no_grad():
        qk = wq.view(h, d, -1).pow(2).sum(2) + wk.view(h, d, -1).pow(2).sum(2)
        vo = wv.view(h, dv, -1).pow(2).sum(2)
        vo = vo + site.out.weight.detach().float().view(-1, h, dv).pow(2).sum(0)
    return qk.sqrt(), vo.sqrt()


def _rows(lin: nn.Linear, keep: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.data.index_select(0, keep).contiguous(),
                              requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.data.index_select(0, keep).contiguous(),
                                requires_grad=lin.bias.requires_grad)
    lin.out_features = len(keep)


def _cols(lin: nn.Linear, keep: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.data.index_select(1, keep).contiguous(),
                              requires_grad=lin.weight.requires_grad)
    lin.in_features = len(keep)


def _keep(n: int, drop: list[int]) -> torch.Tensor:
    gone = set(drop)
    return torch.tensor([i for i in range(n) if i not in gone], dtype=torch.long)


def shrink(site: AttentionSite, qk_drop: list[int], v_drop: list[int], heads: int,
           head_dim: int, v_head_dim: int) -> None:
    """Remove rows ``qk_drop`` of q/k, rows ``v_drop`` of v (and those output-projection
    columns) and set the head attributes the forward reads."""
    qk_keep = _keep(site.qk_width, qk_drop).to(site.q.weight.device)
    v_keep = _keep(site.v_width, v_drop).to(site.v.weight.device)
    if len(qk_keep) != heads * head_dim or len(v_keep) != heads * v_head_dim or heads < 1 or \
            (site.fused and head_dim != v_head_dim):
        raise ConfigError(f"attention pruning record for {site.name!r} does not fit the layer")
    if site.fused:  # the q, k and v row blocks of one layer lose the same rows
        qk = site.qk_width
        _rows(site.q, torch.cat([qk_keep, qk_keep + qk, v_keep + 2 * qk]))
    else:
        _rows(site.q, qk_keep)
        _rows(site.k, qk_keep)
        _rows(site.v, v_keep)
    _cols(site.out, v_keep)
    mod = site.module
    setattr(mod, site.heads_attr, heads)
    setattr(mod, site.dim_attr, head_dim)
    if isinstance(mod, PrunableMultiheadAttention):
        mod.v_head_dim = v_head_dim
    for attr in ("all_head_size", "inner_dim"):
        if isinstance(getattr(mod, attr, None), int):
            setattr(mod, attr, heads * head_dim)


def prune_site(site: AttentionSite, mode: str, remove: int) -> dict[str, Any] | None:
    """Remove ``remove`` more heads (``mode='heads'``) or head positions (``'head_dim'``) from
    ``site``, least important first; the history record, or ``None`` if nothing is removed."""
    h, d, dv = site.heads, site.head_dim, site.v_head_dim
    if remove <= 0:
        return None
    if mode == "heads":
        if d != dv:
            raise ConfigError(f"attention {site.name!r} has different q/k and v head sizes")
        order = torch.argsort(head_importance(site)).tolist()
        gone = sorted(order[:min(remove, h - 1)])
        if not gone:
            return None
        qk_drop = [g * d + j for g in gone for j in range(d)]
        v_drop = [g * dv + j for g in gone for j in range(dv)]
        new = (h - len(gone), d, dv)
    elif mode == "head_dim":
        n_qk, n_v = min(remove, d - 1), min(remove, dv - 1)
        if n_qk <= 0 and n_v <= 0:
            return None
        qk_imp, v_imp = _dim_importance(site)
        if site.fused:  # one head size for q, k and v: drop the same positions from all three
            n_qk = n_v = min(n_qk, n_v)
            qk_imp = v_imp = qk_imp + v_imp
        qk_drop = sorted(g * d + int(j) for g in range(h)
                         for j in torch.argsort(qk_imp[g])[:n_qk].tolist())
        v_drop = sorted(g * dv + int(j) for g in range(h)
                        for j in torch.argsort(v_imp[g])[:n_v].tolist())
        gone = []
        new = (h, d - n_qk, dv - n_v)
    else:
        raise UsageError(f"unknown attention mode {mode!r}",
                         hint=f"choose one of {', '.join(ATTENTION_MODES)}")
    shrink(site, qk_drop, v_drop, *new)
    return {"kind": "attention", "layer": site.name, "mode": mode, "heads_removed": gone,
            "qk_idxs": qk_drop, "v_idxs": v_drop, "heads": new[0], "head_dim": new[1],
            "v_head_dim": new[2]}


def split_record(name: str) -> dict[str, Any]:
    """The history record of replacing ``nn.MultiheadAttention`` ``name`` by its split form."""
    return {"kind": "attention", "layer": name, "mode": "split"}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_record(model: nn.Module, rec: dict[str, Any]) -> None:
    """Replay one attention record of a pruning history on ``model``."""
    named = dict(model.named_modules())
    if rec["layer"] not in named:
        raise ConfigError(f"pruning history names attention layer {rec['layer']!r}, which "
                          f"{type(model).__name__} does not have")
    if rec["mode"] == "split":
        mha = named[rec["layer"]]
        if not isinstance(mha, nn.MultiheadAttention):
            raise ConfigError(f"pruning history splits {rec['layer']!r}, which is a "
                              f"{type(mha).__name__}, not nn.MultiheadAttention")
        replace_module(model, rec["layer"], split_multihead_attention(mha))
        return
    site = next((s for s in find_sites(model) if s.name == rec["layer"]), None)
    if site is None:
        raise ConfigError(f"pruning history prunes heads of {rec['layer']!r}, which is not an "
                          "attention layer edgekit recognises")
    shrink(site, list(rec["qk_idxs"]), list(rec["v_idxs"]), int(rec["heads"]),
           int(rec["head_dim"]), int(rec["v_head_dim"]))
    sync_configs(model)


def sync_configs(model: nn.Module) -> None:
    """Where every attention site sharing a ``config`` has the same head count and size, write
    them to the config (``num_attention_heads``, and ``head_dim`` when it no longer equals
    ``hidden_size // num_attention_heads``), so the config states what the model computes."""
    by_config: dict[int, tuple[Any, set[tuple[int, int]]]] = {}
    for site in find_sites(model):
        cfg = getattr(site.module, "config", None)
        if cfg is None or not hasattr(cfg, "num_attention_heads"):
            continue
        by_config.setdefault(id(cfg), (cfg, set()))[1].add((site.heads, site.head_dim))
    for cfg, shapes in by_config.values():
        if len(shapes) != 1:
            continue
        (heads, dim), = shapes
        cfg.num_attention_heads = heads
        hidden = getattr(cfg, "hidden_size", None)
        if hasattr(cfg, "head_dim") or (isinstance(hidden, int) and hidden // heads != dim):
            cfg.head_dim = dim


def wanted(total: int, fraction: float, cap: float) -> int:
    """How many of ``total`` heads / positions a cumulative ``fraction`` removes (at most
    ``cap`` of them, always leaving one)."""
    return max(0, min(math.floor(total * min(fraction, cap) + 1e-9), total - 1))
