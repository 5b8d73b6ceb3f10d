"""The ops of an int8 artifact that run on float data, read from what the runtime executes.

A precision summary names each compute layer's precision. Between them an "int8" file can
still run ops on float data: a gate or a pooling its quantizer did not quantize, between a
dequantize and a quantize (MobileNetV3 on ONNX Runtime: every HardSigmoid and ReduceMean).
These are read from the runtime, after its own graph rewrites, not from the file's op list:

* **ONNX Runtime**: one profiled run (on a calibration batch in a build; else zeros of the
  file's input shapes, symbolic sizes 1).
  The profiler records each node that ran with its input and output element types; a node
  with a float output counts.
* **OpenVINO**: the CPU plugin's compiled graph (after one run on zero inputs), as compiled
  for this machine's CPU with ``f32`` inference precision (edgekit's load default): of the
  nodes that execute on each inference, those whose kernel precision (``runtimePrecision``
  in the compiled graph, ``get_runtime_model``) is float and that write a float output
  count (a layout reorder or a reference HardSigmoid between int8 layers does; a fused
  quantize step, float in and int8 out, does not; nodes folded at compile time, in-place
  reshapes and reorders that leave the bytes in place never run).

Compute layers (their precision is in the summary's ``layers``) and the quantize /
dequantize steps at the int8 boundaries are not counted. Returns op type -> count.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["onnxruntime_float_ops", "openvino_float_ops", "openvino_node_runs"]

#: ONNX Runtime ops that are compute layers (in ``layers``) or quantize/dequantize steps.
_ORT_SKIP = frozenset((
    "Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "FusedConv", "FusedGemm",
    "FusedMatMul", "NchwcConv", "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger",
    "MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear"))
_ORT_FLOAT = frozenset(("float", "float16", "bfloat16", "double"))

#: OpenVINO CPU plugin node types that are compute layers, I/O, or the quantize step.
_OV_SKIP = frozenset(("Input", "Output", "Const", "Convolution", "Deconvolution",
                      "FullyConnected", "MatMul", "RNNSeq", "RNNCell", "FakeQuantize"))
_OV_FLOAT = frozenset(("f32", "bf16", "f16", "f64"))


def onnxruntime_float_ops(path: str | Path, feeds: Sequence[np.ndarray] | None = None
                          ) -> dict[str, int]:
    """Op type -> nodes with a float output in one profiled ONNX Runtime run of ``path``
    (default graph optimizations, CPU provider), compute layers and Q/DQ excepted. ``feeds``:
    the run's inputs in model order (default: zeros, symbolic sizes 1)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="edgekit-floatops-") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        if feeds is None:  # zeros of each input's shape and type (ORT: tensor(float)...)
            feeds = [np.zeros([d if isinstance(d, int) and d >= 0 else 1 for d in i.shape],
                              {"float": "float32", "double": "float64"}.get(
                                  i.type[7:-1], i.type[7:-1]))
                     for i in sess.get_inputs()]
        feed = {i.name: np.asarray(x) for i, x in zip(sess.get_inputs(), feeds)}
        sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    found: Counter[str] = Counter()
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        op = str(args.get("op_name", ""))
        outs = [next(iter(t)) for t in args.get("output_type_shape", []) if t]
        if op not in _ORT_SKIP and any(t in _ORT_FLOAT for t in outs):
            found[op] += 1
    return dict(sorted(found.items()))


def openvino_float_ops(model: Any) -> dict[str, int]:
    """Op type -> nodes of the CPU plugin's compiled ``model`` (an ``ov.Model`` or IR path)
    that run a float kernel with a float output on each inference, compute layers, I/O and
    FakeQuantize excepted.

    Read from the compiled graph's structure, not from the performance counters: the plugin
    reports a node that took under a microsecond as not run, so a counted run would drop a
    small gate's HardSigmoid on one run and keep it on the next."""
    import openvino as ov

    compiled = ov.Core().compile_model(
        model if not isinstance(model, (str, Path)) else str(model), "CPU",
        {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    compiled.create_infer_request().infer(
        {i: np.zeros([d.get_length() if d.is_static else 1 for d in port.get_partial_shape()],
                     port.get_element_type().to_dtype())
         for i, port in enumerate(compiled.inputs)})
    found: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        precision = info["runtimePrecision"].astype(str)
        writes = info["outputPrecisions"].astype(str).split(",")
        if kind not in _OV_SKIP and precision in _OV_FLOAT \
                and any(w in _OV_FLOAT for w in writes) and openvino_node_runs(op):
            found[kind] += 1
    return dict(sorted(found.items()))


def _rt(op: Any, key: str, index: int = 0) -> str:
    """The ``index``-th comma-separated entry of ``op``'s compiled-graph attribute ``key``."""
    info = op.get_rt_info()
    parts = info[key].astype(str).split(",") if key in info else [""]
    return parts[index] if index < len(parts) else parts[-1]


def openvino_node_runs(op: Any) -> bool:
    """Whether the compiled graph's node ``op`` executes a kernel on each inference: not an
    in-place node (no kernel, ``unknown`` primitive), not one computed once from constants,
    and not a reorder between layouts that order this shape's elements alike (a [1, C, 1, 1]
    gate from NHWC to NCHW), which the plugin does in place."""
    if _rt(op, "primitiveType").startswith("unknown"):
        return False
    sources = list(op.input_values())
    if sources and all(_rt(v.get_node(), "layerType") == "Const" for v in sources):
        return False
    if _rt(op, "layerType") != "Reorder" or not sources:
        return True
    src, shape = sources[0], op.get_output_partial_shape(0)
    before = _rt(src.get_node(), "outputLayouts", src.get_index())
    after = _rt(op, "outputLayouts")
    if _rt(src.get_node(), "outputPrecisions", src.get_index()) != _rt(op, "outputPrecisions") \
            or shape.is_dynamic or not (before + after).isalpha() \
            or not (before + after).islower() or len({len(before), len(after), len(shape)}) != 1:
        return True
    dims = [d.get_length() for d in shape]

    def order(layout: str) -> list[str]:
        return [c for c in layout if ord(c) - 97 < len(dims) and dims[ord(c) - 97] != 1]
    return order(before) != order(after)
