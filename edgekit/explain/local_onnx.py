"""Local error inside an ONNX artifact: each layer run alone, fed with PyTorch's own inputs.

The cumulative numbers (:mod:`edgekit.explain.layers`) carry every earlier layer's error. The
local number isolates the layer: for a layer mapped to tensor ``T``, the nodes that compute
``T`` from the nearest mapped tensors upstream (or the graph inputs) are cut out of the model
with :class:`onnx.utils.Extractor` (in a QDQ model: the layer's weight dequantization, its
op, and the quantize/dequantize pair of its output) and fed the PyTorch values of those
upstream tensors. So each rounding step is counted once along a chain: a layer's local error
is its own arithmetic and weights plus the rounding of its output.

Layers measured at another layer's tensor (fused, or the same tensor as their predecessor),
or whose upstream tensors have no PyTorch value of the same shape, get none ("n/a").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..measure.metrics import channel_sqnr_db, sqnr_db

__all__ = ["local_sqnr_onnx"]


def _cut(proto: Any, target: str, stops: set[str]) -> set[str] | None:
    """The tensors a sub-graph computing ``target`` needs fed (None: it cannot be cut)."""
    producer = {o: n for n in proto.graph.node for o in n.output if o}
    inits = {i.name for i in proto.graph.initializer}
    need: set[str] = set()
    seen: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name != target and name in stops:
            need.add(name)
            continue
        if name in inits:
            continue
        node = producer.get(name)
        if node is None:
            return None  # a graph input that has no PyTorch value
        todo.extend(i for i in node.input if i)
    return need


def local_sqnr_onnx(path: Path, samples: Sequence[Sequence[np.ndarray]],
                    input_names: Sequence[str], tensors: Mapping[str, str],
                    torch_values: Mapping[str, list[np.ndarray]],
                    references: Mapping[str, np.ndarray], *, threads: int = 1
                    ) -> dict[str, float]:
    """Module -> local effective SQNR (dB, the smaller of the tensor's and the median
    channel's). ``tensors``: module -> its mapped tensor; ``torch_values``: module -> PyTorch
    output per sample; ``references``: module -> the stacked PyTorch output it is compared
    with."""
    import onnx
    import onnx.utils
    import onnxruntime as ort

    proto = onnx.load(str(path))
    feeds_of: dict[str, list[np.ndarray]] = {
        n: [np.asarray(s[i]) for s in samples] for i, n in enumerate(input_names)}
    owner = {t: m for m, t in tensors.items()}
    for t, m in owner.items():
        if m in torch_values:
            feeds_of.setdefault(t, [np.asarray(v, dtype=np.float32) for v in torch_values[m]])
    stops = set(feeds_of)
    # the extractor types a sub-graph's inputs and outputs from value_info: a QDQ model's
    # dequantized tensors often have none (they are float; the shape comes from the feed)
    typed = {v.name for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
    for name in sorted((stops | set(tensors.values())) - typed):
        proto.graph.value_info.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    extractor = onnx.utils.Extractor(proto)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    out: dict[str, float] = {}
    for module, tensor in tensors.items():
        need = _cut(proto, tensor, stops)
        if not need or module not in references:
            continue
        try:
            sub = extractor.extract_model(sorted(need), [tensor])
            sess = ort.InferenceSession(sub.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            wanted = [i.name for i in sess.get_inputs()]
            got = []
            for k in range(len(samples)):
                feed = {n: feeds_of[n][k] for n in wanted}
                got.append(np.asarray(sess.run([tensor], feed)[0], dtype=np.float64))
        except Exception:  # noqa: BLE001 - no local number for this layer ("n/a")
            continue
        ref = references[module].astype(np.float64)
        value = np.concatenate(got, axis=0)
        if value.size != ref.size:
            continue
        value = value.reshape(ref.shape)
        vals = [sqnr_db(ref, value)]
        if ref.ndim >= 3 and ref.shape[1] > 1:
            vals.append(float(np.median(channel_sqnr_db(ref, value, axis=1))))
        out[module] = min(vals)
    return out
