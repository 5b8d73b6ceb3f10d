"""Learned weight rounding (AdaRound, Nagel et al. 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization"; the schedule follows AIMET's ``adaround``).

Rounding each weight to its nearest int8 level is not the best choice for the layer's output:
AdaRound learns, per weight, whether to round down or up so that the layer's output on the
calibration data stays closest to the float model's. Per Conv1d/Conv2d/Linear layer, in the
order the model runs them:

* the grid is the one every edgekit runtime uses for weights: symmetric per output channel,
  ``scale_c = max |W_c| / 127``, integers in [-127, 127] (ONNX Runtime's ``quantize_static``
  per-channel int8 weights, NNCF's narrow-range 8-bit weights, litert's PT2E per-channel
  symmetric config), or ``-64..64`` for ONNX Runtime's 7-bit ``reduce_range`` weights (x86
  without VNNI, where 8-bit products saturate);
* the layer's input is taken from the model with the earlier layers already rounded, the
  target is the float model's output (so a layer can make up for its predecessors' rounding),
  both after the activation that follows the layer (ReLU, ReLU6) where there is one; for
  convolutions a sample of output positions (im2col rows) stands for the full output;
* the soft rounding ``floor(W/s) + h(alpha)`` with the rectified sigmoid ``h`` is optimised
  (Adam) against the output error plus the annealed regulariser ``1 - |2h - 1|^beta`` (beta
  from 20 to 2 after a 20% warm start) that drives each ``h`` to 0 or 1;
* the learned rounding is kept only when its output error on those rows is below round to
  nearest's, else the layer is rounded to nearest.

The weights are then written back already on the grid (``W = s * q``), each channel's largest
element kept at +-qmax, so that a runtime's quantizer recomputes the same scales and reproduces
these integers exactly. The float function moves by less than one grid step per weight.

Example::

    record = adaround(model, calibration_batches)   # in place; per-layer errors in the record
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...modulenames import in_modules
from ._graph import activation_kind, module_of, only_user, trace

__all__ = ["adaround", "grid_integers", "DEFAULT_ITERATIONS"]

#: Optimisation steps per layer (AIMET's default: 10,000 at a 30x smaller learning rate).
DEFAULT_ITERATIONS = 300
_ZETA, _GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch
_BETA = (20.0, 2.0)
_WARM_START = 0.2
_REG = 30.0  # regulariser (mean over weights) against the output error relative to nearest's
_LR = 3e-2
_ROWS = 4096  # output rows (positions x samples) kept per layer
_BATCH_ROWS = 256  # rows per optimisation step
_SAMPLES = 256  # calibration samples used


class _Stop(Exception):
    """Ends a forward pass once the layer's input is captured."""


def grid_integers(weight: torch.Tensor, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``weight``'s integers on the per-output-channel symmetric grid
    ``-qmax..qmax`` (rounded to nearest, as every runtime's quantizer rounds) and the
    per-channel scales ``max |W_c| / qmax``. For adarounded weights (already on the grid)
    ``q * scale`` is the weight itself."""
    w = weight.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
    scale = amax / float(qmax)
    shaped = scale.reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.clamp(torch.round(w / shaped), -qmax, qmax).to(torch.int8)
    return q, scale


def _h(alpha: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(alpha) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)


def _beta(step: int, total: int) -> float:
    start = _WARM_START * total
    rel = (step - start) / max(total - start, 1)
    return _BETA[1] + 0.5 * (_BETA[0] - _BETA[1]) * (1 + math.cos(rel * math.pi))


def _pads(layer: nn.Conv1d | nn.Conv2d) -> list[int]:
    """F.pad amounts (last dim first) for the layer's padding."""
    k = [int(v) for v in layer.kernel_size]
    d = [int(v) for v in layer.dilation]
    p = layer.padding
    if isinstance(p, str):
        if p == "valid":
            pairs = [(0, 0)] * len(k)
        else:  # "same" (stride 1): total d*(k-1), the extra on the right as PyTorch does
            pairs = [(di * (ki - 1) // 2, di * (ki - 1) - di * (ki - 1) // 2)
                     for ki, di in zip(k, d)]
    else:
        pairs = [(int(v), int(v)) for v in p]
    out: list[int] = []
    for lo, hi in reversed(pairs):
        out += [lo, hi]
    return out


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``(P, groups, fan_in / groups)``, one per output element
    position (im2col for convolutions)."""
    if isinstance(layer, nn.Linear):
        rows = x.reshape(-1, 1, x.shape[-1])
    else:
        assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
        x = F.pad(x, _pads(layer))
        if isinstance(layer, nn.Conv1d):
            x = x.unsqueeze(2)
            kernel, dil, stride = (1, *layer.kernel_size), (1, *layer.dilation), (1, *layer.stride)
        else:
            kernel, dil, stride = layer.kernel_size, layer.dilation, layer.stride
        cols = F.unfold(x, kernel, dilation=dil, stride=stride)  # (N, C*k, L)
        rows = cols.transpose(1, 2).reshape(-1, layer.groups, cols.shape[1] // layer.groups)
    return rows


def _out(rows: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(P, C_out)`` outputs of rows ``(P, G, d)`` through weights ``(C_out, d)``."""
    g = rows.shape[1]
    y = torch.einsum("pgi,goi->pgo", rows, w.reshape(g, -1, w.shape[1])).reshape(rows.shape[0], -1)
    return y if bias is None else y + bias


def _stacked(batches: Sequence[Sequence[np.ndarray]], samples: int,
             chunk: int = 32) -> list[list[torch.Tensor]]:
    """Up to ``samples`` calibration samples as tensors, batch-1 batches stacked into chunks
    where every input shares the batch size (a model whose inputs differ in batch size, e.g.
    one image and four prompts, keeps its batches as given)."""
    out: list[list[torch.Tensor]] = []
    stackable = False  # whether out[-1] may take more samples
    taken = 0
    for b in batches:
        if taken >= samples:
            break
        ts = [torch.from_numpy(np.asarray(a)) for a in b]
        n = ts[0].shape[0] if ts and ts[0].dim() else 1
        taken += n
        same = all(t.dim() and t.shape[0] == n for t in ts)
        if (same and stackable and len(out[-1]) == len(ts)
                and out[-1][0].shape[0] + n <= chunk
                and all(o.shape[1:] == t.shape[1:] and o.dtype == t.dtype
                        for o, t in zip(out[-1], ts))):
            out[-1] = [torch.cat([o, t]) for o, t in zip(out[-1], ts)]
        else:
            out.append(ts)
        stackable = same
    return out


@contextlib.contextmanager
def _module_calls() -> Iterator[None]:
    """No grad, and PyTorch's fused transformer-layer kernel off, so that the Linear layers
    inside ``nn.TransformerEncoderLayer`` run as module calls that hooks see."""
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(bool(before))


def _layer_input(model: nn.Module, layer: nn.Module, batch: Sequence[torch.Tensor]
                 ) -> torch.Tensor | None:
    got: list[torch.Tensor] = []

    def pre(_m: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            got.append(args[0].detach())
        raise _Stop

    h = layer.register_forward_pre_hook(pre)
    try:
        with _module_calls():
            model(*batch)
    except _Stop:
        pass
    finally:
        h.remove()
    return got[0] if got else None


def _order(model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[list[str], dict[str, int]]:
    """Conv/Linear module names in the order they first run, and how often each runs."""
    names = {m: n for n, m in model.named_modules()
             if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and n}
    order: list[str] = []
    calls: dict[str, int] = {}
    hooks = []
    for m, n in names.items():
        def pre(_m: nn.Module, _a: tuple, n: str = n) -> None:
            calls[n] = calls.get(n, 0) + 1
            if n not in order:
                order.append(n)
        hooks.append(m.register_forward_pre_hook(pre))
    try:
        with _module_calls():
            model(*batch)
    finally:
        for h in hooks:
            h.remove()
    return order, calls


def _activations(model: nn.Module, batch: Sequence[Any]) -> dict[str, str]:
    """Layer name -> "relu"/"relu6" where that activation is the layer's only consumer."""
    graph, _ = trace(model, list(batch))
    if graph is None:
        return {}
    out = {}
    for node in graph.nodes:
        if isinstance(module_of(model, node), (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nxt = only_user(node)
            kind = activation_kind(model, nxt) if nxt is not None else None
            if kind is not None:
                out[str(node.target)] = kind
    return out


def _round_layer(w: torch.Tensor, x_q: torch.Tensor, y: torch.Tensor,
                 bias: torch.Tensor | None, act: str | None, iterations: int,
                 gen: torch.Generator, qmax: int = 127
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Learn the rounding of ``w`` ``(C_out, d)`` on the grid ``-qmax..qmax``; return
    (integers, scales, record)."""
    amax = w.abs().amax(1).clamp_min(1e-12)
    s = (amax / float(qmax)).unsqueeze(1)
    v = w / s
    nearest = torch.clamp(torch.round(v), -qmax, qmax)
    # the channel's largest elements sit at +-qmax: fixed, so the runtime finds the same scale
    pinned = v.abs() >= qmax - 1e-4
    floor = torch.floor(v)
    rest = (v - floor).clamp(1e-4, 1 - 1e-4)
    alpha = (-torch.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).requires_grad_(True)

    def apply(z: torch.Tensor) -> torch.Tensor:
        if act == "relu":
            return torch.relu(z)
        if act == "relu6":
            return torch.clamp(z, 0, 6)
        return z

    def err(q: torch.Tensor) -> float:
        with torch.no_grad():
            return float((apply(_out(x_q, q * s, bias)) - y).pow(2).sum(1).mean())

    e_nearest = err(nearest)
    norm = max(e_nearest, 1e-30)
    m1, m2 = torch.zeros_like(alpha), torch.zeros_like(alpha)  # Adam's moments
    p = x_q.shape[0]
    free = ~pinned
    any_free = bool(free.any())
    for step in range(iterations):
        idx = torch.randint(0, p, (min(_BATCH_ROWS, p),), generator=gen)
        h = _h(alpha)
        q_soft = torch.where(pinned, nearest, torch.clamp(floor + h, -qmax, qmax))
        recon = (apply(_out(x_q[idx], q_soft * s, bias)) - y[idx]).pow(2).sum(1).mean() / norm
        loss = recon
        if step >= _WARM_START * iterations and any_free:
            reg = (1 - (2 * h[free] - 1).abs().pow(_beta(step, iterations))).mean()
            loss = recon + _REG * reg
        (grad,) = torch.autograd.grad(loss, alpha)
        with torch.no_grad():  # Adam (betas 0.9, 0.999), written out: no optimizer set-up
            m1.mul_(0.9).add_(grad, alpha=0.1)
            m2.mul_(0.999).addcmul_(grad, grad, value=0.001)
            t = step + 1
            alpha.sub_(_LR * (m1 / (1 - 0.9 ** t)) / ((m2 / (1 - 0.999 ** t)).sqrt() + 1e-8))
    with torch.no_grad():
        learned = torch.where(pinned, nearest,
                              torch.clamp(floor + (alpha >= 0).float(), -qmax, qmax))
    e_learned = err(learned)
    keep = e_learned < e_nearest
    q = learned if keep else nearest
    e_kept = e_learned if keep else e_nearest
    rec = {"rows": int(p), "error_nearest": e_nearest, "error_adaround": e_learned,
           "reduction_pct": round(100.0 * (1 - e_kept / norm), 2) if e_nearest > 0 else 0.0,
           "kept": "adaround" if keep else "nearest",
           "changed_pct": round(100.0 * float((q != nearest).float().mean()), 2)}
    return q, s.squeeze(1), rec


def adaround(model: nn.Module, batches: Sequence[Sequence[np.ndarray]], *,
             skip: Sequence[str] = (), iterations: int = DEFAULT_ITERATIONS,
             samples: int = _SAMPLES, rows: int = _ROWS, seed: int = 0,
             qmax: int = 127) -> dict[str, Any]:
    """Round, in place, the weights of every Conv1d/Conv2d/Linear of ``model`` (not named in
    ``skip`` nor inside a skipped module) onto the per-channel grid ``-qmax..qmax`` (127:
    int8; 64: ONNX Runtime's 7-bit ``reduce_range``) with learned rounding; return the
    record. Per layer: the output error (mean over the sampled calibration rows of
    the squared error summed over output channels) of round to nearest (``error_nearest``)
    and of the learned rounding (``error_adaround``), which one was ``kept``, the kept one's
    error reduction (``reduction_pct``) and the share of weights rounded the other way than
    nearest (``changed_pct``).

    Layers the calibration data does not reach, layers called more than once and convolutions
    with a non-zero padding mode are left as they are (named under ``"skipped"``).
    """
    t0 = time.perf_counter()
    data = _stacked(batches, samples)
    if not data:
        return {"layers": [], "skipped": {}, "seconds": 0.0}
    model.eval()
    reference = copy.deepcopy(model)  # the float model: targets
    order, calls = _order(model, data[0])
    acts = _activations(model, data[0])
    gen = torch.Generator().manual_seed(seed)
    done: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in order:
        if in_modules(name, skip):
            skipped[name] = "kept in float"
            continue
        if calls.get(name, 0) != 1:
            skipped[name] = f"called {calls.get(name, 0)} times per forward pass"
            continue
        layer = model.get_submodule(name)
        ref_layer = reference.get_submodule(name)
        if getattr(layer, "padding_mode", "zeros") != "zeros":
            skipped[name] = f"padding mode {layer.padding_mode!r}"
            continue
        per_batch = max(1, rows // len(data))
        xs, ys = [], []
        weight, b = layer.weight, layer.bias
        assert isinstance(weight, torch.Tensor)
        w2 = weight.detach().float().reshape(weight.shape[0], -1)
        bias = b.detach().float() if isinstance(b, torch.Tensor) else None
        for i, batch in enumerate(data):
            x_ref = _layer_input(reference, ref_layer, batch)
            x_q = _layer_input(model, layer, batch)
            if x_ref is None or x_q is None:
                continue
            r_ref, r_q = _rows(layer, x_ref.float()), _rows(layer, x_q.float())
            pick = torch.randperm(r_ref.shape[0], generator=torch.Generator().manual_seed(
                seed * 7919 + i))[:per_batch]
            xs.append(r_q[pick])
            with torch.no_grad():
                ys.append(_out(r_ref[pick], w2, bias))
        if not xs:
            skipped[name] = "no floating-point input on the calibration data"
            continue
        x_q_all, y_all = torch.cat(xs), torch.cat(ys)
        if acts.get(name) == "relu":
            y_all = torch.relu(y_all)
        elif acts.get(name) == "relu6":
            y_all = torch.clamp(y_all, 0, 6)
        q, s, rec = _round_layer(w2, x_q_all, y_all, bias, acts.get(name), iterations, gen,
                                 qmax)
        with torch.no_grad():
            weight.copy_((q * s.unsqueeze(1)).reshape(weight.shape).to(weight.dtype))
        done.append({"layer": name, **({"activation": acts[name]} if name in acts else {}),
                     **rec})
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name and name not in calls:
            skipped[name] = ("not called as a module on the calibration data (its weight is "
                             "used inside another module, e.g. attention's output projection)")
    return {"layers": done, "skipped": skipped, "iterations": iterations,
            "samples": sum(int(b[0].shape[0]) if b and b[0].dim() else 1 for b in data),
            "seconds": round(time.perf_counter() - t0, 2)}
