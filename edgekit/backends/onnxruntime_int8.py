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
                    # Each entry is a full module path ('', '0', '0.0', 'conv2d'): the
                    # last module's path is the one before the op name.
                    parts = ast.literal_eval(p.value)
                    scope = str(parts[-2]) if len(parts) >= 2 else ""
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
    lstm = {n.name for n in proto.graph.node if n.op_type == "LSTM"}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(fp32_path)
        pre = Path(tmp) / "pre.onnx"
        src, preprocessing = _preprocess(src, pre, Path(tmp))
        static_out = Path(tmp) / "static.onnx"
        try:
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
        except Exception as exc:
            from ._calibration import calibration_failure

            raise calibration_failure("ONNX Runtime (quantize_static)", batches, input_names,
                                      exc) from exc
        # ONNX Runtime's dynamic quantizer rewrites LSTM only (DynamicQuantizeLSTM); GRU and
        # RNN stay float, and the summary below reads that back from the file.
        dynamic = [n for n in recurrent if n not in exclude and not _matches(
            modules.get(n, ""), keep_float) and n in lstm]
        if dynamic:
            from onnxruntime.quantization import quantize_dynamic

            quantize_dynamic(str(static_out), str(out_path), weight_type=QuantType.QInt8,
                             nodes_to_quantize=dynamic, op_types_to_quantize=list(_RECURRENT),
                             per_channel=False)
        else:
            shutil.copyfile(static_out, out_path)
    summary = onnx_precision_summary(out_path, modules)
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "preprocessing": preprocessing,
        "method": config.method,
        "per_channel": config.per_channel,
        "activation_type": "int8" if act == QuantType.QInt8 else "uint8",
        "weight_type": "int8",
        "float_nodes": exclude,
        **summary,
        "dynamic_range_nodes": [r["node"] for r in summary["layers"]
                                if r.get("mode") == "dynamic"],
        "float_recurrent_nodes": [r["node"] for r in summary["layers"]
                                  if r["op"] in _RECURRENT],
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


_PASSTHROUGH = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
#: Integer ops ONNX Runtime's quantizers write: static (QLinear*) and dynamic-range ones.
_STATIC_INT = ("QLinearConv", "QLinearMatMul", "QGemm")
_DYNAMIC_INT = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul")
_BITS = {3: "int8", 2: "int8", 5: "int16", 4: "int16"}  # onnx.TensorProto INT8/UINT8/INT16/UINT16


def _module_of(name: str, proto_modules: dict[str, str], fp32_modules: dict[str, str]) -> str:
    """The PyTorch module of node ``name``: its own scope metadata, else that of the fp32
    node it came from (ORT's optimizer renames fused nodes ``<fp32 name>_MatMul``,
    ``<fp32 name>/MatMulAddFusion_MatMul``...)."""
    if proto_modules.get(name):
        return proto_modules[name]
    if name in fp32_modules:
        return fp32_modules[name]
    best = ""
    for fp32_name in fp32_modules:
        if len(fp32_name) > len(best) and name.startswith(fp32_name) and \
                name[len(fp32_name):len(fp32_name) + 1] in ("_", "/"):
            best = fp32_name
    return fp32_modules.get(best, "")


def onnx_precision_summary(path: Path, fp32_modules: dict[str, str] | None = None
                           ) -> dict[str, Any]:
    """What executes, read from the file: per compute node (Conv, Gemm, MatMul, recurrent
    ops and ONNX Runtime's integer ops) ``int8`` / ``int16`` when its data and weight inputs
    come from DequantizeLinear of that width (through Transpose/Reshape...), ``int8`` with
    ``mode = "dynamic"`` for dynamic-range integer ops, else ``fp32``.

    ``fp32_modules``: :func:`onnx_node_modules` of the fp32 file, to name the PyTorch module of
    nodes the optimizer renamed."""
    import onnx

    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    init_type = {i.name: i.data_type for i in proto.graph.initializer}

    def width(name: str, depth: int = 0) -> str | None:
        """int8/int16 when ``name`` is a dequantized integer tensor, else None."""
        node = producer.get(name)
        if node is None or depth > 6:
            return None
        if node.op_type in _PASSTHROUGH:
            return width(node.input[0], depth + 1)
        if node.op_type != "DequantizeLinear":
            return None
        src = node.input[0]
        if src in init_type:
            return _BITS.get(init_type[src])
        q = producer.get(src)
        if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2:
            return _BITS.get(init_type.get(q.input[2], 0), "int8")
        return "int8" if q is not None and q.op_type == "QuantizeLinear" else None

    modules = onnx_node_modules(proto)
    fp32_modules = fp32_modules or {}
    layers = []
    for n in proto.graph.node:
        if n.op_type not in _QUANT_OPS + _RECURRENT + _STATIC_INT + _DYNAMIC_INT:
            continue
        mode = None
        if n.op_type in _STATIC_INT:
            precision, mode = "int8", "static"
        elif n.op_type in _DYNAMIC_INT:
            precision, mode = "int8", "dynamic"
        elif n.op_type in _RECURRENT:
            precision = "fp32"  # ONNX Runtime has no quantized GRU/RNN; LSTM becomes
            #                     DynamicQuantizeLSTM when quantized
        else:
            widths = [width(n.input[0]), width(n.input[1])] if len(n.input) > 1 else [None]
            if all(widths):
                precision, mode = ("int16" if "int16" in widths else "int8"), "static"
            elif widths[-1]:
                precision, mode = "fp32", "weights only"  # float compute on dequantized weights
            else:
                precision = "fp32"
        row = {"node": n.name, "op": n.op_type,
               "module": _module_of(n.name, modules, fp32_modules), "precision": precision}
        if mode is not None:
            row["mode"] = mode
        layers.append(row)
    int8_inits = sum(1 for i in proto.graph.initializer
                     if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {"layers": layers, "int8_initializers": int8_inits,
            "int8_layers": sum(1 for r in layers if r["precision"] != "fp32"),
            "float_layers": sum(1 for r in layers if r["precision"] == "fp32")}
