"""The fp32 ONNX model with chosen intermediate tensors as extra outputs, run by ONNX Runtime
(one thread, no graph rewrites: every tensor keeps its name and its float value)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["augmented_session"]


def augmented_session(model_path: Path, tensors: Sequence[str]) -> tuple[Any, Any, list[str]]:
    """The fp32 model (one thread, no graph rewrites) with ``tensors`` as extra outputs:
    (session, the model proto, the tensors it outputs)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(model_path))
    outputs = {o.name for o in proto.graph.output}
    infos = {v.name: v for v in [*proto.graph.value_info, *proto.graph.input]}
    for t in tensors:
        if t not in outputs and t in infos:
            proto.graph.output.append(infos[t])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    names = {o.name for o in sess.get_outputs()}
    return sess, proto, [t for t in tensors if t in names]
