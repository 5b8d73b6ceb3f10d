"""ONNX Runtime side: every intermediate value becomes an extra graph output.

Node outputs are tied to modules by, in order: the exporter's tensor name found in
``torch.export`` (so a Conv that ONNX Runtime's optimizer fused with the following ReLU, whose
output keeps the name ``relu``, maps to the ReLU), the node's ``pkg.torch.onnx.name_scopes``
metadata, and for QuantizeLinear/DequantizeLinear/Cast/Identity nodes (which carry no
metadata) their producer's module. A DequantizeLinear output is the value the next op really
sees in a QDQ model, so it is the one compared. Exposing a value as a graph output can stop
ONNX Runtime fusing the node that makes it; the values are those of the unfused QDQ graph.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .tensors import RuntimeTensor, resolve_by_name

__all__ = ["capture_onnx"]

_PASS_THROUGH = ("QuantizeLinear", "DequantizeLinear", "Cast", "Identity")
#: Ops whose output holds their first input's value (moved, re-typed or re-shaped).
_SAME_VALUE = (*_PASS_THROUGH, "Reshape", "Squeeze", "Unsqueeze", "Flatten")
_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _scope(node: Any) -> str | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                parts = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            # ['', 'features', 'features.1', '<op>']: the full name of each enclosing module
            return str(parts[-2]) if len(parts) >= 3 and parts[-2] else None
    return None


def capture_onnx(path: Path, samples: Sequence[Sequence[np.ndarray]], input_names: list[str],
                 fx_modules: Mapping[str, str], *, threads: int = 1) -> list[RuntimeTensor]:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    inits = {i.name for i in proto.graph.initializer}
    producer: dict[str, Any] = {}
    tensors: list[RuntimeTensor] = []
    by_name: dict[str, RuntimeTensor] = {}
    for order, node in enumerate(proto.graph.node):
        act_inputs = [i for i in node.input if i and i not in inits]
        dq_inputs = any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear"
                        for i in node.input if i)
        for out in node.output:
            if not out:
                continue
            producer[out] = node
            module = resolve_by_name([out], fx_modules)
            source = "tensor name"
            if module is None and _scope(node):
                module, source = _scope(node), "metadata"
            if module is None and node.op_type in _PASS_THROUGH and act_inputs:
                parent = by_name.get(act_inputs[0])
                if parent is not None and parent.module is not None:
                    module, source = parent.module, "inherited"
            if node.op_type == "DequantizeLinear" and not act_inputs:
                continue  # a weight or bias dequantized from an initializer
            precision = "int8" if node.op_type == "DequantizeLinear" or dq_inputs else "fp32"
            t = RuntimeTensor(out, node.op_type, order, module, source if module else "",
                              precision)
            scope = _scope(node)
            if module is not None and scope and scope != module:
                t.also.add(scope)
            if node.op_type in _SAME_VALUE and act_inputs and act_inputs[0] in by_name:
                t.value_of = by_name[act_inputs[0]].value_key
            tensors.append(t)
            by_name[out] = t
    graph_outputs = {o.name for o in proto.graph.output}
    for k, o in enumerate(proto.graph.output):
        if o.name in by_name:
            by_name[o.name].model_output = k
    for t in tensors:
        if t.name not in graph_outputs:
            proto.graph.output.append(onnx.ValueInfoProto(name=t.name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for sample in samples:
        feeds = {n: np.asarray(x) for n, x in zip(input_names, sample)}
        for name, value in zip(names, sess.run(names, feeds)):
            found = by_name.get(name)
            if found is not None:
                found.values.append(np.asarray(value))
    return [t for t in tensors if t.values and t.values[0].dtype.kind == "f"]
