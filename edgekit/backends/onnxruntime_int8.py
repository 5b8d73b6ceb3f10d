"""fp32 ONNX -> QDQ int8 ONNX with ``onnxruntime.quantization.quantize_static``.

Per-channel int8 weights, 8-bit activations (uint8 by default: ONNX Runtime's x86 kernels are
faster with it, see BASELINE.md), calibration method min-max / percentile / entropy. Layers
kept in float are PyTorch module names, mapped to ONNX nodes through the exporter's
``pkg.torch.onnx.name_scopes`` metadata. Recurrent ops (LSTM/GRU), which static QDQ leaves in
float, get dynamic-range int8 weights (``quantize_dynamic`` on those ops only).
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..quantize.config import QuantConfig

__all__ = ["quantize_onnx", "onnx_node_modules", "onnx_precision_summary"]

_QUANT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_RECURRENT = ("LSTM", "GRU", "RNN")


def onnx_node_modules(proto: Any) -> dict[str, str]:
    """ONNX node name -> the PyTorch module name it came from ('' when unknown)."""
    out = {}
    for node in proto.graph.node:
        scope = ""
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.name_scopes":
                try:
                    parts = ast.literal_eval(p.value)
                    scope = ".".join(x for x in parts[1:-1] if x)
                except (ValueError, SyntaxError):
                    scope = ""
        out[node.name] = scope
    return out


def _matches(module: str, keep: Sequence[str]) -> bool:
    return any(module == k or module.startswith(k + ".") for k in keep)


class _Reader:
    def __init__(self, names: list[str], batches: Sequence[Sequence[np.ndarray]]) -> None:
        self._it = iter([dict(zip(names, b)) for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by quantize_static
        pass


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    *,
    input_names: list[str],
    batches: Sequence[Sequence[np.ndarray]],
    config: QuantConfig,
    keep_float: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the QDQ model to ``out_path``; return what was done (for the manifest)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(fp32_path))
    modules = onnx_node_modules(proto)
    exclude = [n for n, m in modules.items() if keep_float and m and _matches(m, keep_float)]
    act = QuantType.QInt8 if config.activation_type == "int8" else QuantType.QUInt8
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.method]
    extra: dict[str, Any] = {"CalibMovingAverage": False}
    if config.method == "percentile":
        extra["CalibPercentile"] = float(config.extra.get("percentile", 99.99))
    recurrent = [n.name for n in proto.graph.node if n.op_type in _RECURRENT]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(fp32_path)
        pre = Path(tmp) / "pre.onnx"
        src, preprocessing = _preprocess(src, pre, Path(tmp))
        static_out = Path(tmp) / "static.onnx"
        quantize_static(
            str(src), str(static_out), _Reader(input_names, batches),
            quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            activation_type=act, weight_type=QuantType.QInt8, calibrate_method=method,
            nodes_to_exclude=exclude, op_types_to_quantize=list(_QUANT_OPS) + [
                "Relu", "Clip", "MaxPool", "GlobalAveragePool", "AveragePool", "Add", "Mul",
                "Concat", "Reshape", "Transpose", "Flatten", "Sigmoid", "Softmax", "Squeeze",
                "Unsqueeze", "Gather", "Resize", "Split", "Where"],
            extra_options=extra,
        )
        dynamic = [n for n in recurrent if n not in exclude and not _matches(
            modules.get(n, ""), keep_float)]
        if dynamic:
            from onnxruntime.quantization import quantize_dynamic

            quantize_dynamic(str(static_out), str(out_path), weight_type=QuantType.QInt8,
                             nodes_to_quantize=dynamic, op_types_to_quantize=list(_RECURRENT),
                             per_channel=False)
        else:
            shutil.copyfile(static_out, out_path)
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "preprocessing": preprocessing,
        "method": config.method,
        "per_channel": config.per_channel,
        "activation_type": "int8" if act == QuantType.QInt8 else "uint8",
        "weight_type": "int8",
        "dynamic_range_nodes": dynamic,
        "float_nodes": exclude,
        **onnx_precision_summary(out_path),
    }


def _preprocess(src: Path, out: Path, tmp: Path) -> tuple[Path, str]:
    """Constant folding (onnxruntime's basic graph optimizations, so LSTM/GRU weights become
    plain initializers that can be quantized) and shape inference, as ORT recommends before
    quantizing. ``quant_pre_process``'s own optimization step trips over external data here,
    so it runs with ``skip_optimization=True`` after ORT's optimizer."""
    import onnx
    import onnxruntime as ort

    steps = []
    # One self-contained file (the exporter writes weights to model.onnx.data beside it).
    inline = tmp / "inline.onnx"
    onnx.save(onnx.load(str(src), load_external_data=True), str(inline),
              save_as_external_data=False)
    src = inline
    try:
        folded = tmp / "folded.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        src = folded
        steps.append("onnxruntime basic optimizations (constant folding)")
    except Exception as exc:  # keep the unfolded model
        steps.append(f"constant folding skipped: {type(exc).__name__}")
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(src), str(out), skip_optimization=True, skip_symbolic_shape=True)
        src = out
        steps.append("quant_pre_process (shape inference)")
    except Exception as exc:
        steps.append(f"quant_pre_process skipped: {type(exc).__name__}")
    return src, "; ".join(steps)


def onnx_precision_summary(path: Path) -> dict[str, Any]:
    """Which compute nodes take int8 inputs in the file, which stay float."""
    import onnx

    proto = onnx.load(str(path))
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int_ops = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
               "DynamicQuantizeLSTM"}
    modules = onnx_node_modules(proto)
    layers = []
    for n in proto.graph.node:
        if n.op_type in _QUANT_OPS + _RECURRENT or n.op_type in int_ops:
            q = n.op_type in int_ops or (len(n.input) > 1 and n.input[0] in dq_out
                                         and n.input[1] in dq_out)
            layers.append({"node": n.name, "op": n.op_type, "module": modules.get(n.name, ""),
                           "precision": "int8" if q else "fp32"})
    int8_inits = sum(1 for i in proto.graph.initializer
                     if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {"layers": layers, "int8_initializers": int8_inits,
            "int8_layers": sum(1 for r in layers if r["precision"] == "int8"),
            "float_layers": sum(1 for r in layers if r["precision"] != "int8")}
