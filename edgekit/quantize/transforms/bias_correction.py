"""Empirical bias correction (Nagel et al. 2019; AIMET's ``bias_correction``).

Rounding a layer's weights to int8 shifts the mean of its output: ``E[Q(W) x] != E[W x]``. For
each convolution and linear layer this adds ``E[(W - Q(W)) x]`` (per output channel, ``x`` the
layer's input on the calibration data, padding included) to the bias, so that the quantized
layer ``Q(W) x + b'`` has the float layer's mean output.

``Q`` is the grid every edgekit runtime uses for weights: symmetric per-output-channel int8,
``scale_c = max |W_c| / 127``, values in [-127, 127] (ONNX Runtime's symmetric int8 weights,
NNCF's narrow-range weights and litert's PT2E per-channel config). It changes the float
function on purpose (by the expected rounding error), and only helps when the runtime then
rounds the unchanged weights onto that grid: with per-tensor weights it is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...modulenames import in_modules
from ._graph import run_batches

__all__ = ["quantize_weight", "bias_correction"]


def quantize_weight(w: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """``w`` rounded onto the symmetric per-output-channel grid ``-qmax..qmax`` (dequantized):
    127 for int8, 64 for ONNX Runtime's 7-bit ``reduce_range``."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
    scale = (amax / float(qmax)).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def _mean_shift(layer: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Sum over samples and positions of ``delta x`` per output channel."""
    if isinstance(layer, nn.Linear):
        y = F.linear(x, delta)
        return y.reshape(-1, y.shape[-1]).double().sum(0)
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
    y = layer._conv_forward(x, delta, None)
    return y.movedim(1, 0).reshape(y.shape[1], -1).double().sum(1)


def bias_correction(model: nn.Module, batches: Sequence[Sequence[np.ndarray]],
                    skip: Sequence[str] = (), qmax: int = 127,
                    amounts: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Correct, in place, the bias of every Conv1d/Conv2d/Linear not named in ``skip`` (nor
    inside a skipped module) for the weight error of the grid ``-qmax..qmax``; return the
    names corrected. ``amounts`` (when given) receives each layer's correction. Each
    correction is measured on the float model before any is applied, so they do not depend on
    one another: subtracting one gives exactly the model corrected without that layer."""
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and n
              and not in_modules(n, skip)}
    if not layers or not batches:
        return []
    deltas = {n: m.weight.detach() - quantize_weight(m.weight.detach(), qmax)
              for n, m in layers.items()}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, layer in layers.items():
        def pre(m: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0]
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                s = _mean_shift(m, x.detach(), deltas[name].to(x.dtype))
                sums[name] = sums.get(name, torch.zeros_like(s)) + s

        def post(m: nn.Module, _args: tuple, out: torch.Tensor, name: str = name) -> None:
            if isinstance(out, torch.Tensor):  # output positions per channel
                ch = out.shape[-1] if isinstance(m, nn.Linear) else out.shape[1]
                counts[name] = counts.get(name, 0) + out.numel() // ch

        hooks.append(layer.register_forward_pre_hook(pre))
        hooks.append(layer.register_forward_hook(post))
    try:
        for _ in run_batches(model, batches):
            pass
    finally:
        for h in hooks:
            h.remove()
    done = []
    with torch.no_grad():
        for name, layer in layers.items():
            if name not in sums or not counts.get(name):
                continue
            corr = (sums[name] / counts[name]).float()
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(corr))
            layer.bias.data.add_(corr)  # type: ignore[operator]
            done.append(name)
            if amounts is not None:
                amounts[name] = corr.clone()
    return done
