"""int8 OpenVINO IR: ``nncf.quantize`` on the OpenVINO model (default) or the QDQ ONNX model.

The preset is MIXED (asymmetric activations) for models with recurrent layers: NNCF's default
PERFORMANCE preset collapsed the LSTM from 96.4% to 58.3% (BASELINE.md). Layers kept in float
become an NNCF ``IgnoredScope`` matching the ops that ``openvino.convert_model`` names after the
PyTorch module (``__module.<name>/...``), with the weight-free ops that only feed them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .float_ops import openvino_float_ops

if TYPE_CHECKING:
    from ..quantize.config import QuantConfig

__all__ = ["drop_repeated_requantization", "openvino_precision_summary",
           "quantize_openvino_model"]


def quantize_openvino_model(
    om: Any,
    *,
    batches: Sequence[Sequence[np.ndarray]],
    config: QuantConfig,
    keep_float: Sequence[str] = (),
    recurrent: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Return (quantized ov.Model, info for the manifest)."""
    import nncf

    preset_name = config.preset
    if preset_name == "auto":
        preset_name = "mixed" if recurrent else "performance"
    preset = {"mixed": nncf.QuantizationPreset.MIXED,
              "performance": nncf.QuantizationPreset.PERFORMANCE}[preset_name]
    patterns = [rf"__module\.{re.escape(k)}(\.[^/]*)?/.*" for k in keep_float]
    spread = openvino_float_spread(om, patterns)
    kwargs: dict[str, Any] = {}
    if patterns:
        kwargs["ignored_scope"] = nncf.IgnoredScope(patterns=patterns, names=spread,
                                                    validate=False)
    # Three of NNCF's defaults cost fidelity on this AVX2 machine; off, the NNCF source gains
    # 2-19 dB SQNR over nncf.quantize's defaults on the zoo (benchmarks/results/
    # openvino_source.md, the native and nncf columns). Activation ranges: the min / max over
    # every calibration sample, not the mean of each sample's. Bias correction: edgekit's own
    # (``bias_correction``) runs in PyTorch before export. Overflow fix: the first layer's
    # weights stay on 8 bits (AdaRound's integers are 8-bit too).
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE, disable_bias_correction=True,
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    data = [list(b) if len(b) > 1 else b[0] for b in batches]
    q = nncf.quantize(om, nncf.Dataset(data), preset=preset, subset_size=len(data), **kwargs)
    return q, {"quantizer": "nncf.quantize", "preset": preset_name,
               "nncf_bias_correction": "off",
               "activation_ranges": "min-max over the calibration samples",
               "ignored_patterns": patterns, "ignored_feeding_float": spread,
               "subset_size": len(data), "overflow_fix": "disable"}


def openvino_float_spread(om: Any, patterns: Sequence[str]) -> list[str]:
    """The ops that only feed the ops ``patterns`` match (those of the layers kept in float)
    and have no weight of their own (no floating-point constant of more than one element, as
    is or through a Convert): ignored with them
    (:func:`edgekit.backends._float_spread.spread_float`)."""
    from ._float_spread import spread_float

    if not patterns:
        return []
    rx = [re.compile(p) for p in patterns]
    ops = list(om.get_ordered_ops())

    def weight(op: Any) -> bool:
        if op.get_type_name() == "Convert":
            op = op.input_value(0).get_node()
        if op.get_type_name() != "Constant":
            return False
        out = op.output(0)
        return out.get_element_type().is_real() and int(np.prod(list(out.get_shape()))) > 1

    kept = {op.get_friendly_name() for op in ops
            if any(r.fullmatch(op.get_friendly_name()) for r in rx)}
    free = {op.get_friendly_name() for op in ops
            if op.get_type_name() not in ("Constant", "Parameter", "Result", "Convert")
            and not any(weight(op.input_value(i).get_node()) for i in range(op.get_input_size()))}
    consumers = {op.get_friendly_name(): [t.get_node().get_friendly_name()
                                          for o in op.outputs() for t in o.get_target_inputs()]
                 for op in ops}
    return spread_float(kept, consumers, free)


#: ops that move data without changing a value
_MOVES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def drop_repeated_requantization(proto: Any) -> int:
    """Remove, in place, each QuantizeLinear / DequantizeLinear pair that re-quantizes the
    output of a data-movement op (Reshape, Transpose, ...) onto the grid its input was just
    dequantized from (same scale and zero point): the values are already on that grid, so
    the pair changes none. ONNX Runtime's QDQ models repeat them around layout ops;
    OpenVINO's CPU plugin crashed (SIGSEGV) compiling Phi's attention with them
    (``DequantizeLinear -> Reshape -> QuantizeLinear -> DequantizeLinear -> Transpose``) and
    compiles it without. Returns how many pairs went."""
    from onnx import numpy_helper

    g = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    made = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def same(a: Sequence[str], b: Sequence[str]) -> bool:
        return len(a) == len(b) == 2 and all(
            x in consts and y in consts and consts[x].dtype == consts[y].dtype
            and np.array_equal(consts[x], consts[y]) for x, y in zip(a, b))

    dropped = 0
    for q in list(g.node):
        move = made.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if move is None or move.op_type not in _MOVES:
            continue
        dq0 = made.get(move.input[0])
        dqs = readers.get(q.output[0], [])
        if dq0 is None or dq0.op_type != "DequantizeLinear" or not dqs \
                or not same(q.input[1:], dq0.input[1:]) \
                or any(d.op_type != "DequantizeLinear" or d.output[0] in outputs
                       or not same(d.input[1:], q.input[1:]) for d in dqs):
            continue
        for d in dqs:
            for reader in readers.get(d.output[0], []):
                for k, name in enumerate(reader.input):
                    if name == d.output[0]:
                        reader.input[k] = move.output[0]
                        readers.setdefault(move.output[0], []).append(reader)
            g.node.remove(d)
        g.node.remove(q)
        dropped += 1
    return dropped


_SEQUENCES = ("LSTMSequence", "GRUSequence", "RNNSequence")


def openvino_precision_summary(om: Any, onnx_modules: dict[str, str] | None = None,
                               xml: Path | None = None) -> dict[str, Any]:
    """What executes, from the OpenVINO model graph (the saved IR, read back): compute ops
    whose data and weight inputs come from a FakeQuantize or an 8-bit constant (through
    layout and slicing ops) are int8, the others fp32; ``float_ops``: the other ops the CPU
    plugin runs on float data (:func:`edgekit.backends.float_ops.openvino_float_ops`; None
    when it did not compile; with ``xml``, the saved IR, compiled in a child process first:
    :func:`float_ops_in_child`). ``onnx_modules``: ONNX node -> PyTorch module, for an IR
    read from ONNX (its ops are named after the ONNX nodes)."""
    layers = []
    for op in om.get_ordered_ops():
        t = op.get_type_name()
        if t not in ("Convolution", "GroupConvolution", "MatMul", "LSTMSequence", "GRUSequence",
                     "RNNSequence"):
            continue
        inputs = (0, 3, 4) if t in _SEQUENCES else (0, 1)  # data, weights
        srcs = [_int8_source(op.input_value(i).get_node())
                for i in inputs if i < op.get_input_size()]
        name = op.get_friendly_name()
        m = re.match(r"__module\.([^/]*)/", name)
        module = m.group(1) if m else _onnx_module(name, onnx_modules or {})
        row = {"node": name, "op": t, "module": module,
               "precision": "int8" if all(srcs) else "fp32"}
        if all(srcs):
            row["mode"] = "static"
        elif len(srcs) > 1 and all(srcs[1:]):
            row["mode"] = "weights only"  # float compute on decompressed int8 weights
        layers.append(row)
    float_ops = float_ops_in_child(xml) if xml is not None else _float_ops_here(om)
    return {"layers": layers, "int8_layers": sum(1 for r in layers if r["precision"] == "int8"),
            "float_layers": sum(1 for r in layers if r["precision"] != "int8"),
            "float_ops": float_ops}


def _float_ops_here(model: Any) -> dict[str, int] | None:
    try:
        return openvino_float_ops(model)
    except Exception:  # a model the CPU plugin cannot compile here (verification says why)
        return None


def float_ops_in_child(xml: Path) -> dict[str, int] | None:
    """:func:`openvino_float_ops` of the IR at ``xml``, compiled and run in a child process
    first (:mod:`._child`): OpenVINO's CPU plugin crashed (SIGSEGV) compiling an ONNX Runtime
    QDQ model of Phi, which took the whole build with it. A child killed by a signal raises
    ModelRunError; one that could not compile gives None (verification says why)."""
    from . import float_ops
    from ._child import run_in_child

    # the module by its file: the child needs OpenVINO, not edgekit's backends (and torch)
    code = ("import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('edgekit_float_ops', sys.argv[1])\n"
            "mod = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(mod)\n"
            "print(json.dumps(mod.openvino_float_ops(sys.argv[2])))\n")
    done = run_in_child(
        code, [str(float_ops.__file__), str(xml)], backend="openvino", runtime="OpenVINO",
        doing=f"compiling {xml.name} for the CPU",
        hint="OpenVINO's CPU plugin cannot run this int8 IR: build it from the other int8 "
        "source (quantization openvino_source = \"nncf\" or \"qdq\")")
    if done is None:  # slow, not dead: here
        return _float_ops_here(str(xml))
    try:
        return {str(k): int(v) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}
    except (ValueError, IndexError, AttributeError):  # it could not compile
        return None


def _onnx_module(name: str, modules: dict[str, str]) -> str:
    """The module of the ONNX node an OpenVINO op is named after (``node_linear_1/...``)."""
    best = ""
    for node in modules:
        if len(node) > len(best) and (name == node or name.startswith(node + "/")):
            best = node
    return modules.get(best, "")


_PASS = ("Reshape", "Convert", "Multiply", "Subtract", "Transpose", "Squeeze", "Unsqueeze",
         "Concat", "MaxPool", "Relu", "AvgPool", "Gather", "StridedSlice", "Slice")


def _int8_source(node: Any, depth: int = 0) -> bool:
    """Whether a compute op's input comes from a FakeQuantize or an 8-bit constant."""
    t = node.get_type_name()
    if t == "FakeQuantize":
        return True
    if t == "Constant":
        return str(node.get_element_type()) in ("<Type: 'int8_t'>", "<Type: 'uint8_t'>") or \
            node.get_element_type().get_type_name() in ("i8", "u8")
    if t in _PASS and depth < 6:
        return _int8_source(node.input_value(0).get_node(), depth + 1)
    return False
