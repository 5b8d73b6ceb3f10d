"""fp32 ONNX -> QDQ int8 ONNX with ``onnxruntime.quantization.quantize_static``.

Per-channel int8 weights, 8-bit activations (uint8 by default: ONNX Runtime's x86 kernels are
faster with it, see BASELINE.md), calibration method min-max / percentile / entropy. Layers
kept in float are PyTorch module names, mapped to ONNX nodes through the exporter's
``pkg.torch.onnx.name_scopes`` metadata; the weight-free nodes that only feed them stay float
too. Recurrent ops (LSTM/GRU), which static QDQ leaves in
float, get dynamic-range int8 weights (``quantize_dynamic`` on those ops only).
"""

from __future__ import annotations

import ast
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..modulenames import in_modules
from .float_ops import onnxruntime_float_ops
from .onnx_active_ranges import active_intervals
from .onnx_probe import augmented_session

if TYPE_CHECKING:
    from ..quantize.config import QuantConfig

__all__ = ["quantize_onnx", "onnx_node_modules", "onnx_precision_summary"]

_QUANT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_RECURRENT = ("LSTM", "GRU", "RNN")


def onnx_node_modules(proto: Any) -> dict[str, str]:
    """ONNX node name -> the PyTorch module name it came from ('' when unknown): the dynamo
    exporter's ``name_scopes`` metadata, else the TorchScript exporter's scoped node name
    (``/enc/block.0/attn/q/MatMul`` -> ``enc.block.0.attn.q``)."""
    out = {}
    for node in proto.graph.node:
        path = node.name.split("/")
        scope = ".".join(path[1:-1]) if node.name.startswith("/") and len(path) > 2 else ""
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.name_scopes":
                try:
                    # Each entry is a full module path ('', '0', '0.0', 'conv2d'): the
                    # last module's path is the one before the op name.
                    parts = ast.literal_eval(p.value)
                    scope = str(parts[-2]) if len(parts) >= 2 else ""
                except (ValueError, SyntaxError):
                    scope = ""
        if any(p.key == "pkg.onnxscript.rewriter.rule_name" and "BatchNorm" in p.value
               for p in node.metadata_props):
            # A convolution with a batch norm folded in carries the norm's metadata; its
            # weight keeps the convolution's name (``stem.conv.weight``).
            scope = _weight_module(node) or scope
        out[node.name] = scope
    return out


def _weight_module(node: Any) -> str:
    """The module whose ``.weight`` a node reads as input 1 (a quantized graph names it
    ``stem.conv.weight_DequantizeLinear_Output``), '' when the name is no module's weight."""
    from ..explain.tensors import base_tensor_name

    if len(node.input) < 2:
        return ""
    name = base_tensor_name(node.input[1])
    return name[:-len(".weight")] if name.endswith(".weight") else ""


def onnx_float_spread(proto: Any, exclude: Sequence[str]) -> list[str]:
    """The nodes that only feed the ``exclude`` nodes and have no weight of their own (no
    floating-point initializer or constant of more than one element): left in float with
    them (:func:`edgekit.backends._float_spread.spread_float`)."""
    from onnx import numpy_helper

    from ._float_spread import spread_float

    if not exclude:
        return []
    weights = {i.name for i in proto.graph.initializer
               if numpy_helper.to_array(i).dtype.kind == "f" and np.prod(i.dims) > 1}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in (1, 10, 11, 16) and \
                        np.prod(a.t.dims) > 1:
                    weights.update(node.output)
    readers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node.name)
    for out in proto.graph.output:
        readers.setdefault(out.name, []).append("<output>")
    free = {n.name for n in proto.graph.node
            if n.op_type != "Constant" and not any(t in weights for t in n.input)}
    consumers = {n.name: [r for t in n.output for r in readers.get(t, [])]
                 for n in proto.graph.node}
    return spread_float(exclude, consumers, free)


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
    exclude = [n for n, m in modules.items() if keep_float and m and in_modules(m, keep_float)]
    exclude += onnx_float_spread(proto, exclude)
    act = QuantType.QInt8 if config.activation_type == "int8" else QuantType.QUInt8
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.method]
    extra: dict[str, Any] = {"CalibMovingAverage": False}
    if config.method == "percentile":
        extra["CalibPercentile"] = float(config.extra.get("percentile", 99.99))
    recurrent = [n.name for n in proto.graph.node if n.op_type in _RECURRENT]
    lstm = {n.name for n in proto.graph.node if n.op_type == "LSTM"}
    op_types = list(_QUANT_OPS) + [
        "Relu", "Clip", "MaxPool", "GlobalAveragePool", "AveragePool", "Add", "Mul", "Concat",
        "Reshape", "Transpose", "Flatten", "Sigmoid", "Softmax", "Squeeze", "Unsqueeze",
        "Gather", "Resize", "Split", "Where"]
    scope = int8_scope_decision(config)
    if scope["applied"] == "layers":
        op_types = list(_QUANT_OPS)
        extra["OpTypesToExcludeOutputQuantization"] = ["Gemm", "MatMul"]
    ranges: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(fp32_path)
        pre = Path(tmp) / "pre.onnx"
        src, preprocessing = _preprocess(src, pre, Path(tmp))
        rewritten: dict[str, int] = {}
        # 8-bit builds only: ONNX Runtime's CPU kernels run 16-bit activations in float anyway,
        # and a written-out mean's Flatten would take the 16-bit choice off the tensor it names
        if config.integer_ops and not config.activations_16bit:
            from .onnx_rewrites import rewrite_for_integer_ops

            graph = onnx.load(str(src))
            rewritten = rewrite_for_integer_ops(graph, set(exclude))
            if rewritten:
                src = Path(tmp) / "integer_ops.onnx"
                onnx.save(graph, str(src))
        static_out = Path(tmp) / "static.onnx"

        # with int8_scope "layers" no softmax input is quantized: nothing to narrow
        softmax = _softmax_overrides(src, input_names, batches, config, exclude) \
            if scope["applied"] == "all" else {}
        softmax_float = None
        reduce = reduce_range_decision(config)
        per_tensor = stacked_matmul_weights(onnx.load(str(src))) if config.per_channel else []

        def static(out: Path, overrides: dict[str, Any] | None) -> None:
            overrides = _with_softmax(overrides, softmax)
            if per_tensor:
                overrides = {**(overrides or {}), **{w: [{}] for w in per_tensor}}
            options = dict(extra, **({"TensorQuantOverrides": overrides} if overrides else {}))
            try:
                quantize_static(
                    str(src), str(out), _Reader(input_names, batches),
                    quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                    activation_type=act, weight_type=QuantType.QInt8, calibrate_method=method,
                    nodes_to_exclude=exclude, op_types_to_quantize=op_types,
                    reduce_range=reduce["applied"], extra_options=options,
                )
            except Exception as exc:
                from ._calibration import calibration_failure

                raise calibration_failure("ONNX Runtime (quantize_static)", batches,
                                          input_names, exc) from exc

        if any(e["keep_float"] for e in softmax.values()):
            # narrowed or float: the one whose outputs are closer to fp32 (runtime ranges)
            base, narrowed = list(exclude), _narrowed(softmax)
            floated, softmax = softmax, narrowed
            static(Path(tmp) / "softmax-narrow.onnx", None)
            softmax = floated
            exclude += sorted({n for e in softmax.values() if e["keep_float"]
                               for n in e["float_nodes"]} - set(exclude))
            static(Path(tmp) / "softmax-float.onnx", None)
            narrow_db, float_db = _outputs_sqnr(
                [Path(tmp) / "softmax-narrow.onnx", Path(tmp) / "softmax-float.onnx"], src,
                input_names, batches[:int(config.extra_number("range_batches", 8))])
            softmax_float = {"sqnr_narrow_db": round(narrow_db, 2),
                             "sqnr_float_db": round(float_db, 2),
                             "kept": "float" if float_db > narrow_db else "narrow"}
            if softmax_float["kept"] == "narrow":
                softmax, exclude[:] = narrowed, base
        if config.range_method == "runtime" and not config.activations_16bit:
            if softmax_float is not None:  # the kept one is this build
                shutil.copyfile(Path(tmp) / f"softmax-{softmax_float['kept']}.onnx", static_out)
            else:
                static(static_out, None)
        else:
            plan = plan_ranges(src, input_names=input_names, batches=batches, config=config,
                               op_types=op_types, exclude=exclude, modules=modules,
                               act_grid="int8" if act == QuantType.QInt8 else "uint8")
            ranges = plan.record(config.range_method)
            want = config.activations_16bit
            if want == "auto":
                wide, ranges["activations_16bit_choice"] = _choose_16bit(
                    plan, static, static_out, Path(tmp), input_names, batches, config)
            else:
                wide = plan.ranked_16bit() if want == "all" else plan.layers_16bit(want) \
                    if isinstance(want, (list, tuple)) else plan.ranked_16bit()[:int(want)]
                static(static_out, plan.overrides(wide))
            if config.range_method == "auto":
                ranges["guard"] = _guard(src, static_out, lambda out: static(
                    out, plan.overrides(wide, minmax=True)), input_names, batches,
                    int(config.extra_number("range_batches", 8)))
                ranges["applied"] = ranges["guard"]["kept"] == "auto"
                if not ranges["applied"]:  # the file holds min-max ranges: say so
                    ranges["auto_chosen"] = ranges["chosen"]
                    ranges["chosen"] = {"minmax": ranges["tensors"]}
            ranges["requested_16bit"] = sorted(wide)
            ranges["per_tensor_16bit"] = {t: plan.wide_choice(t).to_json() for t in sorted(wide)}
        corrected = None
        if config.int8_bias_correction:
            corrected = _correct_biases(src, static_out, input_names, batches)
        # ONNX Runtime's dynamic quantizer rewrites LSTM only (DynamicQuantizeLSTM); GRU and
        # RNN stay float, and the summary below reads that back from the file.
        dynamic = [n for n in recurrent if n not in exclude and not in_modules(
            modules.get(n, ""), keep_float) and n in lstm]
        if dynamic:
            from onnxruntime.quantization import quantize_dynamic

            # its Gemm -> MatMul rewrite transposes a float Gemm's weight (a head kept in
            # float) but leaves the weight's recorded shape, which its own shape inference
            # then rejects: initializers carry their shape, so drop their value_info
            _drop_initializer_value_info(static_out)
            quantize_dynamic(str(static_out), str(out_path), weight_type=QuantType.QInt8,
                             nodes_to_quantize=dynamic, op_types_to_quantize=list(_RECURRENT),
                             per_channel=False, reduce_range=reduce["applied"])
        else:
            shutil.copyfile(static_out, out_path)
    summary = onnx_precision_summary(out_path, modules, feeds=batches[0] if batches else None)
    if ranges is not None:
        ranges["activations_16bit"] = activations_16bit(out_path)  # read from the file
        if ranges["activations_16bit"]:
            ranges["cpu_execution"] = {
                **cpu_kernels(out_path),
                "note": "ONNX Runtime's CPU EP has no 16-bit kernels: the layers around a "
                "16-bit activation compute in float between its 16-bit Q/DQ pair (the "
                "16-bit grid's accuracy, float speed)"}
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "ranges": ranges,
        "softmax_ranges": softmax,
        # Softmax inputs the grid simulation would keep float: both built, the closer kept
        "softmax_float_choice": softmax_float,
        "reduce_range": reduce,
        "int8_scope": scope,
        "int8_bias_correction": corrected,
        "preprocessing": preprocessing,
        # ops written out in ops the quantizer quantizes (integer_ops), per op type
        "rewritten_ops": rewritten,
        "method": config.method,
        "per_channel": config.per_channel,
        "per_tensor_weights": per_tensor,  # constant MatMul inputs not 2-D (see above)
        "activation_type": "int8" if act == QuantType.QInt8 else "uint8",
        "weight_type": "int8",
        "float_nodes": exclude,
        **summary,
        "dynamic_range_nodes": [r["node"] for r in summary["layers"]
                                if r.get("mode") == "dynamic"],
        "float_recurrent_nodes": [r["node"] for r in summary["layers"]
                                  if r["op"] in _RECURRENT],
    }


def int8_scope_decision(config: QuantConfig) -> dict[str, Any]:
    """Which tensors get Q/DQ pairs (``config.int8_scope``): ``"layers"`` or ``"all"``, and
    why."""
    if config.int8_scope != "auto":
        return {"setting": config.int8_scope, "applied": config.int8_scope}
    # edgekit's int8 search turns "auto" into the two sources it compares ("all", "layers")
    # for a model with a layer-norm module; what reaches a build as "auto" is built on every op
    return {"setting": "auto", "applied": "all",
            "why": "no layer-norm module: every op (with one, both scopes are compared)"}


def reduce_range_decision(config: QuantConfig) -> dict[str, Any]:
    """Whether the weights go on 7 bits (``config.reduce_range``), and why."""
    from .x86_saturation import u8s8_saturates

    saturates, why = u8s8_saturates()
    if config.reduce_range != "auto":
        return {"applied": config.reduce_range == "on", "setting": config.reduce_range,
                "machine": why}
    return {"applied": saturates, "setting": "auto", "machine": why}


def _softmax_overrides(src: Path, input_names: Sequence[str],
                       batches: Sequence[Sequence[np.ndarray]], config: QuantConfig,
                       exclude: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``config.softmax_ranges``: the Softmax inputs whose calibrated range an attention mask
    (or another far tail) stretches, with the range the softmax needs
    (:mod:`edgekit.backends.onnx_softmax_ranges`); Softmax nodes kept in float excluded."""
    if not config.softmax_ranges:
        return {}
    from .onnx_softmax_ranges import softmax_input_ranges

    mode = "narrow" if config.softmax_ranges == "narrow" else "auto"
    return softmax_input_ranges(src, input_names, batches, skip=exclude, mode=mode)


def _narrowed(softmax: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The softmax entries with every input quantized on its row range (none kept float)."""
    return {t: {k: v for k, v in e.items() if k != "float_nodes"} | {"keep_float": False}
            for t, e in softmax.items()}


def _with_softmax(overrides: dict[str, Any] | None, softmax: dict[str, dict[str, Any]]
                  ) -> dict[str, Any] | None:
    """``overrides`` with each softmax tensor's ``rmin``/``rmax`` replaced by its row range
    (other keys, a 16-bit type, kept); tensors kept in float get none."""
    if not softmax:
        return overrides
    out = dict(overrides or {})
    for t, e in softmax.items():
        if e["keep_float"]:
            out.pop(t, None)
            continue
        first = dict(out[t][0]) if out.get(t) else {}
        first.update(rmin=np.float32(e["rmin"]), rmax=np.float32(e["rmax"]))
        out[t] = [first, *out.get(t, [])[1:]]
    return out


def stacked_matmul_weights(proto: Any) -> list[str]:
    """The constant second inputs of MatMul that are not 2-D (a weight stacked per batch, as
    ``torch.bmm`` with an expanded parameter exports once constants are folded): ONNX
    Runtime's quantizer would scale them per slice of axis 1, the axis MatMul sums over, which
    its own QLinearMatMul then refuses to run ("weight zero point must be a scalar, 1D tensor
    of size 1, or last to second dimension is 1"), so they are quantized per tensor."""
    dims = {i.name: len(i.dims) for i in proto.graph.initializer}
    return sorted({n.input[1] for n in proto.graph.node if n.op_type == "MatMul"
                   and len(n.input) > 1 and dims.get(n.input[1], 2) != 2})


def _drop_initializer_value_info(path: Path) -> None:
    """Rewrite ``path`` without the value_info entries of its initializers."""
    import onnx

    proto = onnx.load(str(path))
    weights = {i.name for i in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in weights]
    if len(kept) != len(proto.graph.value_info):
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept)
        onnx.save(proto, str(path))


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


def onnx_precision_summary(path: Path, fp32_modules: dict[str, str] | None = None, *,
                           feeds: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """What executes, read from the file: per compute node (Conv, Gemm, MatMul, recurrent
    ops and ONNX Runtime's integer ops) ``int8`` / ``int16`` when its data and weight inputs
    come from DequantizeLinear of that width (through Transpose/Reshape...), ``int8`` with
    ``mode = "dynamic"`` for dynamic-range integer ops, else ``fp32``; and ``float_ops``, the
    other ops that ran on float data in one ONNX Runtime run of the file, per op type
    (:func:`edgekit.backends.float_ops.onnxruntime_float_ops`; None when the run failed).

    ``fp32_modules``: :func:`onnx_node_modules` of the fp32 file, to name the PyTorch module of
    nodes the optimizer renamed. ``feeds``: the inputs of that run, in model order (default:
    zeros of the file's input shapes)."""
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
    try:
        float_ops: dict[str, int] | None = onnxruntime_float_ops(path, feeds)
    except Exception:  # a file the runtime cannot run here (verification says why)
        float_ops = None
    return {"layers": layers, "int8_initializers": int8_inits,
            "int8_layers": sum(1 for r in layers if r["precision"] != "fp32"),
            "float_layers": sum(1 for r in layers if r["precision"] == "fp32"),
            "float_ops": float_ops}


# -- per-tensor ranges and 16-bit activations (edgekit.backends._ranges) ----------------------

#: Compute ops whose data input a 16-bit activation makes an int16 layer.
_COMPUTE_INPUT = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _consumer_weights(proto: Any, tensors: Sequence[str]
                      ) -> tuple[dict[str, int | None], dict[str, np.ndarray]]:
    """Per tensor: the channel axis of its values and each channel's weight, the energy of
    the consumer weights it multiplies (``sum W[:, c]**2`` over Conv / Gemm / MatMul
    consumers with constant weights; 1 for other consumers), normalised to mean 1."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    axes: dict[str, int | None] = {}
    weights: dict[str, np.ndarray] = {}
    for t in tensors:
        parts: list[tuple[int, np.ndarray] | None] = []
        for node, i in consumers.get(t, []):
            w = inits.get(node.input[1]) if i == 0 and len(node.input) > 1 else None
            attrs = {a.name: a for a in node.attribute}
            energy = None
            if w is not None and node.op_type in ("Conv", "Gemm", "MatMul"):
                arr = numpy_helper.to_array(w).astype(np.float64) ** 2
                if node.op_type == "Conv" and arr.ndim >= 3:
                    g = int(attrs["group"].i) if "group" in attrs else 1
                    o, ig = arr.shape[0], arr.shape[1]
                    if o % g == 0:
                        per = arr.reshape(o, ig, -1).sum(-1).reshape(g, o // g, ig).sum(1)
                        energy = (1, per.reshape(-1))
                elif node.op_type == "Gemm" and arr.ndim == 2 and not (
                        "transA" in attrs and attrs["transA"].i):
                    trans_b = "transB" in attrs and attrs["transB"].i
                    energy = (-1, arr.sum(0) if trans_b else arr.sum(1))
                elif node.op_type == "MatMul" and arr.ndim == 2:
                    energy = (-1, arr.sum(1))
            parts.append(energy)
        found = [p for p in parts if p is not None]
        if not found or len({a for a, _ in found}) > 1 or len({len(v) for _, v in found}) > 1:
            axes[t] = None
            continue
        axis, size = found[0][0], len(found[0][1])
        vecs = [v / v.mean() if v.mean() > 0 else np.ones(size) for _, v in found]
        vecs += [np.ones(size)] * (len(parts) - len(found))
        axes[t], weights[t] = axis, np.mean(vecs, axis=0)
    return axes, weights


def _activation_tensors(proto: Any, op_types: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Float activations in and out of the nodes quantize_static may quantize."""
    import onnx

    inits = {i.name for i in proto.graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
    out: list[str] = []
    skip = set(exclude)
    for n in proto.graph.node:
        if n.op_type not in op_types or n.name in skip:
            continue
        for name in [*n.input, *n.output]:
            if name and name not in inits and types.get(name) == onnx.TensorProto.FLOAT \
                    and name not in out:
                out.append(name)
    return out


def _consumer_fn(node: Any, inits: dict[str, Any]) -> Any:
    """``x -> y`` for a Conv (1-D/2-D) / Gemm / MatMul node with constant weights, in torch;
    None for any other consumer."""
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    w = torch.from_numpy(numpy_helper.to_array(inits[node.input[1]]).astype(np.float32))
    b = None
    if len(node.input) > 2 and node.input[2] in inits:
        b = torch.from_numpy(numpy_helper.to_array(inits[node.input[2]]).astype(np.float32))
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv" and w.ndim in (3, 4):
        auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if auto_pad not in ("NOTSET", "VALID"):
            return None
        dims = w.ndim - 2
        stride = list(attrs["strides"].ints) if "strides" in attrs else [1] * dims
        dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * dims
        pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * dims)
        group = int(attrs["group"].i) if "group" in attrs else 1
        pad = [p for d in reversed(range(dims)) for p in (pads[d], pads[d + dims])]
        conv = F.conv1d if dims == 1 else F.conv2d

        def run_conv(x: np.ndarray) -> np.ndarray:
            t = F.pad(torch.from_numpy(x), pad)
            return conv(t, w, b, stride, 0, dil, group).numpy()  # type: ignore[no-any-return]
        return run_conv
    if node.op_type == "Gemm" and w.ndim == 2 and not ("transA" in attrs and attrs["transA"].i):
        wt = w.T if "transB" in attrs and attrs["transB"].i else w
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0

        def run_gemm(x: np.ndarray) -> np.ndarray:
            y = alpha * (torch.from_numpy(x) @ wt)
            return (y + beta * b if b is not None else y).numpy()  # type: ignore[no-any-return]
        return run_gemm
    if node.op_type == "MatMul" and w.ndim == 2:
        return lambda x: (torch.from_numpy(x) @ w).numpy()
    return None


def _output_errors(sess: Any, proto: Any, input_names: Sequence[str],
                   batches: Sequence[Sequence[np.ndarray]], stats: dict[str, Any],
                   grid: Any, percentile: float, weights: dict[str, np.ndarray]
                   ) -> dict[str, dict[str, float]]:
    """Per tensor, each candidate range's error at its consumers' outputs
    (:class:`~edgekit.backends._ranges.OutputError`), from a second run over the batches."""
    import torch

    from ._ranges import OutputError, candidate_ranges

    inits = {i.name: i for i in proto.graph.initializer}
    fns: dict[str, list[Any]] = {t: [] for t in stats}
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            if name in fns:
                fn = _consumer_fn(n, inits) if i == 0 else None
                fns[name].append(fn if fn is not None else (lambda x: x))
    percentiles = sorted({99.99, 99.999, percentile})
    acc = {t: OutputError(candidate_ranges(s, grid, percentiles, weights.get(t)), grid, fns[t])
           for t, s in stats.items() if s.seen}
    broken: set[str] = set()
    wanted = list(acc)
    with torch.no_grad():
        for b in batches:
            for t, v in zip(wanted, sess.run(wanted, dict(zip(input_names, b)))):
                if t in broken:
                    continue
                try:
                    acc[t].update(v)
                except (RuntimeError, ValueError):  # a consumer that does not fit: diagonal
                    broken.add(t)
    return {t: a.relative() for t, a in acc.items() if t not in broken}


#: Ops whose output ONNX Runtime quantizes with its input's parameters (their own range is
#: not used): not searched.
_SAME_AS_INPUT = ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather",
                  "Split", "Resize")


def _fake_quant_session(proto: Any, tensors: Sequence[str], grid: Any) -> tuple[Any, list[str]]:
    """The fp32 model with every tensor of ``tensors`` through QuantizeLinear ->
    DequantizeLinear whose scale and zero point are graph inputs ``<t>::scale`` /
    ``<t>::zero`` (changed between runs); returns (session, the outputs to compare: a
    quantized graph output stands for itself)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    zero_type = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}[grid.name]
    renamed = {t: f"{t}::fq" for t in tensors}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    nodes = []
    for t in tensors:
        g.input.append(helper.make_tensor_value_info(f"{t}::scale", TensorProto.FLOAT, []))
        g.input.append(helper.make_tensor_value_info(f"{t}::zero", zero_type, []))
        nodes += [helper.make_node("QuantizeLinear", [t, f"{t}::scale", f"{t}::zero"],
                                   [f"{t}::q"], name=f"{t}::Q"),
                  helper.make_node("DequantizeLinear", [f"{t}::q", f"{t}::scale", f"{t}::zero"],
                                   [renamed[t]], name=f"{t}::DQ")]
    g.node.extend(nodes)
    outputs = [renamed.get(o.name, o.name) for o in g.output]
    for o in list(g.output):
        if o.name in renamed:
            g.output.append(helper.make_tensor_value_info(renamed[o.name], TensorProto.FLOAT,
                                                          None))
    # Topological order: the Q/DQ pairs go right after their tensor's producer.
    order, produced = [], {i.name for i in g.input} | {i.name for i in g.initializer}
    pending = list(g.node)
    while pending:
        rest = []
        for n in pending:
            if all((not x) or x in produced for x in n.input):
                order.append(n)
                produced.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            order += rest
            break
        pending = rest
    del g.node[:]
    g.node.extend(order)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, outputs


#: The model-output search keeps min-max for a tensor unless another candidate lowers the
#: output error by this fraction (smaller gains are calibration-sample noise).
_SEARCH_MARGIN = 0.02


def search_output_errors(src: Path, input_names: Sequence[str],
                         batches: Sequence[Sequence[np.ndarray]], stats: dict[str, Any],
                         grid: Any, percentile: float, skip: set[str],
                         weights: dict[str, np.ndarray]
                         ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Each tensor's candidates scored by the error of the *model's outputs* with every
    activation fake-quantized (the others at their current choice): one greedy sweep in
    graph order from min-max everywhere, each tensor keeping its best candidate. Returns
    (tensor -> candidate -> relative output error at its step, summed over the outputs and
    averaged over the batches; a record)."""
    import onnx

    from ._ranges import _scale_zero, candidate_ranges

    proto = onnx.load(str(src))
    order = [t for n in proto.graph.node for t in [*n.input, *n.output]]
    first: dict[str, int] = {}
    for i, t in enumerate(order):
        first.setdefault(t, i)
    inputs = [i.name for i in proto.graph.input]
    tensors = sorted((t for t in stats if stats[t].seen and t not in skip),
                     key=lambda t: (-1 if t in inputs else first.get(t, 0)))
    sess, outs = _fake_quant_session(proto, tensors, grid)
    ref_sess, _, _ = augmented_session(src, [])
    refs = [ref_sess.run(None, dict(zip(input_names, b))) for b in batches]
    percentiles = sorted({99.99, 99.999, percentile})
    cands = {t: candidate_ranges(stats[t], grid, percentiles, weights.get(t)) for t in tensors}
    zdt = np.uint8 if grid.name == "uint8" else np.int8

    def params(r: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        scale, zero = _scale_zero(r[0], r[1], grid)
        return np.array(scale, np.float32), np.array(zero, dtype=zdt)

    state = {t: cands[t]["minmax"] for t in tensors}

    def error() -> float:
        feeds_q = {}
        for t in tensors:
            sc, zp = params(state[t])
            feeds_q[f"{t}::scale"], feeds_q[f"{t}::zero"] = sc, zp
        total = 0.0
        for b, ref in zip(batches, refs):
            got = sess.run(outs, {**dict(zip(input_names, b)), **feeds_q})
            for r, o in zip(ref, got):
                r64 = np.asarray(r, np.float64)
                total += float(np.sum((np.asarray(o, np.float64) - r64) ** 2)) / max(
                    float(np.sum(r64 ** 2)), 1e-30)
        return total / max(len(batches), 1)

    start = error()
    result: dict[str, dict[str, float]] = {}
    runs = 1
    for t in tensors:
        errs: dict[str, float] = {}
        seen: dict[tuple[float, float], float] = {}
        for name, r in cands[t].items():
            key = (round(r[0], 12), round(r[1], 12))
            if key not in seen:
                state[t] = r
                seen[key] = error()
                runs += 1
            errs[name] = seen[key]
        best = min(errs, key=lambda k: errs[k])
        if errs[best] > (1 - _SEARCH_MARGIN) * errs["minmax"]:  # a switch must beat noise
            best = "minmax"
        state[t] = cands[t][best]
        result[t] = errs
    end = error()
    return result, {"criterion": "model outputs, all activations fake-quantized, one greedy "
                    "sweep from min-max", "batches": len(batches), "runs": runs,
                    "relative_error_minmax": start, "relative_error_chosen": end}


def collect_activation_stats(model_path: Path, input_names: Sequence[str],
                             batches: Sequence[Sequence[np.ndarray]], tensors: Sequence[str],
                             axes: dict[str, int | None], *, cap: int = 32768) -> dict[str, Any]:
    """:class:`~edgekit.backends._ranges.TensorStats` of ``tensors``, from the fp32 model run
    (one thread) on the calibration batches with those tensors as extra outputs."""
    from ._ranges import TensorStats

    sess, _, wanted = augmented_session(model_path, tensors)
    per = max(cap // max(len(batches), 1), 256)
    stats = {t: TensorStats(axes.get(t), cap=cap, per_update=per, seed=i)
             for i, t in enumerate(wanted)}
    for b in batches:
        values = sess.run(wanted, dict(zip(input_names, b)))
        for t, v in zip(wanted, values):
            stats[t].update(v)
    return stats


class _Timed:
    """An ONNX Runtime session behind the :class:`~edgekit.backends.base.Session` call."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self._s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._names = list(names)
        self.backend = "onnxruntime"
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.info: dict[str, Any] = {}

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        return list(self._s.run(None, dict(zip(self._names, feeds))))


def _median_ms(paths: dict[str, Path], names: Sequence[str], feed: Sequence[np.ndarray],
               runs: int) -> dict[str, float]:
    from ..measure.timing import time_interleaved

    sessions = {k: _Timed(p, names) for k, p in paths.items()}
    stats = time_interleaved(sessions, {k: list(feed) for k in paths}, warmup=5, runs=runs)
    return {k: round(s.median_ms, 4) for k, s in stats.items()}


@dataclass
class RangePlan:
    """Per-tensor ranges chosen for one ONNX model (:func:`plan_ranges`): the statistics, the
    8-bit choice per tensor, the Relu/Clip inputs that take their output's range, and the
    16-bit candidates (data inputs of compute nodes -> their PyTorch modules)."""

    method: str
    percentile: float
    grid8: Any
    wide: Any
    stats: dict[str, Any]
    choices: dict[str, Any]
    weights: dict[str, np.ndarray]
    mirror: dict[str, str]
    data_inputs: dict[str, list[str]]
    own_ranges: bool = True
    search: dict[str, Any] = field(default_factory=dict)
    _wide_choices: dict[str, Any] = field(default_factory=dict)

    def ranked_16bit(self) -> list[str]:
        """16-bit candidates, most sensitive (lowest 8-bit SQNR) first."""
        from ._ranges import rank_for_16bit

        return rank_for_16bit({t: self.choices[t] for t in self.data_inputs})

    def layers_16bit(self, layers: Sequence[str]) -> list[str]:
        """The data inputs of the compute nodes of ``layers`` (PyTorch module names)."""
        from ..errors import UsageError

        missing = [w for w in layers if not any(in_modules(m, (w,))
                                               for ms in self.data_inputs.values() for m in ms)]
        if missing:
            known = sorted({m for ms in self.data_inputs.values() for m in ms if m})
            raise UsageError(
                f"quantization activations_16bit names layer(s) {missing} with no quantized "
                "Conv/Gemm/MatMul node in the ONNX model",
                hint="name layers that are quantized (not kept in float); candidates: "
                f"{', '.join(known) or 'none'}")
        return [t for t, ms in self.data_inputs.items()
                if any(in_modules(m, layers) for m in ms)]

    def wide_choice(self, t: str) -> Any:
        from ._ranges import choose_range

        if t not in self._wide_choices:
            self._wide_choices[t] = choose_range(self.stats[t], self.method, self.wide,
                                                 self.weights.get(t),
                                                 percentile=self.percentile)
        return self._wide_choices[t]

    def overrides(self, wide: Sequence[str] = (), *, minmax: bool = False
                  ) -> dict[str, list[dict[str, Any]]]:
        """``TensorQuantOverrides``: every tensor's ``rmin``/``rmax`` (unless the runtime's
        calibrator sets them: ``own_ranges`` false); the ``wide`` tensors (and their Relu/Clip
        twins) 16-bit with their 16-bit range. ``minmax``: the 8-bit tensors take their
        min-max range instead of the chosen one (what ONNX Runtime's calibrator gives)."""
        from onnxruntime.quantization import QuantType

        qwide = QuantType.QInt16 if self.wide.name == "int16" else QuantType.QUInt16
        back = {v: k for k, v in self.mirror.items()}
        wide_set = set(wide)
        out: dict[str, list[dict[str, Any]]] = {}
        for t, c in self.choices.items():
            key = next((k for k in (t, self.mirror.get(t), back.get(t)) if k in wide_set), None)
            if key is not None:
                w = self.wide_choice(key)
                out[t] = [{"rmin": np.float32(w.low), "rmax": np.float32(w.high),
                           "quant_type": qwide}]
            elif minmax:
                st = self.stats[self.mirror.get(t, t)]
                out[t] = [{"rmin": np.float32(st.low), "rmax": np.float32(st.high)}]
            elif self.own_ranges:
                out[t] = [{"rmin": np.float32(c.low), "rmax": np.float32(c.high)}]
        return out

    def record(self, range_method: str) -> dict[str, Any]:
        """The manifest's ``ranges`` entry (the per-tensor choices, 16-bit ranking)."""
        from ._ranges import range_summary

        rec = range_summary(range_method, {t: c for t, c in self.choices.items()
                                           if t not in self.mirror})
        rec["relu_inputs_mirrored"] = len(self.mirror)
        if self.search:
            rec["search"] = self.search
        rec["sensitivity_16bit"] = [
            {"tensor": t, "layers": sorted({m for m in self.data_inputs[t] if m}),
             "sqnr8_db": round(self.choices[t].sqnr_db, 2)} for t in self.ranked_16bit()]
        return rec


def plan_ranges(src: Path, *, input_names: Sequence[str],
                batches: Sequence[Sequence[np.ndarray]], config: QuantConfig,
                op_types: Sequence[str], exclude: Sequence[str], modules: dict[str, str],
                act_grid: str) -> RangePlan:
    """Collect the activations' statistics on ``src`` (the preprocessed fp32 model) and
    choose each tensor's range by ``config.range_method`` (``"runtime"`` with 16-bit
    activations: min-max) on the activation grid."""
    import onnx

    from ._ranges import GRIDS, choose_range

    proto = onnx.load(str(src))
    here = onnx_node_modules(proto)
    tensors = _activation_tensors(proto, op_types, exclude)
    axes, weights = _consumer_weights(proto, tensors)
    stats = collect_activation_stats(src, input_names, batches, tensors, axes)
    active = active_intervals(proto, tensors)
    # what the search scores: each tensor cut to the interval its readers tell apart, the
    # cut ``choose_range`` makes too (so the candidates scored are the ones chosen from)
    cut_stats = {t: s.within(*active[t]) if t in active and s.seen else s
                 for t, s in stats.items()}
    method = config.range_method if config.range_method != "runtime" else "minmax"
    percentile = float(config.extra.get("percentile", 99.99))
    grid8 = GRIDS[act_grid]
    outputs: dict[str, dict[str, float]] = {}
    search: dict[str, Any] = {}
    uses: dict[str, int] = {}
    for n in proto.graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    relu_inputs = {n.input[0] for n in proto.graph.node if n.op_type in ("Relu", "Clip")
                   and uses.get(n.input[0]) == 1}
    same = {o for n in proto.graph.node if n.op_type in _SAME_AS_INPUT for o in n.output}
    if method == "auto":  # each candidate scored by the model's output error
        limit = int(config.extra_number("range_batches", 8))
        try:
            outputs, search = search_output_errors(
                src, input_names, batches[:limit], cut_stats, grid8, percentile,
                skip=relu_inputs | same, weights=weights)
        except Exception as exc:  # noqa: BLE001 - fall back to the consuming layers' error
            sess, aug, _ = augmented_session(src, list(stats))
            outputs = _output_errors(sess, aug, input_names, batches[:limit], cut_stats,
                                     grid8, percentile, weights)
            search = {"criterion": "consuming layers' outputs (the model-output search "
                      f"failed: {type(exc).__name__}: {str(exc)[:200]})"}
    choices = {t: choose_range(s, method, grid8, weights.get(t), percentile=percentile,
                               output_errors=outputs.get(t),
                               margin=_SEARCH_MARGIN if search.get("runs") else 0.0,
                               active=active.get(t))
               for t, s in stats.items() if s.seen}
    # ORT gives a Relu / Clip input the range of its output (the activation folds into the
    # Q/DQ pair): that input takes its output's choice, so the override given is the one used.
    mirror = {n.input[0]: n.output[0] for n in proto.graph.node
              if n.op_type in ("Relu", "Clip") and uses.get(n.input[0]) == 1
              and n.output[0] in choices and n.input[0] in choices}
    for a, b in mirror.items():
        choices[a] = choices[b]
    skip = set(exclude)
    data_inputs: dict[str, list[str]] = {}
    for n in proto.graph.node:
        if n.op_type in _COMPUTE_INPUT and n.input and n.input[0] in choices \
                and n.name not in skip:
            data_inputs.setdefault(n.input[0], []).append(_module_of(n.name, here, modules))
    return RangePlan(method, percentile, grid8, GRIDS["int16" if act_grid == "int8" else "uint16"],
                     stats, choices, weights, mirror, data_inputs,
                     own_ranges=config.range_method != "runtime", search=search)


def _choose_16bit(plan: RangePlan, static: Any, base_out: Path, tmp: Path,
                  input_names: Sequence[str], batches: Sequence[Sequence[np.ndarray]],
                  config: QuantConfig) -> tuple[list[str], dict[str, Any]]:
    """``activations_16bit = "auto"``: the data inputs of compute layers whose 8-bit SQNR
    is under ``extra["sqnr_16bit_db"]`` (30 dB), most sensitive first, at most
    ``extra["max_16bit"]`` (4), go 16-bit if the model then runs at most
    ``extra["max_16bit_slowdown"]`` (1.10) x the all-8-bit model's median latency (one
    thread, interleaved, the first calibration batch); else half as many, down to one.
    Writes the chosen model to ``base_out``; returns (16-bit tensors, the record)."""
    threshold = float(config.extra_number("sqnr_16bit_db", 30.0))
    most = int(config.extra_number("max_16bit", 4))
    limit = float(config.extra_number("max_16bit_slowdown", 1.10))
    ranked = [t for t in plan.ranked_16bit() if plan.choices[t].sqnr_db < threshold][:most]
    record: dict[str, Any] = {"candidates": ranked, "sqnr_threshold_db": threshold,
                              "max_slowdown": limit, "trials": []}
    static(base_out, plan.overrides([]))
    k = len(ranked)
    while k >= 1:
        trial = tmp / f"wide{k}.onnx"
        static(trial, plan.overrides(ranked[:k]))
        ms = _median_ms({"int8": base_out, "mixed": trial}, input_names, batches[0],
                        runs=max(5, min(int(config.latency_runs), 50)))
        ratio = ms["mixed"] / ms["int8"] if ms["int8"] > 0 else float("inf")
        record["trials"].append({"tensors_16bit": k, "int8_ms": ms["int8"],
                                 "mixed_ms": ms["mixed"], "ratio": round(ratio, 3)})
        if ratio <= limit:
            shutil.copyfile(trial, base_out)
            record["chosen"] = ranked[:k]
            return ranked[:k], record
        k //= 2
    record["chosen"] = []
    record["reason"] = ("no tensor under the SQNR threshold" if not ranked else
                        "every 16-bit choice was slower than the limit")
    return [], record


def _outputs_sqnr(models: Sequence[Path], ref: Path, input_names: Sequence[str],
                  batches: Sequence[Sequence[np.ndarray]]) -> list[float]:
    """SQNR (dB) of each of ``models``' outputs against ``ref``'s over ``batches`` (all
    outputs), the reference run once per batch for all of them."""
    import onnxruntime as ort

    from ..measure.metrics import power_ratio_db

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(m), so, providers=["CPUExecutionProvider"])
                for m in models]
    b = ort.InferenceSession(str(ref), so, providers=["CPUExecutionProvider"])
    sig = 0.0
    err = [0.0] * len(sessions)
    for batch in batches:
        feed = dict(zip(input_names, batch))
        refs = [np.asarray(r, np.float64) for r in b.run(None, feed)]
        sig += float(sum(np.sum(r ** 2) for r in refs))
        for i, a in enumerate(sessions):
            err[i] += float(sum(np.sum((np.asarray(x, np.float64) - r) ** 2)
                                for x, r in zip(a.run(None, feed), refs)))
    return [power_ratio_db(sig, e) for e in err]


def _correct_biases(src: Path, model: Path, input_names: Sequence[str],
                    batches: Sequence[Sequence[np.ndarray]]) -> dict[str, Any]:
    """Bias correction on ``model``'s own arithmetic (:mod:`.onnx_bias_correction`), fitted on
    the first three quarters of the batches and kept (written over ``model``) only if the
    outputs on the last quarter are closer to fp32 than without it."""
    from .onnx_bias_correction import correct_qdq_biases

    held = max(len(batches) // 4, 1) if len(batches) > 1 else 0
    fit, check = list(batches[:len(batches) - held]), list(batches[len(batches) - held:])
    out = model.with_name("bias-corrected.onnx")
    t0 = time.perf_counter()
    record = correct_qdq_biases(model, src, out, input_names=input_names, batches=fit)
    check = check or fit
    before, after = _outputs_sqnr([model, out], src, input_names, check)
    record.update(fit_batches=len(fit), held_out_batches=len(check) if held else 0,
                  sqnr_before_db=round(before, 2), sqnr_after_db=round(after, 2),
                  applied=bool(record["corrected"]) and after > before,
                  seconds=round(time.perf_counter() - t0, 1))
    if record["applied"]:
        shutil.copyfile(out, model)
    return record


def _guard(src: Path, chosen: Path, build_minmax: Any, input_names: Sequence[str],
           batches: Sequence[Sequence[np.ndarray]], searched: int) -> dict[str, Any]:
    """``range_method = "auto"`` keeps its model only if its outputs are closer to fp32 than
    those of the min-max build (the same 16-bit tensors, every 8-bit one at its min-max range:
    ONNX Runtime's default) on the calibration batches the search did not use (all of them
    when it used all); else the min-max model replaces it at ``chosen``."""
    held = list(batches[searched:]) or list(batches)
    minmax = chosen.with_name("guard-minmax.onnx")
    build_minmax(minmax)
    auto_db, minmax_db = _outputs_sqnr([chosen, minmax], src, input_names, held)
    kept = "auto" if auto_db >= minmax_db else "minmax"
    if kept != "auto":
        shutil.copyfile(minmax, chosen)
    return {"batches": len(held), "held_out": len(batches) > searched,
            "sqnr_auto_db": round(auto_db, 2), "sqnr_minmax_db": round(minmax_db, 2),
            "kept": kept}


def cpu_kernels(path: Path) -> dict[str, Any]:
    """What ONNX Runtime's CPU EP makes of a QDQ file (its graph after the extended
    optimizations, which fuse Q/DQ around a node into an integer kernel): the integer compute
    ops (QLinearConv, QGemm, ...) and the compute nodes left in float between Q/DQ pairs
    (16-bit activations: ORT has no 16-bit CPU kernels)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.intra_op_num_threads = 1
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        proto = onnx.load(so.optimized_model_filepath)
    integer = [n.op_type for n in proto.graph.node
               if n.op_type in _STATIC_INT + _DYNAMIC_INT or n.op_type.startswith("QLinear")]
    floats = [n.name for n in proto.graph.node if n.op_type in _QUANT_OPS]
    return {"integer_ops": len(integer), "float_compute_nodes": floats}


def activations_16bit(path: Path) -> list[str]:
    """The activations a QDQ file quantizes to 16 bits (QuantizeLinear with an int16 or
    uint16 zero point), read from the file."""
    import onnx

    proto = onnx.load(str(path))
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    wide = (onnx.TensorProto.INT16, onnx.TensorProto.UINT16)
    return sorted(n.input[0] for n in proto.graph.node
                  if n.op_type == "QuantizeLinear" and len(n.input) > 2
                  and inits.get(n.input[2]) in wide)
