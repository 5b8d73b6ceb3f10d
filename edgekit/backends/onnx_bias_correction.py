"""Bias correction on a QDQ model's own arithmetic (ONNX Runtime).

edgekit's float-domain bias correction (:mod:`edgekit.quantize.transforms.bias_correction`)
removes the mean shift that *weight* rounding gives each layer. What the int8 model computes
also shifts by its activations' rounding and clipping, and those shifts add up along the graph:
an average pool of a Hardswish output on a coarse grid, read by a 960-wide linear layer, moves
its outputs by the sum of every input's bias. This pass measures the shift where it lands: for
each Conv / Gemm whose bias is an int32 initializer (QDQ), the per-channel mean of the layer's
accumulator in the QDQ model (every earlier layer quantized, and already corrected) against the
same tensor of the fp32 model it was quantized from, on the calibration batches, and moves the
int32 bias by minus that shift (Nagel et al. 2019, "empirical" bias correction, on the
artifact rather than a simulation).

Layers are corrected one at a time in graph order, each measured with the layers before it
already corrected; each step is one pass of the QDQ model over the batches. A shift measured
where the int8 signal is mostly lost (a squeeze-excite branch whose ranges are coarse) matches
means without bringing the outputs closer, so every correction is also judged by the model's
outputs: the same pass measures the outputs against fp32, and a correction that did not bring
them closer is undone (and the next layer measured again without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..measure.metrics import power_ratio_db
from .onnx_probe import probe_session

__all__ = ["correct_qdq_biases"]

_REMOVED = ("Relu", "Clip")  # activations the QDQ model folds into the output's Q range


@dataclass
class _Layer:
    node: str
    op: str
    q_tensor: str  # the accumulator in the QDQ model
    f_tensor: str  # the same values in the fp32 model
    bias: str  # int32 initializer
    scale: str  # its float scale initializer
    q_range: tuple[float, float] | None  # what the output's QuantizeLinear keeps

    @property
    def axis(self) -> int:
        return 1 if self.op == "Conv" else -1


def _layers(qdq: Any, fp32: Any) -> list[_Layer]:
    """The Conv / Gemm nodes of ``qdq`` with an int32 QDQ bias, in graph order, each with the
    fp32 tensor that holds its float output (before a Relu / Clip the QDQ model removed)."""
    inits = {i.name: i for i in qdq.graph.initializer}
    quantized = {n.input[0]: n for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    f_producer = {o: n for n in fp32.graph.node for o in n.output}
    out: list[_Layer] = []
    for n in qdq.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or not n.input[2]:
            continue
        dq = producer.get(n.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits \
                or inits[dq.input[0]].data_type != 6 or dq.input[1] not in inits:
            continue
        name = n.output[0]
        f_name = name if name in f_producer else name.removesuffix("_QuantizeLinear_Input")
        f = f_producer.get(f_name)
        while f is not None and f.op_type in _REMOVED:
            f_name = f.input[0]
            f = f_producer.get(f_name)
        if f is None or f.op_type != n.op_type:
            continue
        out.append(_Layer(n.name, n.op_type, name, f_name, dq.input[0], dq.input[1],
                          _q_range(quantized.get(name), inits)))
    return out


def _session(proto: Any, tensors: Sequence[str], *, optimize: bool) -> Any:
    return probe_session(proto, tensors, untyped=True, optimize=optimize)[0]


def _q_range(q: Any, inits: dict[str, Any]) -> tuple[float, float] | None:
    """The float range QuantizeLinear ``q`` keeps (None: no Q, or not one per-tensor scale)."""
    from onnx import numpy_helper

    if q is None or len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits:
        return None
    scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(inits[q.input[2]])
    if scale.size != 1:
        return None
    info = np.iinfo(zp.dtype)
    z, s = float(zp.reshape(-1)[0]), float(scale.reshape(-1)[0])
    return (info.min - z) * s, (info.max - z) * s


class _Pass:
    """Runs of the QDQ model over the batches, each giving one layer's accumulator shift
    against fp32 (its per-channel mean over the elements inside the output's Q range) and the
    squared error of the model's outputs against fp32 (``ref``, computed once)."""

    def __init__(self, fp32: Any, input_names: Sequence[str],
                 batches: Sequence[Sequence[np.ndarray]]) -> None:
        self.fp32, self.input_names, self.batches = fp32, list(input_names), batches
        self.outputs = [o.name for o in fp32.graph.output]
        sess = _session(fp32, [], optimize=False)
        self.ref = [sess.run(self.outputs, self._feed(b)) for b in batches]

    def _feed(self, b: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.input_names, b))

    def signal(self) -> float:
        return float(sum(np.sum(np.asarray(r, np.float64) ** 2) for rs in self.ref for r in rs))

    def run(self, qdq: Any, layer: _Layer | None) -> tuple[np.ndarray | None, float]:
        q_sess = _session(qdq, [layer.q_tensor] if layer else [], optimize=True)
        f_sess = _session(self.fp32, [layer.f_tensor], optimize=False) if layer else None
        total = None
        count = None
        err = 0.0
        for b, ref in zip(self.batches, self.ref):
            feed = self._feed(b)
            got = q_sess.run(self.outputs + ([layer.q_tensor] if layer else []), feed)
            err += float(sum(np.sum((np.asarray(g, np.float64) - r) ** 2)
                             for g, r in zip(got, ref)))
            if layer is None or f_sess is None:
                continue
            f = f_sess.run([layer.f_tensor], feed)[0]
            q, f = (np.moveaxis(np.asarray(v, np.float64), layer.axis, 0) for v in (got[-1], f))
            q, f = q.reshape(q.shape[0], -1), f.reshape(f.shape[0], -1)
            lo, hi = layer.q_range or (-np.inf, np.inf)
            keep = (f >= lo) & (f <= hi)
            s, c = ((q - f) * keep).sum(1), keep.sum(1)
            total = s if total is None else total + s
            count = c if count is None else count + c
        if total is None or count is None:
            return None, err
        return np.where(count > 0, total / np.maximum(count, 1), 0.0), err


def correct_qdq_biases(qdq_path: Path, fp32_path: Path, out_path: Path, *,
                       input_names: Sequence[str], batches: Sequence[Sequence[np.ndarray]]
                       ) -> dict[str, Any]:
    """Write ``qdq_path`` with its int32 biases corrected to ``out_path``; return the record
    (layers measured, corrected and undone, passes, the outputs' SQNR on the batches before and
    after, the largest shifts removed)."""
    import onnx
    from onnx import numpy_helper

    qdq = onnx.load(str(qdq_path))
    fp32 = onnx.load(str(fp32_path))
    layers = _layers(qdq, fp32)
    if not layers or not batches:
        onnx.save(qdq, str(out_path))
        return {"layers": 0, "corrected": 0, "passes": 0}
    inits = {i.name: i for i in qdq.graph.initializer}
    run = _Pass(fp32, input_names, batches)
    signal = run.signal()

    def db(err: float) -> float:
        return round(power_ratio_db(signal, err), 2)

    def measure(i: int) -> tuple[np.ndarray | None, float]:
        return run.run(qdq, layers[i] if i < len(layers) else None)

    shift, best = measure(0)
    first = best
    passes, moved, undone = 1, {}, []
    for i, lay in enumerate(layers):
        b = numpy_helper.to_array(inits[lay.bias])
        scale = np.broadcast_to(numpy_helper.to_array(inits[lay.scale]).astype(np.float64),
                                b.shape)
        step = None if shift is None or shift.shape != b.shape else \
            np.round(shift / np.maximum(scale, 1e-30)).astype(np.int64)
        if step is None or not step.any():
            shift, _ = measure(i + 1)
            passes += 1
            continue
        new = np.clip(b.astype(np.int64) - step, -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        inits[lay.bias].CopyFrom(numpy_helper.from_array(new, lay.bias))
        next_shift, err = measure(i + 1)
        passes += 1
        if err < best:
            best, shift = err, next_shift
            moved[lay.node] = float(np.max(np.abs(step * scale)))
            continue
        inits[lay.bias].CopyFrom(numpy_helper.from_array(b, lay.bias))
        undone.append(lay.node)
        shift, _ = measure(i + 1)
        passes += 1
    onnx.save(qdq, str(out_path))
    return {"layers": len(layers), "corrected": len(moved), "undone": len(undone),
            "passes": passes, "fit_sqnr_before_db": db(first), "fit_sqnr_after_db": db(best),
            "largest_shift": {k: round(v, 6) for k, v in
                              sorted(moved.items(), key=lambda kv: -kv[1])[:5]}}
