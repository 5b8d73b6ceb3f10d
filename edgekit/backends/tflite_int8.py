"""PT2E quantization (torchao.quantization.pt2e) with litert-torch's quantizer, for TFLite.

``torch.export`` -> ``prepare_pt2e`` (or ``prepare_qat_pt2e``) -> calibrate -> ``convert_pt2e``;
the converted graph module goes to ``litert_torch.convert(..., quant_config=...)``. Symmetric
per-channel int8 weights and int8 activations; the nodes of modules kept in float, and the
parameter-free nodes that only feed them, are left unannotated. The litert quantizer picks
dynamic-range int8 for ops it cannot quantize statically only when asked (``is_dynamic``), so
recurrent models fall back to float for those ops and the manifest says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..modulenames import in_modules
from ._pt2e_scales import configured, scales_below_clamp

if TYPE_CHECKING:
    from ..quantize.config import QuantConfig

__all__ = ["litert_quantizer", "pt2e_prepare", "pt2e_calibrate_convert",
           "tflite_precision_summary"]


#: Module types litert's PT2E quantizer cannot annotate (its GRU annotator expects an initial
#: hidden state input and fails with an IndexError without one): kept in float.
FLOAT_MODULE_TYPES = ("torch.nn.modules.rnn.GRU",)


def _module_paths(node: Any) -> list[tuple[str, str]]:
    """(qualified module name, type name) of every module a graph node was traced in."""
    out = []
    for value in (node.meta.get("nn_module_stack") or {}).values():
        name, tp = value
        out.append((str(name), tp if isinstance(tp, str) else
                    f"{getattr(tp, '__module__', '')}.{getattr(tp, '__qualname__', tp)}"))
    return out


def float_modules(model: torch.nn.Module) -> list[str]:
    """The modules of ``model`` kept in float because the quantizer cannot annotate them."""
    return [name for name, m in model.named_modules() if name and
            f"{type(m).__module__}.{type(m).__qualname__}" in FLOAT_MODULE_TYPES]


#: The annotators of litert's quantizer that ``layers_only`` keeps: the weight layers.
LAYER_ANNOTATORS = ("linear", "addmm", "conv_relu", "conv")


def litert_quantizer(config: QuantConfig, keep_float: Sequence[str] = (), *, qat: bool = False,
                     dynamic: bool = False, wide: bool = False,
                     layers_only: bool = False) -> Any:
    """litert-torch's PT2E quantizer with the global config on every node outside the
    ``keep_float`` modules and the modules of :data:`FLOAT_MODULE_TYPES`; ``wide``: 16-bit
    activations (TFLite's 16x8 mode, :func:`wide_qconfig`); ``layers_only``
    (``int8_scope = "layers"``): only the weight layers are annotated (their inputs, weights
    and outputs), and the adds, multiplications, concatenations, pools and norms between them
    run in float.

    The quantizer's own module-name filter does not match torch.export's ``nn_module_stack``
    keys (``L__self__proj``), so modules are matched here by their qualified names."""
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    qconfig = get_symmetric_quantization_config(
        is_per_channel=config.per_channel, is_qat=qat, is_dynamic=dynamic)
    if wide:
        from .tflite_16x8 import wide_qconfig

        qconfig = wide_qconfig(qconfig)
    q = PT2EQuantizer().set_global(configured(qconfig, config))
    keep = [str(k) for k in keep_float]

    def kept(node: Any) -> bool:
        return any(tp in FLOAT_MODULE_TYPES or in_modules(name, keep)
                   for name, tp in _module_paths(node))

    def quantized(model: torch.fx.GraphModule) -> Any:
        floats = float_nodes(model, kept)
        return lambda node: node.name not in floats

    def annotate_static(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        from litert_torch.quantize.pt2e_quantizer_utils import OP_TO_ANNOTATOR

        from .pt2e_rewrites import annotate_avg_pools, annotate_bounded_adds, annotate_min_max

        keep = quantized(model)
        if layers_only:
            for op in LAYER_ANNOTATORS:
                OP_TO_ANNOTATOR[op](model, q.global_config, keep)
            return model
        annotate_bounded_adds(model, q.global_config, keep)
        annotate_min_max(model, q.global_config, keep)
        annotate_avg_pools(model, q.global_config, keep)
        return q._annotate_all_static_patterns(model, q.global_config, keep)

    def annotate_dynamic(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return q._annotate_all_dynamic_patterns(model, q.global_config, quantized(model))

    q._annotate_for_static_quantization_config = annotate_static
    q._annotate_for_dynamic_quantization_config = annotate_dynamic
    annotate = q.annotate

    def annotate_float_only(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        from .pt2e_rewrites import repair_self_shared, share_layout_ranges

        model = annotate(model)
        repair_self_shared(model, q.global_config)
        share_layout_ranges(model, quantized(model))
        drop_integer_annotations(model)
        if wide:
            from .tflite_16x8 import floor_bounded_outputs

            floor_bounded_outputs(model)
        return model

    q.annotate = annotate_float_only
    return q


def float_nodes(gm: torch.fx.GraphModule, kept: Any) -> set[str]:
    """The names of ``gm``'s nodes left unannotated: those ``kept(node)`` says belong to a
    module kept in float, and the parameter-free nodes that only feed them
    (:func:`edgekit.backends._float_spread.spread_float`)."""
    from ._float_spread import spread_float

    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    floats = {n.name for n in nodes if kept(n)} | index_casts(gm, nodes)

    def weight(arg: Any) -> bool:  # a float constant of more than one element
        if arg.op != "get_attr":
            return False
        val: Any = gm
        for part in str(arg.target).split("."):
            val = getattr(val, part, None)
        return isinstance(val, torch.Tensor) and val.is_floating_point() and val.numel() > 1

    def check(n: Any) -> bool:  # a call with no value (``_assert_tensor_metadata``)
        return n.op == "call_function" and n.meta.get("val") is None

    free = {n.name for n in nodes if not any(weight(a) for a in n.all_input_nodes)}
    users = {n.name: [u.name for u in n.users if not check(u)] for n in nodes}
    return floats | set(spread_float(floats, users, free))


def _integer(gm: torch.fx.GraphModule, node: Any) -> bool:
    val = getattr(node, "meta", {}).get("val")
    if val is None and getattr(node, "op", "") == "get_attr":  # a constant folded by export
        val = gm
        for part in str(node.target).split("."):
            val = getattr(val, part, None)
    return isinstance(val, torch.Tensor) and not val.is_floating_point()


def index_casts(gm: torch.fx.GraphModule, nodes: Sequence[Any]) -> set[str]:
    """The nodes that turn float data into integers or booleans (``.long()``, ``>``): OPT computes
    its position ids as ``(cumsum(mask) * mask - 1).long()`` in float. Rounded onto an int8
    grid, ``3.0`` comes back ``2.98`` and truncates to ``2``: the wrong embedding row. Kept
    in float, with the parameter-free arithmetic that only feeds them (:func:`float_nodes`),
    the integers are exact."""
    def floating(n: Any) -> bool:
        val = getattr(n, "meta", {}).get("val")
        return isinstance(val, torch.Tensor) and val.is_floating_point()

    return {n.name for n in nodes if _integer(gm, n) and getattr(n, "meta", {}).get("val")
            is not None and any(floating(a) for a in n.all_input_nodes)}


def drop_integer_annotations(gm: torch.fx.GraphModule) -> list[str]:
    """Remove the quantization annotations that would put an observer on an integer tensor
    (index arithmetic such as ``arange`` grids: a range observer fails on int64, and an
    integer needs no quantization); return the nodes changed."""
    changed = []
    for node in gm.graph.nodes:
        ann = node.meta.get("quantization_annotation")
        if ann is None:
            continue
        bad_inputs = [n for n in ann.input_qspec_map if _integer(gm, n)]
        for n in bad_inputs:
            del ann.input_qspec_map[n]
        if ann.output_qspec is not None and _integer(gm, node):
            ann.output_qspec = None
            bad_inputs.append(node)
        if bad_inputs:
            changed.append(node.name)
    return changed


def pt2e_prepare(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], quantizer: Any,
                 *, qat: bool = False, wide: bool = False,
                 rewrite: bool = True) -> torch.fx.GraphModule:
    """The exported graph with its observers; ``rewrite`` (``QuantConfig.integer_ops``):
    rewritten first so that litert's quantizer annotates what it can (:mod:`.pt2e_rewrites`;
    ``wide``: the 16x8 form)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    from . import pt2e_rewrites
    from .litert_lowering import lower_unrunnable

    gm = torch.export.export(model, tuple(example_inputs)).module()
    lowered = lower_unrunnable(gm)  # no lowering in litert-torch, or no kernel in LiteRT
    lowered += pt2e_rewrites.drop_no_ops(gm)  # identity casts, eval-mode dropouts
    rewritten = pt2e_rewrites.rewrite(gm, wide=wide) if rewrite else []
    unshared = unshare_call_sites(gm)
    prepared = prepare_qat_pt2e(gm, quantizer) if qat else prepare_pt2e(gm, quantizer)
    prepared.edgekit_unshared_modules = unshared  # for the manifest
    prepared.edgekit_rewritten = rewritten
    prepared.edgekit_lowered = lowered
    return prepared


def split_shared_dequantize(gm: torch.fx.GraphModule) -> int:
    """Give each reader of a dequantize node read by several ops its own copy, in place;
    return the copies made. torchao's ``convert_pt2e`` copies a dequantize only for readers
    that are quantized; several float readers of one int8 tensor (five activations of one
    conv summed, ``F.normalize``'s norm and division) share one, which litert-torch's layout
    pass then refuses ("Attempting to convert non-NHWC compatible node to NHWC:
    dequantize_per_tensor_1"). The copies compute the same values."""
    made = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or "dequantize_per_tensor" not in str(node.target) \
                or len(node.users) < 2:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_before(user):
                copy = gm.graph.node_copy(node)
            user.replace_input_with(node, copy)
            made += 1
    if made:
        gm.graph.lint()
        gm.recompile()
    return made


def unshare_call_sites(gm: torch.fx.GraphModule) -> list[str]:
    """Give each call of a module called more than once its own module name in the graph
    (``pool`` called twice: ``pool`` and ``pool.call1``); return the names of such modules.

    litert's quantizer groups a module's nodes by its name (``get_source_partitions``): the
    nodes of two calls of one MaxPool2d become one partition, whose input and output belong
    to different calls, and ``prepare_pt2e`` fails on an observer that was never inserted.
    torch.export marks repeated calls in the ``nn_module_stack`` keys (``L__self__pool@1``);
    the rewrite copies that call index into the module name, so each call site is annotated
    on its own (as a deep copy of the module would be) while the weights stay shared."""
    reused: set[str] = set()
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        renamed = {}
        for key, (name, tp) in stack.items():
            call = str(key).rpartition("@")[2] if "@" in str(key) else ""
            if call.isdigit() and int(call) > 0 and not str(name).endswith(f".call{call}"):
                reused.add(str(name))
                name = f"{name}.call{call}"
            renamed[key] = (name, tp)
        node.meta["nn_module_stack"] = renamed
    return sorted(reused)


def pt2e_calibrate_convert(prepared: torch.fx.GraphModule,
                           batches: Sequence[Sequence[np.ndarray]],
                           input_names: Sequence[str] = (), *,
                           config: QuantConfig | None = None) -> torch.fx.GraphModule:
    """Run the calibration batches through the observers and convert. With
    ``config.range_method`` other than ``"runtime"``, each activation observer's range is
    chosen by :mod:`edgekit.backends._ranges` from the values it saw and fixed
    (``FixedQParamsObserver``); the record is the result's ``edgekit_ranges``, and the
    observers with a scale under the quantizer's clamp its ``edgekit_scales_below_clamp``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from ._calibration import calibration_failure

    names = list(input_names) or [f"input{i}" for i in range(len(batches[0]) if batches else 0)]
    method = config.range_method if config is not None else "runtime"
    stats = _watch_observers(prepared, len(batches)) if method != "runtime" and batches else {}
    try:
        with torch.no_grad():
            for b in batches:
                try:
                    prepared(*(torch.from_numpy(np.asarray(a)) for a in b))
                except Exception as exc:
                    raise calibration_failure("LiteRT (PT2E observers)", batches, names,
                                              exc) from exc
    finally:
        for _st, _w, handle, _names, _active in stats.values():
            handle.remove()
    record = None
    if stats:
        assert config is not None
        record = _fix_observer_ranges(prepared, stats, config)
    below = scales_below_clamp(prepared)
    # fold_quantize=False keeps quantize ops on float weights, which litert-torch lowers.
    gm = convert_pt2e(prepared, fold_quantize=False)
    gm.edgekit_ranges = record
    gm.edgekit_scales_below_clamp = below
    return gm


def _activation_observers(prepared: torch.fx.GraphModule) -> dict[str, Any]:
    """The per-tensor affine activation observers of a prepared graph (not those of weights,
    which observe a constant)."""
    from torchao.quantization.pt2e.observer import ObserverBase

    out = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        mod = prepared.get_submodule(str(node.target))
        if not isinstance(mod, ObserverBase) or getattr(mod, "qscheme", None) \
                != torch.per_tensor_affine or getattr(mod, "dtype", None) != torch.int8:
            continue
        src = node.args[0] if node.args else None
        if getattr(src, "op", "") == "get_attr":
            continue
        out[str(node.target)] = mod
    return out


def _constant(gm: torch.fx.GraphModule, node: Any, depth: int = 0) -> torch.Tensor | None:
    """The constant tensor behind ``node`` (a get_attr, through its weight observer)."""
    if getattr(node, "op", "") == "get_attr":
        val: Any = gm
        for part in str(node.target).split("."):
            val = getattr(val, part, None)
        return val if isinstance(val, torch.Tensor) else None
    if getattr(node, "op", "") == "call_module" and node.args and depth < 3:
        return _constant(gm, node.args[0], depth + 1)
    return None


def _consumer_weights(gm: torch.fx.GraphModule, node: Any) -> tuple[int | None, Any]:
    """(channel axis, per-channel weight energy) of the conv / linear layers reading an
    observer's output (each input channel's ``sum W[:, c]**2``, normalised to mean 1; other
    readers count 1 per channel); (None, None) when they do not agree."""
    parts: list[tuple[int, np.ndarray] | None] = []
    for user in node.users:
        target = str(getattr(user, "target", ""))
        w = _constant(gm, user.args[1]) if len(user.args) > 1 and user.args[0] is node else None
        energy = None
        if w is not None and "conv" in target and w.ndim >= 3:
            groups = int(user.args[6]) if len(user.args) > 6 else 1
            arr = w.detach().double().numpy() ** 2
            o, ig = arr.shape[0], arr.shape[1]
            if o % groups == 0:
                per = arr.reshape(o, ig, -1).sum(-1).reshape(groups, o // groups, ig).sum(1)
                energy = (1, per.reshape(-1))
        elif w is not None and "linear" in target and w.ndim == 2:
            energy = (-1, (w.detach().double().numpy() ** 2).sum(0))
        parts.append(energy)
    found = [p for p in parts if p is not None]
    if not found or len({a for a, _ in found}) > 1 or len({len(v) for _, v in found}) > 1:
        return None, None
    size = len(found[0][1])
    vecs = [v / v.mean() if v.mean() > 0 else np.ones(size) for _, v in found]
    vecs += [np.ones(size)] * (len(parts) - len(found))
    return found[0][0], np.mean(vecs, axis=0)


def _consumer_interval(node: Any) -> tuple[float, float] | None:
    """The interval outside which the readers of an observer's output see no difference:
    every reader an elementwise activation flat outside an interval
    (:data:`~edgekit.backends._ranges.ACTIVE_INTERVALS`; a conv's output read by a Hardswish
    alone: values below -3 all give 0), the union of theirs; None otherwise."""
    from ._ranges import ACTIVE_INTERVALS
    from .pt2e_rewrites import ACTIVE

    lows, highs = [], []
    for user in node.users:
        if getattr(user, "op", "") != "call_function" or not user.args \
                or user.args[0] is not node:
            return None
        name = str(user.target).split(".")[-2 if str(user.target).count(".") else -1]
        name = name.rstrip("_")
        if ACTIVE in user.meta:  # a hardswish / hardsigmoid written out (pt2e_rewrites)
            lo, hi = user.meta[ACTIVE]
        elif name == "hardtanh":
            args = list(user.args) + [None, None]
            lo = float(args[1]) if args[1] is not None else -1.0
            hi = float(args[2]) if args[2] is not None else 1.0
        elif name in ACTIVE_INTERVALS:
            lo, hi = ACTIVE_INTERVALS[name]
        else:
            return None
        lows.append(lo)
        highs.append(hi)
    if not lows:
        return None
    return min(lows), max(highs)


def _watch_observers(prepared: torch.fx.GraphModule, n_batches: int) -> dict[str, Any]:
    """Per activation observer module (an observer shared by several tensors, e.g. a permute
    sharing its input's qparams, once, under its first name): (statistics of what it sees,
    the consumers' channel weights, the hook's handle, every name it goes by)."""
    from ._ranges import TensorStats

    stats = {}
    nodes = {str(n.target): n for n in prepared.graph.nodes if n.op == "call_module"}
    groups: dict[int, list[str]] = {}
    observers = _activation_observers(prepared)
    for name, mod in observers.items():
        groups.setdefault(id(mod), []).append(name)
    for i, names in enumerate(groups.values()):
        name, mod = names[0], observers[names[0]]
        axis, weights = _consumer_weights(prepared, nodes[name]) if len(names) == 1 \
            else (None, None)
        active = _consumer_interval(nodes[name]) if len(names) == 1 else None
        st = TensorStats(axis, cap=32768, per_update=max(32768 // max(n_batches, 1), 256),
                         seed=i)

        def hook(_m: Any, args: Any, st: Any = st) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                st.update(args[0].detach().numpy())

        stats[name] = (st, weights, mod.register_forward_pre_hook(hook), names, active)
    return stats


def _fix_observer_ranges(prepared: torch.fx.GraphModule, stats: dict[str, Any],
                         config: QuantConfig) -> dict[str, Any]:
    """Replace each watched observer by a ``FixedQParamsObserver`` holding the chosen range
    (the int8 affine grid, -128..127); ``"auto"`` compares the candidates by the error at the
    consuming conv / linear layers' outputs in the diagonal approximation (each channel's
    error weighted by the energy of the weights that read it)."""
    from torchao.quantization.pt2e.observer import FixedQParamsObserver

    from ._ranges import GRIDS, _scale_zero, choose_range, range_summary

    grid = GRIDS["int8"]
    percentile = float(config.extra.get("percentile", 99.99))
    choices = {}
    for name, (st, weights, _handle, names, active) in stats.items():
        if not st.seen:
            continue
        c = choose_range(st, config.range_method, grid, weights, percentile=percentile,
                         active=active)
        scale, zero = _scale_zero(c.low, c.high, grid)
        fixed = FixedQParamsObserver(scale=scale, zero_point=int(zero), dtype=torch.int8,
                                     qscheme=torch.per_tensor_affine, quant_min=grid.qmin,
                                     quant_max=grid.qmax)
        for alias in names:
            setattr(prepared, alias, fixed)
        choices[name] = c
    record = range_summary(config.range_method, choices)
    record["criterion"] = ("the consuming layers' outputs, diagonal approximation "
                           "(channel error x weight energy)")
    return record


#: TFLite compute ops whose precision the summary reports (data input 0, weight input 1).
_COMPUTE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV",
            "CONV_3D", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN",
            "BIDIRECTIONAL_SEQUENCE_LSTM", "LSTM", "SVDF", "EMBEDDING_LOOKUP")


def _tflite_module(*tensor_names: str) -> str:
    """The PyTorch module named in litert-torch tensor names
    (``__main__.Net/torch.nn.modules.linear.Linear_head;1`` -> ``head``; a fused name holds
    several ``;``-separated locations); '' when none names one. Each segment after the root's
    is ``<qualified class name>_<attribute name>``; the qualified name's package path may hold
    underscores itself (``transformers.models.bert.modeling_bert.BertLayer_0``), so the
    attribute is read after the class name, the last dotted part."""
    for tensor_name in tensor_names:
        for part in tensor_name.split(";"):
            names = []
            for seg in part.split("/")[1:]:
                m = _SEGMENT.match(seg.rsplit(".", 1)[-1])  # <class name>_<module name>
                if m is None:
                    break
                names.append(m.group(1))
            if names:
                return ".".join(names)
    return ""


_SEGMENT = re.compile(r"^_*[A-Za-z0-9]+_(.+)$")


def tflite_precision_summary(interp: Any) -> dict[str, Any]:
    """What executes, read from the interpreter's ops and tensor types: per compute op ``int8``
    (int8 data and weights), ``int16`` (16-bit data, int8 weights: 16x8), ``int8`` with
    ``mode = "dynamic"`` (int8 weights, float data: dynamic range), else ``fp32``; and
    ``float_ops``, the other ops that compute on float data (an add or a gate left between a
    DEQUANTIZE and a QUANTIZE), per op type."""
    tensors = {t["index"]: t for t in interp.get_tensor_details()}

    def kind(i: int) -> str:
        return np.dtype(tensors[i]["dtype"]).name if i >= 0 and i in tensors else ""

    layers = []
    float_ops: dict[str, int] = {}
    for op in interp._get_ops_details():
        name = op["op_name"]
        if name not in _COMPUTE:
            # DELEGATE: a delegate's node (XNNPACK), listed beside the ops it runs
            if name not in ("QUANTIZE", "DEQUANTIZE", "DELEGATE") and any(
                    kind(i) == "float32" for i in op["outputs"]):
                float_ops[name] = float_ops.get(name, 0) + 1
            continue
        ins = [i for i in op["inputs"]]
        data = kind(ins[0]) if ins else ""
        weight = kind(ins[1]) if len(ins) > 1 else ""
        if name == "EMBEDDING_LOOKUP":  # input 0 is the ids, input 1 the table
            data, weight = weight, weight
        mode = None
        if data in ("int8", "uint8") and weight in ("int8", "uint8"):
            precision, mode = "int8", "static"
        elif data == "int16" and weight == "int8":
            precision, mode = "int16", "static"
        elif data == "float32" and weight == "int8":
            precision, mode = "int8", "dynamic"
        else:
            precision = "fp32"
        named = [str(tensors[i]["name"]) for i in [*ins[1:], *op["outputs"][:1]]
                 if i in tensors]  # weight and bias names, then the output's (often fused)
        row = {"node": f"{name}#{op['index']}", "op": name, "module": _tflite_module(*named),
               "precision": precision}
        if mode is not None:
            row["mode"] = mode
        layers.append(row)
    return {"layers": layers, "int8_layers": sum(1 for r in layers if r["precision"] != "fp32"),
            "float_layers": sum(1 for r in layers if r["precision"] == "fp32"),
            "float_ops": dict(sorted(float_ops.items()))}
