"""The interval an ONNX tensor's readers tell apart: where every reader is an elementwise
activation flat outside an interval, a range need not reach past it.

A squeeze-excitation block ends in ``Conv -> HardSigmoid``; a trained MobileNetV3-Large's
last SE convolutions put out values in ``[-435, 397]`` that HardSigmoid flattens to 0 or 1
outside ``[-3, 3]``: a min-max (or percentile, MSE) range over the whole spread leaves about
two uint8 steps for the values that matter. Cut to ``[-3, 3]`` first (a grid step wider at
each end, so that the zero point's rounding cannot leave a saturated value inside the
interval: :func:`edgekit.backends._ranges.saturating_cut`), every candidate range spends its
256 levels there, and the Q saturates where the activation is flat. The same holds for
``x * HardSigmoid(x)`` (HardSwish as exported, inlined) below ``-3``, ``HardSwish``,
``Relu`` and ``Clip`` with constant bounds, and for the same gates written out as
``Clip(x + 3, 0, 6) * (1/6)`` (:mod:`edgekit.backends.onnx_rewrites`): ``x + c`` read only
by clamps is flat where they are. LiteRT's observers take the same cut from the
PT2E graph (:func:`edgekit.backends.tflite_int8._consumer_interval`);
:func:`edgekit.backends._ranges.choose_range` applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._ranges import ACTIVE_INTERVALS

__all__ = ["active_intervals"]


def _hard_sigmoid_bounds(node: Any) -> tuple[float, float] | None:
    """``[low, high]`` outside which ``max(0, min(1, alpha * x + beta))`` is flat."""
    attrs = {a.name: a.f for a in node.attribute}
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    if not alpha > 0:
        return None
    return -beta / alpha, (1.0 - beta) / alpha


def _constant(proto_consts: dict[str, np.ndarray], name: str) -> float | None:
    value = proto_consts.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _reader_interval(t: str, node: Any, consts: dict[str, np.ndarray],
                     producers: dict[str, Any], readers: dict[str, list[Any]]
                     ) -> tuple[float, float] | None:
    """The interval outside which ``node`` (one reader of ``t``) is flat in ``t``; None when it
    is not such an activation."""
    op = node.op_type
    if op == "HardSigmoid":
        return _hard_sigmoid_bounds(node)
    if op in ("HardSwish", "Relu"):
        return ACTIVE_INTERVALS[op.lower()]
    if op == "Clip" and node.input[0] == t:
        return _clip_bounds(node, consts)
    if op == "Add" and len(node.input) == 2 and t in node.input:
        shift = _constant(consts, node.input[1] if node.input[0] == t else node.input[0])
        spans = [_clip_bounds(r, consts) if r.op_type == "Clip" else
                 ACTIVE_INTERVALS["relu"] if r.op_type == "Relu" else None
                 for r in readers.get(node.output[0], [])]
        if shift is None or not spans or any(s is None for s in spans):
            return None  # x + c read only by clamps: flat where every clamp is
        return min(s[0] for s in spans if s) - shift, max(s[1] for s in spans if s) - shift
    if op == "Mul" and len(node.input) == 2 and t in node.input:
        other = node.input[1] if node.input[0] == t else node.input[0]
        bounds = _gate_bounds(t, producers.get(other), consts, producers)
        return None if bounds is None else (bounds[0], np.inf)  # x * gate(x): 0 below
    return None


def _clip_bounds(node: Any, consts: dict[str, np.ndarray]) -> tuple[float, float] | None:
    if len(node.input) > 1 or not node.attribute:  # opset 11+: bounds are inputs
        lo = _constant(consts, node.input[1]) if len(node.input) > 1 and node.input[1] \
            else -np.inf
        hi = _constant(consts, node.input[2]) if len(node.input) > 2 and node.input[2] \
            else np.inf
    else:
        attrs = {a.name: a.f for a in node.attribute}
        lo, hi = attrs.get("min", -np.inf), attrs.get("max", np.inf)
    return None if lo is None or hi is None else (float(lo), float(hi))


def _gate_bounds(t: str, gate: Any, consts: dict[str, np.ndarray], producers: dict[str, Any]
                 ) -> tuple[float, float] | None:
    """Where ``gate``, a hard sigmoid of ``t``, is flat: a HardSigmoid node, or one written out
    as ``Clip(t + c, lo, hi) * k`` (:mod:`edgekit.backends.onnx_rewrites`)."""
    if gate is None:
        return None
    if gate.op_type == "HardSigmoid":
        return _hard_sigmoid_bounds(gate) if gate.input[0] == t else None
    if gate.op_type != "Mul" or len(gate.input) != 2:
        return None
    clip = next((producers.get(i) for i in gate.input
                 if producers.get(i) is not None and producers[i].op_type == "Clip"), None)
    add = producers.get(clip.input[0]) if clip is not None else None
    if add is None or add.op_type != "Add" or t not in add.input:
        return None
    shift = _constant(consts, add.input[1] if add.input[0] == t else add.input[0])
    bounds = _clip_bounds(clip, consts)
    if shift is None or bounds is None:
        return None
    return bounds[0] - shift, bounds[1] - shift


def active_intervals(proto: Any, tensors: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per tensor of ``tensors`` whose every reader is flat outside an interval (and that is
    not a graph output): the union of those intervals. Tensors without one are left out."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producers = {o: n for n in proto.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for name in dict.fromkeys(n.input):
            readers.setdefault(name, []).append(n)
    outputs = {o.name for o in proto.graph.output}
    out: dict[str, tuple[float, float]] = {}
    for t in tensors:
        if t in outputs or not readers.get(t):
            continue
        spans = [_reader_interval(t, n, consts, producers, readers) for n in readers[t]]
        if any(s is None for s in spans):
            continue
        lows, highs = [s[0] for s in spans if s], [s[1] for s in spans if s]
        lo, hi = min(lows), max(highs)
        if lo < hi and (np.isfinite(lo) or np.isfinite(hi)):
            out[t] = (lo, hi)
    return out
