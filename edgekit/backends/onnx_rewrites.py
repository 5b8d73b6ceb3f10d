"""Rewrites of the fp32 ONNX graph before ONNX Runtime's quantizer, so that an int8 file runs
on int8 data between its layers (``QuantConfig.integer_ops``).

ONNX Runtime's QDQ quantizer has no int8 HardSigmoid, HardSwish or ReduceMean: each stays a
float op between a DequantizeLinear and a QuantizeLinear (a MobileNetV3-Large: 29
HardSigmoids, as the exporter writes ``hardswish(x)`` as ``x * HardSigmoid(x)``, and 9
ReduceMeans, one per squeeze-excitation gate). OpenVINO, reading the same QDQ file, runs each
HardSigmoid on a reference kernel between two layout reorders. Written out in ops the
quantizer does quantize, with the same float function:

* ``HardSigmoid(x; alpha, beta)`` -> ``Clip(x + beta/alpha, 0, 1/alpha) * alpha``;
  ``HardSwish(x)`` -> ``x * HardSigmoid(x; 1/6, 1/2)`` written out the same way. The Clip
  after the Add is folded into the Add's quantization (its range is the clamp's);
  :mod:`edgekit.backends.onnx_active_ranges` cuts the input's range where the written-out
  gate is flat, as it did for the HardSigmoid.
* ``ReduceMean`` over the two spatial axes of a 4-D tensor -> ``GlobalAveragePool`` (then a
  ``Flatten`` when the mean drops those axes), which ONNX Runtime has as an integer op.

Each rewritten node keeps its name as a prefix and its metadata (the PyTorch module it came
from), so ``keep_float`` and the manifest's module names still find it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rewrite_for_integer_ops"]

#: ops that pass a float producer's output on (a layer kept in float and its activation)
_ELEMENTWISE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Mul",
                "Add", "Identity", "Reshape", "Transpose", "Flatten")


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _const(graph: Any, name: str, value: float) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    return name


def _node(op: str, inputs: list[str], outputs: list[str], name: str, like: Any,
          **attrs: Any) -> Any:
    from onnx import helper

    node = helper.make_node(op, inputs, outputs, name=name, **attrs)
    node.metadata_props.extend(like.metadata_props)
    return node


def _hard_sigmoid(graph: Any, x: str, out: str, name: str, like: Any, alpha: float,
                  beta: float) -> list[Any]:
    """``max(0, min(1, alpha * x + beta))`` as ``Clip(x + beta / alpha, 0, 1 / alpha) * alpha``."""
    shifted, clipped = f"{name}/shifted", f"{name}/clipped"
    return [
        _node("Add", [x, _const(graph, f"{name}/shift", beta / alpha)], [shifted],
              f"{name}/add", like),
        _node("Clip", [shifted, _const(graph, f"{name}/low", 0.0),
                       _const(graph, f"{name}/high", 1.0 / alpha)], [clipped],
              f"{name}/clip", like),
        _node("Mul", [clipped, _const(graph, f"{name}/scale", alpha)], [out],
              f"{name}/scale_mul", like),
    ]


def _rank(graph: Any, name: str) -> int | None:
    for v in [*graph.value_info, *graph.input, *graph.output]:
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return None


def _spatial_mean(graph: Any, node: Any, consts: dict[str, np.ndarray]) -> bool | None:
    """For a ReduceMean over axes 2 and 3 of a 4-D tensor: its ``keepdims``; else None."""
    attrs = _attrs(node)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1] in consts:
        axes = consts[node.input[1]].reshape(-1).tolist()
    if axes is None or _rank(graph, node.input[0]) != 4:
        return None
    if sorted(int(a) % 4 for a in axes) != [2, 3]:
        return None
    return bool(attrs.get("keepdims", 1))


def rewrite_for_integer_ops(proto: Any, exclude: set[str] | frozenset[str] = frozenset()
                            ) -> dict[str, int]:
    """Rewrite ``proto`` in place; returns the op types rewritten -> count. Nodes named in
    ``exclude`` (kept in float) are left, and so are the nodes that read one (through
    activations): that output is float, and the written-out op would quantize it where the
    float op did not."""
    from onnx import numpy_helper

    graph = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def after_float(tensor: str) -> bool:
        """Whether ``tensor`` comes from a node kept in float, through activations."""
        for _ in range(6):
            node = producer.get(tensor)
            if node is None:
                return False
            if node.name in exclude:
                return True
            if node.op_type not in _ELEMENTWISE or not node.input:
                return False
            tensor = node.input[0]
        return False

    done: dict[str, int] = {}
    nodes: list[Any] = []
    for node in graph.node:
        name = node.name or node.output[0]
        new: list[Any] | None = None
        if node.name in exclude or (node.input and after_float(node.input[0])):
            pass
        elif node.op_type == "HardSigmoid":
            a = _attrs(node)
            alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
            if alpha > 0:
                new = _hard_sigmoid(graph, node.input[0], node.output[0], name, node, alpha,
                                    beta)
        elif node.op_type == "HardSwish":
            gate = f"{name}/gate"
            new = [*_hard_sigmoid(graph, node.input[0], gate, name, node, 1 / 6, 0.5),
                   _node("Mul", [node.input[0], gate], [node.output[0]], f"{name}/mul", node)]
        elif node.op_type == "ReduceMean":
            keep = _spatial_mean(graph, node, consts)
            if keep is not None:
                pooled = node.output[0] if keep else f"{name}/pooled"
                new = [_node("GlobalAveragePool", [node.input[0]], [pooled], name, node)]
                if not keep:
                    new.append(_node("Flatten", [pooled], [node.output[0]], f"{name}/flatten",
                                     node, axis=1))
        if new is None:
            nodes.append(node)
            continue
        done[node.op_type] = done.get(node.op_type, 0) + 1
        nodes.extend(new)
    del graph.node[:]
    graph.node.extend(nodes)
    return dict(sorted(done.items()))
