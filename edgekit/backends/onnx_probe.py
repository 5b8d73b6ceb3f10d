"""An ONNX model with chosen intermediate tensors as extra outputs, run by ONNX Runtime (one
thread, CPU; by default no graph rewrites: every tensor keeps its name and its float value)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["augmented_session", "probe_session"]


def probe_session(proto: Any, tensors: Sequence[str], *, untyped: bool = False,
                  optimize: bool = False) -> tuple[Any, list[str]]:
    """A session of a copy of ``proto`` with ``tensors`` as extra outputs: (session, the
    tensors it outputs). A tensor takes its ``value_info``; one without is left out, or with
    ``untyped`` declared a float output of unknown shape (a QDQ model's tensors have no
    ``value_info``). ``optimize``: ONNX Runtime's graph rewrites on (its fused int8 kernels
    run, as they do for a user), else off."""
    import onnx
    import onnxruntime as ort

    p = onnx.ModelProto()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    infos = {v.name: v for v in [*p.graph.value_info, *p.graph.input]}
    for t in tensors:
        if t in have:
            continue
        if t in infos:
            p.graph.output.append(infos[t])
        elif untyped:
            p.graph.output.append(onnx.helper.make_tensor_value_info(
                t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(p.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = {o.name for o in sess.get_outputs()}
    return sess, [t for t in tensors if t in names]


def augmented_session(model_path: Path, tensors: Sequence[str]) -> tuple[Any, Any, list[str]]:
    """The fp32 model (one thread, no graph rewrites) with ``tensors`` as extra outputs:
    (session, the model proto, the tensors it outputs)."""
    import onnx

    proto = onnx.load(str(model_path))
    sess, found = probe_session(proto, tensors)
    return sess, proto, found
