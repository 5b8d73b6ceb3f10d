"""OpenVINO side: ``Model.add_outputs`` on every op's output before compiling.

Ops are tied to modules by, in order: ``__module.<name>/...`` friendly names (IR converted
straight from PyTorch), the ONNX tensor or node names the op kept (IR read from an ONNX file,
looked up in ``torch.export``), and for FakeQuantize/Convert ops and the pieces of a
dequantization their producer's module. Ops OpenVINO renamed (a Convolution with a BatchNorm
folded in becomes ``Multiply_4327``) carry no module and are left to the shape rule. The
model compiles with the target's own ``INFERENCE_PRECISION_HINT``; an output exposed for
capture can stop a fusion there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .tensors import RuntimeTensor, resolve_all

__all__ = ["capture_openvino"]

_SKIP = {"Parameter", "Constant", "Result", "ShapeOf"}
_MODULE = re.compile(r"^__module\.([^/]+)/")
_INT8_COMPUTE = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


def _is_quant(op: Any) -> bool:
    t = op.get_type_name()
    name = op.get_friendly_name()
    return t == "FakeQuantize" or name.endswith(("_DequantizeLinear", "_QuantizeLinear"))


_FAST_ENCODER = re.compile(r"^__module\.(.+)/aten::_transformer_encoder_layer_fwd/")
_ACTIVATIONS = ("Relu", "Gelu")
#: Ops between an activation and the MatMul reading it in an int8 model.
_QUANT_STEPS = ("FakeQuantize", "Convert", "Subtract", "Multiply")


def _encoder_layers(ops: Sequence[Any], modules: Mapping[str, int]) -> dict[str, str]:
    """Op name -> leaf module inside a ``nn.TransformerEncoderLayer`` exported through
    PyTorch's fused inference path (one ``_transformer_encoder_layer_fwd`` op, so the
    friendly names stop at the layer): the two layer norms are its MVN ops in order, the
    feed-forward activation's op is ``dropout``'s value (eval dropout passes it on), and the
    ops right before and after it (with their bias Add) are ``linear1`` and ``linear2``."""
    blocks: dict[str, list[Any]] = {}
    for op in ops:
        m = _FAST_ENCODER.match(op.get_friendly_name())
        if m and op.get_type_name() not in _SKIP:
            blocks.setdefault(m.group(1), []).append(op)
    out: dict[str, str] = {}
    for layer, block in blocks.items():
        kinds = [op.get_type_name() for op in block]
        norms = [op for op in block if op.get_type_name() == "MVN"]
        act = next((i for i, k in enumerate(kinds) if k in _ACTIVATIONS), None)
        picks: list[tuple[str, Any]] = list(zip(("norm1", "norm2"), norms))
        if act is not None and act >= 1:
            picks.append(("linear1", block[act - 1]))
            picks.append(("dropout", block[act]))
            # the next MatMul (in an int8 model after the activation's FakeQuantize), with
            # its bias Add
            mm = act + 1
            while mm < len(block) and kinds[mm] in _QUANT_STEPS:
                mm += 1
            if mm < len(block) and kinds[mm] == "MatMul":
                after = mm + 1 if kinds[mm + 1:mm + 2] == ["Add"] else mm
                picks.append(("linear2", block[after]))
        for leaf, op in picks:
            if f"{layer}.{leaf}" in modules:
                out[op.get_friendly_name()] = f"{layer}.{leaf}"
    return out


def capture_openvino(path: Path, samples: Sequence[Sequence[np.ndarray]],
                     input_names: list[str], fx_modules: Mapping[str, str],
                     modules: Mapping[str, int],
                     *, threads: int = 1, precision: str = "f32") -> list[RuntimeTensor]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    tensors: list[RuntimeTensor] = []
    module_of: dict[str, str | None] = {}  # every op's module, captured or not
    int_domain: set[str] = set()  # ops whose float values are quantized integers
    constant: set[str] = set()  # ops computed from constants only (dequantized weights)
    ports: list[tuple[str, set[str], RuntimeTensor]] = []
    output_names = [set(o.get_names()) for o in model.outputs]
    encoder = _encoder_layers(model.get_ordered_ops(), modules)
    for order, op in enumerate(model.get_ordered_ops()):
        kind = op.get_type_name()
        name = op.get_friendly_name()
        if kind in _SKIP or op.get_output_size() < 1:
            continue  # (several outputs, e.g. MaxPool's values and indices: the first)
        port = op.output(0)
        act_inputs = [i.get_source_output().get_node() for i in op.inputs()
                      if i.get_source_output().get_node().get_type_name() != "Constant"]
        parent = act_inputs[0].get_friendly_name() if act_inputs else None
        if all(p.get_friendly_name() in constant for p in act_inputs):
            constant.add(name)
            continue
        module, source = None, ""
        m = _MODULE.match(name)
        if m and m.group(1) in modules:
            module, source = m.group(1), "metadata"
        elif name in encoder:
            module, source = encoder[name], "metadata"
        named = resolve_all([*sorted(port.get_names()), name], fx_modules)
        if module is None and named:
            module, source = named[0], "tensor name"
        # integer inputs that are quantized levels (not token indices read by a Gather or
        # converted from an integer model input)
        from_int = kind != "Gather" and (parent in int_domain or (
            act_inputs and act_inputs[0].get_type_name() != "Parameter"
            and act_inputs[0].output(0).get_element_type().is_integral()))
        if parent is not None and (module is None or from_int) and (
                _is_quant(op) or kind in ("Convert", "FakeQuantize") or from_int):
            if module_of.get(parent) is not None:
                module, source = module_of[parent], "inherited"
        module_of[name] = module
        consumers = [c.get_node() for c in port.get_target_inputs()]
        if (kind == "FakeQuantize" and consumers and all(
                c.get_type_name() == "Convert" and c.output(0).get_element_type().is_integral()
                for c in consumers)) or (from_int and kind in ("Convert", "Subtract")):
            int_domain.add(name)  # QuantizeLinear's integer levels, not values: not captured
            continue
        if port.get_element_type().is_integral() or not port.get_partial_shape().is_static:
            continue
        if "/" in name and source != "metadata":
            continue  # a piece of an ONNX node (``node_conv2d/WithoutBiases``): not its value
        quant_in = any(_is_quant(p) for p in act_inputs)
        int8 = _is_quant(op) or from_int or (kind in _INT8_COMPUTE and quant_in)
        t = RuntimeTensor(name, kind, order, module, source,
                          "int8" if int8 else {"f32": "fp32"}.get(precision, precision),
                          also={n for n in named if n != module})
        tag = f"__edgekit_explain_{len(ports)}"
        known = set(port.get_names())
        t.model_output = next((k for k, names in enumerate(output_names) if names & known),
                              None)
        port.get_tensor().add_names({tag})
        ports.append((tag, known, t))
        tensors.append(t)
    model.add_outputs([tag for tag, _, _ in ports])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    for sample in samples:
        feeds = {n: np.asarray(x) for n, x in zip(input_names, sample)}
        results = request.infer(feeds)
        by_name = {n: value for port, value in results.items() for n in port.get_names()}
        for tag, known, t in ports:
            value = next((by_name[n] for n in [tag, *sorted(known)] if n in by_name), None)
            if value is not None:
                t.values.append(np.array(value))
    return [t for t in tensors if t.values]
