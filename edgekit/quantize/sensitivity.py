"""Per-layer sensitivity: the output error when only that layer is quantized.

Measured in PyTorch, so it is the same ranking for every runtime: for each quantizable layer
(Conv, Linear, LSTM/GRU, MultiheadAttention) its weights are fake-quantized to int8 (symmetric,
per output channel) and its input to 8 bits (asymmetric, min-max over the calibration data);
every other layer stays in float. SQNR (dB, :func:`edgekit.measure.metrics.sqnr_db`) of the
model's outputs against fp32 ranks the layers: the lowest SQNR is the most sensitive.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..measure.metrics import sqnr_db

__all__ = ["quantizable_layers", "layer_sensitivity"]

_KINDS: tuple[tuple[type, str], ...] = (
    (nn.Conv1d, "conv"), (nn.Conv2d, "conv"), (nn.Conv3d, "conv"), (nn.Linear, "linear"),
    (nn.LSTM, "lstm"), (nn.GRU, "gru"), (nn.RNN, "rnn"), (nn.MultiheadAttention, "attention"),
)


def _kind(m: nn.Module) -> str | None:
    for cls, kind in _KINDS:
        if isinstance(m, cls):
            if kind == "conv" and m.groups > 1 and m.groups == m.in_channels:
                return "depthwise"
            return kind
    return "linear" if transposed_linear(m) else None


def transposed_linear(m: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's attention and MLP projections): a linear layer that
    stores its weight as ``(in, out)`` and computes ``x @ weight + bias`` (an ``addmm``), so
    its output channels are the weight's dim 1. Matched by class name and module, without
    importing ``transformers``."""
    weight = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers.")
            and isinstance(weight, torch.Tensor) and weight.dim() == 2)


def quantizable_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(module name, kind) of every layer int8 applies to, in definition order. Linear layers
    inside a MultiheadAttention are reported as the attention block."""
    out: list[tuple[str, str]] = []
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        kind = _kind(m)
        if kind is not None and name:
            out.append((name, kind))
            if kind in ("attention", "lstm", "gru", "rnn"):
                inside.append(name)
    return out


def _fq_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    if per_channel and w.dim() > 1:
        amax = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
        scale = (amax / 127.0).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        scale = w.detach().abs().amax().clamp_min(1e-12) / 127.0
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


def _fq_act(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zp = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


@contextlib.contextmanager
def _quantized_only(model: nn.Module, name: str, ranges: dict[str, tuple[float, float]],
                    per_channel: bool) -> Iterator[None]:
    module = model.get_submodule(name)
    saved = {}
    for pname, p in module.named_parameters():
        if pname.endswith("weight") or pname.startswith("weight") or pname.endswith("proj_weight"):
            saved[pname] = p.data.clone()
            if transposed_linear(module) and pname == "weight":  # channels on dim 1
                p.data.copy_(_fq_weight(p.data.t(), per_channel).t())
            else:
                p.data.copy_(_fq_weight(p.data, per_channel))
    lo, hi = ranges.get(name, (0.0, 0.0))

    def pre(_m: nn.Module, args: tuple) -> tuple:
        return tuple(_fq_act(a, lo, hi) if isinstance(a, torch.Tensor) and a.is_floating_point()
                     else a for a in args)

    handle = module.register_forward_pre_hook(pre) if hi > lo else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        params = dict(module.named_parameters())
        for pname, data in saved.items():
            params[pname].data.copy_(data)


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out] if isinstance(out, torch.Tensor) else []


def layer_sensitivity(
    model: nn.Module,
    batches: Sequence[Sequence[np.ndarray]],
    *,
    per_channel: bool = True,
    max_batches: int = 64,
) -> list[dict[str, Any]]:
    """One row per quantizable layer: ``{"layer", "kind", "sqnr_db"}``, most sensitive first."""
    layers = quantizable_layers(model)
    feeds = [[torch.from_numpy(np.asarray(a)) for a in b] for b in list(batches)[:max_batches]]
    if not layers or not feeds:
        return []
    # Batch the feeds together for speed when they share shapes.
    try:
        feeds = [[torch.cat([f[i] for f in feeds]) for i in range(len(feeds[0]))]]
    except RuntimeError:
        pass
    model.eval()
    ranges: dict[str, tuple[float, float]] = {}
    hooks = []
    for name, _ in layers:
        def rec(_m, args, _name=name):
            for a in args:
                if isinstance(a, torch.Tensor) and a.is_floating_point():
                    lo, hi = ranges.get(_name, (math.inf, -math.inf))
                    ranges[_name] = (min(lo, float(a.min())), max(hi, float(a.max())))
                    break
        hooks.append(model.get_submodule(name).register_forward_pre_hook(rec))
    with torch.no_grad():
        try:
            ref = [[o.numpy().copy() for o in _flat(model(*f))] for f in feeds]
        finally:
            for h in hooks:
                h.remove()
        rows = []
        for name, kind in layers:
            with _quantized_only(model, name, ranges, per_channel):
                got = [[o.numpy() for o in _flat(model(*f))] for f in feeds]
            r = np.concatenate([o.reshape(-1) for b in ref for o in b if o.dtype.kind == "f"])
            g = np.concatenate([o.reshape(-1) for b in got for o in b if o.dtype.kind == "f"])
            rows.append({"layer": name, "kind": kind, "sqnr_db": round(sqnr_db(r, g), 2)})
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows
