"""LiteRT side: ``Interpreter(..., experimental_preserve_all_tensors=True)``, then every op's
output read with ``get_tensor``.

litert-torch names each tensor after its location, ``pkg.Model/torch.nn.modules.conv.Conv2d_
conv1;2``; a fused op lists several locations (``ReLU_relu;;Conv2d_conv2``, in either order),
and holds the value of the last of them in PyTorch's execution order. int8/int16 tensors are
dequantized with their own scale and zero point. Convolutions and pools keep activations
channels-last (NHWC) inside the file: their outputs, and element-wise ops fed by them, are
marked NHWC so the mapping can transpose them back.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .tensors import RuntimeTensor, module_path_from_location

__all__ = ["capture_tflite"]

_NHWC_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "TRANSPOSE_CONV",
             "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "L2_POOL_2D"}
_KEEP_LAYOUT = {"ADD", "SUB", "MUL", "DIV", "RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH",
                "HARD_SWISH", "LEAKY_RELU", "PRELU", "QUANTIZE", "DEQUANTIZE", "MAXIMUM",
                "MINIMUM", "ABS", "GELU", "ELU", "NEG", "SQUARE", "RSQRT", "SQRT", "EXP"}


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if value.dtype.kind in "iu" and scale:
        return (value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []))
    if value.dtype.kind in "iu" and scales.size:
        zps = np.asarray(qp.get("zero_points", np.zeros_like(scales)))
        axis = int(qp.get("quantized_dimension", 0))
        shape = [1] * value.ndim
        shape[axis] = -1
        return ((value.astype(np.float32) - zps.reshape(shape))
                * scales.reshape(shape)).astype(np.float32)
    return value


def _quantize_feed(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and np.asarray(x).dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def capture_tflite(path: Path, samples: Sequence[Sequence[np.ndarray]], input_map: list[str],
                   modules: Mapping[str, int], *, threads: int = 1) -> list[RuntimeTensor]:
    """``input_map``: the signature input name of each model input, in model order;
    ``modules``: leaf module name -> its position in PyTorch's execution order."""
    from ..backends.tflite import _interpreter_module, _signature, check_tflite_file

    check_tflite_file(path)
    mod = _interpreter_module()
    with warnings.catch_warnings():  # "intended for debugging": that is the purpose here
        warnings.simplefilter("ignore", UserWarning)
        interp = mod.Interpreter(model_path=str(path), num_threads=threads,
                                 experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    _key, in_det, out_det, sig_in, _sig_out = _signature(interp, path)
    output_at = {int(d["index"]): k for k, d in enumerate(out_det)}
    by_sig = dict(zip(sig_in, in_det))
    details = {int(d["index"]): d for d in interp.get_tensor_details()}
    ops = [o for o in interp._get_ops_details() if o["op_name"] != "DELEGATE"]
    tensors: list[RuntimeTensor] = []
    layout: dict[int, str | None] = {}
    for order, op in enumerate(ops):
        inputs = [int(i) for i in op["inputs"] if int(i) >= 0]
        in_layout = next((layout[i] for i in inputs if i in layout), None)
        for index in (int(i) for i in op["outputs"]):
            d = details[index]
            if op["op_name"] in _NHWC_OPS and len(d["shape"]) == 4:
                layout[index] = "NHWC"
            elif op["op_name"] in _KEEP_LAYOUT:
                layout[index] = in_layout
            elif op["op_name"] == "TRANSPOSE":
                layout[index] = None  # litert-torch transposes back to PyTorch's layout
            else:
                layout[index] = None
            paths = [m for m in (module_path_from_location(loc.split(";")[0], modules)
                                 for loc in str(d["name"]).split(";;")) if m is not None]
            located = [m for m in paths if m in modules]
            # a fused op (Conv + ReLU, Linear + ReLU) holds the value of its last module in
            # PyTorch's order; the locations come in either order. An op fused with one of
            # its block's own functional ops (the residual add after the attention, an
            # F.relu in the model's forward: location "" ) holds the block's value, which is
            # no layer's output
            own_op = any(p not in modules and any(m.startswith(p + ".") or not p
                                                  for m in located) for p in paths)
            module = (max(located, key=lambda m: modules[m]) if located and not own_op
                      else None)
            dtype = np.dtype(d["dtype"])
            precision = ("int8" if dtype in (np.int8, np.uint8) else
                         "int16" if dtype == np.int16 else str(dtype).replace("float", "fp"))
            tensors.append(RuntimeTensor(str(d["name"]), op["op_name"], order, module,
                                         "metadata" if module else "", precision,
                                         layout=layout[index],
                                         also={m for m in located if m != module}))
    flat = list(zip(tensors, [int(o) for op in ops for o in op["outputs"]]))
    for t, i in flat:
        t.model_output = output_at.get(i)
    for sample in samples:
        for name, x in zip(input_map, sample):
            d = by_sig[name]
            interp.set_tensor(int(d["index"]), _quantize_feed(np.asarray(x), d))
        interp.invoke()
        for t, i in flat:
            value = np.array(interp.get_tensor(i))
            t.values.append(_dequantize(value, details[i]))
    return [t for t in tensors if t.values and t.values[0].dtype.kind == "f"]
