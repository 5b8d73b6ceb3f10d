"""Ranges for the inputs of Softmax that a calibrator's min-max would ruin.

An attention mask is added to the scores before the softmax: ``-1e4`` in BERT, the float32
minimum in Hugging Face models. A calibrator that takes the tensor's min-max spreads 256
levels over ``[-1e4, 12]`` (a step of 39): every real score rounds to the same level and the
attention is uniform over the unmasked tokens. The same happens to any softmax input with a
far tail. What the softmax needs is narrower: a value more than ``K`` below its row's maximum
weighs under ``exp(-K)`` of that maximum's weight whatever it is, so the range can start at
``min over rows of (row max) - K`` with ``K = ln(n) + 10`` (``n`` values per row: the values
clipped there carry at most ``n * exp(-K)`` = ``exp(-10)`` of a row's mass together) and
clip the rest onto it. Rows whose maximum is itself masked (every value masked: the
softmax of such a row is uniform, and stays so) do not set the floor.

Even that range can be too coarse: 256 levels over ``ln(n) + 10`` (about 12.5 for 12 keys) is
a step of 0.05, as wide as the whole spread of the scores of a freshly initialised or
low-temperature attention, whose rows then come out uniform. So each narrowed input is also
simulated on the calibration data: where the 8-bit grid on its row range moves the softmax's
outputs more than the softmax output's own 8-bit grid does (``input_grid_error`` >
``output_grid_error``, mean squared) and an elementwise op makes it (the mask's Add), it is a
candidate for float (``keep_float``): the Add and the Softmax compute in float between the
quantized scores and the quantized probabilities. The ONNX Runtime backend builds the model
both ways and keeps the one whose outputs are closer to fp32 (a GPT-2 of random weights:
17.9 dB held-out narrowed, 30.6 dB with the choice, ``benchmarks/results/library_models.md``).
``mode="narrow"`` always narrows.

ONNX Runtime's QDQ gives a Reshape / Transpose / Squeeze / Unsqueeze / Flatten output its
input's parameters, so the range goes on the Softmax input and the tensors it was reshaped
from::

    found = softmax_input_ranges(model_path, input_names, batches)
    found["scores"]   # {"rmin": -21.3, "rmax": 11.8, "calibrated_min": -10011.2, ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["row_floor", "softmax_input_ranges", "grid_errors", "MASKED_ROW_GAP"]

#: A row whose maximum lies this far under the median row maximum is a fully masked row.
MASKED_ROW_GAP = 1e3
#: The range is narrowed only when it shrinks to at most this fraction of the calibrated one.
_WORTH = 0.5
#: Ops whose output shares its input's quantization parameters in ONNX Runtime's QDQ.
_SHARED = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
#: Calibration batches the grid simulation runs on.
_SIMULATED = 8
#: Ops that may make a softmax input (a mask added, filled or scaled in) and compute in float
#: with it at no loss of a quantized layer.
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Where")


def row_floor(row_max: np.ndarray, row_size: int) -> float:
    """The lowest value a softmax over rows of ``row_size`` values needs, given every row's
    maximum: ``min(row max) - (ln(row_size) + 10)``, fully masked rows left out."""
    m = np.asarray(row_max, dtype=np.float64).reshape(-1)
    m = m[np.isfinite(m)]
    if m.size == 0:
        return -math.inf
    m = m[m >= np.median(m) - MASKED_ROW_GAP]
    return float(m.min() - (math.log(max(row_size, 1)) + 10.0))


def _softmax_nodes(proto: Any, skip: set[str]) -> list[tuple[str, int, bool, str]]:
    """(input tensor, axis, opset rule, node name) of every Softmax: opset >= 13 reduces over
    ``axis`` (default -1), older ones over the dims from ``axis`` on (default 1). Nodes named
    in ``skip`` (kept in float) are left out."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    out = []
    for n in proto.graph.node:
        if n.op_type != "Softmax" or not n.input or n.name in skip:
            continue
        attrs = {a.name: a.i for a in n.attribute}
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
        out.append((n.input[0], axis, opset >= 13, n.name))
    return out


def _shared_chain(producer: dict[str, Any], tensor: str, uses: dict[str, int]) -> list[str]:
    """``tensor`` and the tensors it was reshaped / transposed from, each used once."""
    chain = [tensor]
    node = producer.get(tensor)
    while node is not None and node.op_type in _SHARED and node.input \
            and uses.get(node.input[0]) == 1:
        chain.append(node.input[0])
        node = producer.get(node.input[0])
    return chain


def _rows(x: np.ndarray, axis: int, reduce_tail: bool) -> np.ndarray:
    """``x`` as (rows, row length): the values each softmax normalises together."""
    a = axis % x.ndim
    if reduce_tail:
        return np.moveaxis(x, a, -1).reshape(-1, x.shape[a])
    return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1)


def _softmax(rows: np.ndarray) -> np.ndarray:
    z = rows - rows.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def grid_errors(rows: Sequence[np.ndarray], low: float, high: float) -> tuple[float, float]:
    """(input, output) grid error of a softmax over ``rows`` (each (rows, row length)): the
    mean squared change of its outputs when its input is fake-quantized on 256 levels over
    ``[low, high]`` (values under ``low``, the masked keys, clipped), and the noise of 256
    levels over the outputs' own range ``[0, max]`` (``step**2 / 12``). Both are means over
    the unmasked outputs: a masked key's probability, 0, lies on both grids."""
    step = (high - low) / 255.0
    err = count = 0.0
    top = 0.0
    for r in rows:
        r = np.asarray(r, dtype=np.float64)
        r = np.where(np.isfinite(r), r, low)  # -inf (a masked key) weighs nothing either way
        p = _softmax(r)
        q = np.clip(r, low, high)
        q = low + np.round((q - low) / step) * step if step > 0 else q
        err += float(((_softmax(q) - p) ** 2).sum())
        count += float((r >= low).sum())
        top = max(top, float(p.max()))
    return err / max(count, 1.0), (top / 255.0) ** 2 / 12.0


def softmax_input_ranges(model_path: Path, input_names: Sequence[str],
                         batches: Sequence[Sequence[np.ndarray]], *,
                         skip: Sequence[str] = (), mode: str = "auto"
                         ) -> dict[str, dict[str, Any]]:
    """Per Softmax input (and the tensors sharing its parameters) whose calibrated range the
    row rule narrows to at most half, and which no other node reads nor the model outputs:
    ``rmin`` (the row floor), ``rmax`` (the calibrated maximum), ``calibrated_min``,
    ``softmax_input`` (the tensor the rule was computed on), ``softmax_node``, the grid
    errors and ``keep_float`` (``mode="auto"``: the input grid's error is the larger;
    ``"narrow"``: never). Softmax nodes named in ``skip`` (kept in float) get nothing."""
    import onnx

    from .onnx_probe import augmented_session

    proto = onnx.load(str(model_path))
    uses: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in proto.graph.output}
    # only a tensor the softmax alone reads: clipping it changes nothing else
    nodes = [n for n in _softmax_nodes(proto, set(skip)) if uses.get(n[0]) == 1
             and n[0] not in outputs]
    if not nodes:
        return {}
    sess, _, wanted = augmented_session(model_path, [n[0] for n in nodes])
    rules = {t: (axis, tail) for t, axis, tail, _ in nodes}
    node_of = {t: name for t, _, _, name in nodes}
    kept: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
    lows = {t: math.inf for t in wanted}
    highs = {t: -math.inf for t in wanted}
    maxima: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
    sizes: dict[str, int] = {}
    for batch in batches:
        for t, v in zip(wanted, sess.run(wanted, dict(zip(input_names, batch)))):
            v = np.asarray(v, dtype=np.float32)
            if v.size == 0 or v.ndim == 0:
                continue
            finite = v[np.isfinite(v)]
            if finite.size:
                lows[t], highs[t] = min(lows[t], float(finite.min())), \
                    max(highs[t], float(finite.max()))
            rows = _rows(v, *rules[t])
            maxima[t].append(rows.max(axis=1))
            sizes[t] = int(rows.shape[1])
            if len(kept[t]) < _SIMULATED:
                kept[t].append(rows)
    producer = {o: n for n in proto.graph.node for o in n.output}
    out: dict[str, dict[str, Any]] = {}
    for t in wanted:
        if not maxima[t] or not math.isfinite(lows[t]):
            continue
        floor = row_floor(np.concatenate(maxima[t]), sizes[t])
        low, high = lows[t], highs[t]
        if not floor > low or (high - floor) > _WORTH * (high - low):
            continue
        chain = _shared_chain(producer, t, uses)
        makers = [producer[c] for c in chain if c in producer]
        in_err, out_err = grid_errors(kept[t], floor, high)
        # float only where what makes the input is elementwise (not a layer's output)
        floatable = bool(makers) and makers[-1].op_type in _ELEMENTWISE
        entry = {"rmin": float(floor), "rmax": float(high), "calibrated_min": float(low),
                 "softmax_input": t, "softmax_node": node_of[t],
                 "input_grid_error": in_err, "output_grid_error": out_err,
                 "keep_float": mode == "auto" and floatable and in_err > out_err}
        if entry["keep_float"]:
            entry["float_nodes"] = [node_of[t], *(m.name for m in makers)]
        for name in chain:
            out[name] = entry
    return out
