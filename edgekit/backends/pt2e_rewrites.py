"""Rewrites of an exported graph before litert's PT2E quantizer annotates it, so that the
ops it can quantize are quantized (LiteRT int8 and 16x8 builds).

* :func:`restore_sources`: litert's quantizer finds adds, concatenations, pools and the
  ReLU after an add by their *source* (``get_source_partitions``), which ``torch.export``
  records (``source_fn_stack``) only when tracing strictly. The default non-strict export
  leaves it out, so every residual ``x + y`` stayed unannotated: the converter wrote
  DEQUANTIZE -> float ADD -> QUANTIZE into "int8" files (and the MEAN after it in float).
  The source each such node came from is restored from its ATen op; not for an add whose
  output a softmax reads (attention scores plus an additive mask): one int8 range over the
  mask's -1e4 and the scores leaves the scores a few levels, and the softmax a near-uniform
  row (a trained BERT-mini's int8 held-out SQNR fell to 2.9 dB), so that sum stays float,
  as in litert's default flow.
* :func:`split_hard_activations`: TFLite has no HARD_SIGMOID op; litert-torch lowers one to a
  float ADD and MUL between a DEQUANTIZE and a QUANTIZE. XNNPACK has no int8 HARD_SWISH: each
  runs on TFLite's own kernel and splits the XNNPACK graph around it (MobileNetV3: 16
  partitions). In 8-bit builds ``hardsigmoid(x)`` is written by its definition,
  ``hardtanh(x + 3, 0, 6) * (1/6)``, with the add and the clamp annotated as one fused op
  (:func:`annotate_bounded_adds`), and ``hardswish(x)`` as ``x * hardsigmoid(x)``; the input's
  range is still cut where the activation went flat (:data:`ACTIVE`). In 16x8 builds only
  ``hardswish(x)`` becomes ``x * hardsigmoid(x)``: the converter has no int16 HARD_SWISH.

* :func:`annotate_min_max`: litert's quantizer has no annotator for ``minimum`` / ``maximum``
  (``torch.clamp`` with tensor bounds); TFLite's int8 MINIMUM / MAXIMUM take one scale for
  their inputs and output, and the converter took the one of a single input: ``maximum(x, lo)``
  with ``lo`` in ``[-1, 0]`` then ``minimum(..., lo + 1.5)`` cut every negative value to 0
  (held-out SQNR 6 dB). They are annotated as litert's ``cat`` is: one range observed over all
  inputs, shared by the output (both ops commute with clipping to a range, so nothing is lost
  but resolution).
* :func:`repair_self_shared`: litert's ``cat`` annotator gives the first input its own range
  and every other input a range shared with the first input's edge; where the first input
  comes again (Llama's rotary embedding: ``torch.cat((freqs, freqs), -1)``) that edge ends
  up shared with itself and torchao's ``prepare_pt2e`` recurses until Python's limit.
* :func:`share_layout_ranges`: transposes, slices and the other layout ops litert leaves
  unannotated share their input's range, so the converter finds one scale on each side
  (Phi's partial rotary embedding failed to convert without it); :func:`split_to_slices`
  writes a ``split`` / ``chunk`` taken apart by index as slices first (GPT-NeoX's fused
  query / key / value projection).

* :func:`annotate_avg_pools`: litert leaves ``F.avg_pool2d`` / ``nn.AvgPool2d``
  unannotated; they are annotated on their input's range, as TFLite's int8 AVERAGE_POOL_2D
  requires (GhostNetV2's attention pools the block's input beside a strided conv of it, and
  the converter refused a PAD between two scales, litert's default flow included).

* :func:`drop_no_ops`: ops that compute nothing took an int8 range of their own, and the
  converter, which removes them, refused the op after them between the two ranges: a cast to
  the dtype a tensor already has (Mamba's ``hidden_states.to(weight.dtype)`` before its
  depthwise conv: the conv's input RESHAPE) and an eval-mode dropout (XCiT's class attention
  projection before a ``cat``: the CONCATENATION). Both are dropped.

Each rewrite keeps the float function (the tests compare the graph's outputs before and
after).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._fx_rewrite import finished, replace_each

__all__ = ["ACTIVE", "annotate_avg_pools", "annotate_bounded_adds", "annotate_min_max",
           "drop_no_ops", "repair_self_shared",
           "restore_sources", "rewrite", "share_layout_ranges", "split_hard_activations",
           "split_to_slices"]

_ATEN = torch.ops.aten

#: ATen op -> the source litert's annotators look for (``pt2e_quantizer_utils``).
_SOURCES: dict[Any, Any] = {
    _ATEN.add.Tensor: torch.add,  # "add" and "add_relu" both accept torch.add
    _ATEN.mul.Tensor: torch.mul,
    _ATEN.cat.default: torch.cat,
    _ATEN.max_pool2d.default: torch.nn.functional.max_pool2d,
    _ATEN.adaptive_avg_pool2d.default: torch.nn.functional.adaptive_avg_pool2d,
    _ATEN.relu.default: torch.nn.ReLU,  # the second half of "add_relu" / "mul_relu"
}
#: Meta key on a node written here: the interval of its first input outside which its output
#: does not change (as :data:`~._ranges.ACTIVE_INTERVALS` for the activation it replaces),
#: so that edgekit's range setting still cuts the input's range there.
ACTIVE = "edgekit_active_interval"
#: Meta key on an add rewritten here whose only reader is a hardtanh: annotated as one fused op
#: (:func:`annotate_bounded_adds`).
_BOUNDED_BY = "edgekit_bounded_by"
#: Modules litert's quantizer partitions by type as a whole: their nodes keep no source.
_WHOLE_MODULES = ("torch.nn.modules.rnn.",)


def _aten(*names: str) -> tuple[Any, ...]:
    """The ATen op packets of ``names`` this torch has (``_safe_softmax`` is recent)."""
    return tuple(op for op in (getattr(_ATEN, n, None) for n in names) if op is not None)


#: Softmax ops: an add whose output one of them reads keeps no source (:func:`restore_sources`).
_SOFTMAX = _aten("_softmax", "softmax", "_safe_softmax")
#: Ops that pass their input's values on unchanged (a reshape, a cast, eval-mode dropout).
_PASS_THROUGH = _aten("view", "reshape", "_unsafe_view", "clone", "contiguous", "_to_copy",
                      "to", "dropout", "alias")


def _feeds_softmax(node: torch.fx.Node) -> bool:
    """Whether a softmax reads ``node``'s output, directly or through ops that pass its
    values on unchanged."""
    todo, seen = list(node.users), set()
    while todo:
        user = todo.pop()
        if user in seen or user.op != "call_function":
            continue
        seen.add(user)
        packet = getattr(user.target, "overloadpacket", user.target)
        if packet in _SOFTMAX:
            return True
        if packet in _PASS_THROUGH:
            todo.extend(user.users)
    return False


def _inside_whole_module(node: torch.fx.Node) -> bool:
    for _name, cls in (node.meta.get("nn_module_stack") or {}).values():
        qualified = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        if qualified.startswith(_WHOLE_MODULES):
            return True
    return False


def rewrite(gm: torch.fx.GraphModule, *, wide: bool) -> list[str]:
    """Both rewrites, in place (``QuantConfig.integer_ops``; PTQ and QAT graphs alike):
    :func:`split_hard_activations` then :func:`restore_sources` (which also marks the adds
    and multiplies the first wrote). Returns the activations rewritten."""
    rewritten = split_hard_activations(gm, wide=wide)
    restore_sources(gm)
    split_to_slices(gm)
    return rewritten


_SPLITS = _aten("split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_chunk")


def split_to_slices(gm: torch.fx.GraphModule) -> list[str]:
    """Write each ``split`` / ``chunk`` whose parts are taken by index as one ``slice`` per
    part, in place; return the splits rewritten. A split's parts come out as a tuple that
    no annotation reaches: each part took its reader's range, and the converter refused the
    SLICE between two scales (GPT-NeoX's ``qkv.chunk(3, dim=-1)``). Slices share their
    input's range (:func:`share_layout_ranges`). The values are the same."""
    import operator

    done = []
    for node in list(gm.graph.nodes):
        packet = getattr(node.target, "overloadpacket", None)
        parts = node.meta.get("val")
        if node.op != "call_function" or packet not in _SPLITS or not isinstance(
                parts, (list, tuple)) or not all(
                u.op == "call_function" and u.target is operator.getitem
                and isinstance(u.args[1], int) for u in node.users):
            continue
        x = node.args[0]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        starts = [0]
        for part in parts:
            starts.append(starts[-1] + int(part.shape[dim]))
        for user in list(node.users):
            i = int(user.args[1])
            with gm.graph.inserting_before(user):
                piece = gm.graph.call_function(_ATEN.slice.Tensor,
                                               (x, dim, starts[i], starts[i + 1]))
            _copy_meta(piece, user, None, "slice")
            user.replace_all_uses_with(piece)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        done.append(node.name)
    return finished(gm, done)


def restore_sources(gm: torch.fx.GraphModule) -> list[str]:
    """Give each node of :data:`_SOURCES`'s ops that has no ``source_fn_stack`` the source a
    strict export records (keyed by the node's own name, so that two adds are two partitions);
    return the nodes marked. Nodes inside recurrent modules are left to their module, an add
    a softmax reads (a mask's) stays float; a multiply it reads (a scale) does not."""
    marked = []
    for node in gm.graph.nodes:
        source = _SOURCES.get(node.target) if node.op == "call_function" else None
        if source is None or node.meta.get("source_fn_stack") or _inside_whole_module(node) \
                or (node.target == _ATEN.add.Tensor and _feeds_softmax(node)):
            continue
        node.meta["source_fn_stack"] = [(node.name, source)]
        marked.append(node.name)
    return marked


def _copy_meta(new: torch.fx.Node, old: torch.fx.Node, source: Any, suffix: str) -> None:
    """``old``'s module, source line and value (each new node is elementwise on the same
    shape: ``prepare_pt2e`` observes only nodes whose ``val`` is a float tensor)."""
    new.meta.update({k: old.meta[k] for k in ("nn_module_stack", "stack_trace", "val",
                                               "tensor_meta") if k in old.meta})
    if source is not None:
        new.meta["source_fn_stack"] = [(f"{old.name}_{suffix}", source)]


def _constant(gm: torch.fx.GraphModule, old: torch.fx.Node, value: float,
              suffix: str) -> torch.fx.Node:
    """A get_attr node for ``value`` as a tensor of ``old``'s rank with every dimension 1 (a
    rank-0 constant kept the converter from removing the layout transposes around the op)."""
    val = old.meta.get("val")
    rank = val.dim() if isinstance(val, torch.Tensor) else 0
    name = f"_edgekit_{old.name}_{suffix}"
    gm.register_buffer(name, torch.full((1,) * rank, value, dtype=torch.float32))
    node = gm.graph.get_attr(name)
    node.meta["val"] = getattr(gm, name)
    return node


def _hardsigmoid(gm: torch.fx.GraphModule, x: Any, old: torch.fx.Node) -> torch.fx.Node:
    """``hardtanh(x + 3, 0, 6) * (1/6)`` inserted before ``old``; returns the product."""
    graph = gm.graph
    with graph.inserting_before(old):
        three = _constant(gm, old, 3.0, "three")
        sixth = _constant(gm, old, 1.0 / 6.0, "sixth")
        shifted = graph.call_function(_ATEN.add.Tensor, (x, three))
        bounded = graph.call_function(_ATEN.hardtanh.default, (shifted, 0.0, 6.0))
        gate = graph.call_function(_ATEN.mul.Tensor, (bounded, sixth))
    _copy_meta(shifted, old, torch.add, "shift")
    _copy_meta(bounded, old, None, "bound")
    shifted.meta[_BOUNDED_BY] = bounded.name
    shifted.meta[ACTIVE] = (-3.0, 3.0)  # x outside: the gate is 0 or 1 all the same
    _copy_meta(gate, old, torch.mul, "scale")
    return gate


def split_hard_activations(gm: torch.fx.GraphModule, *, wide: bool) -> list[str]:
    """Rewrite each ``aten.hardsigmoid`` as ``hardtanh(x + 3, 0, 6) * (1/6)`` and each
    ``aten.hardswish`` as ``x * hardsigmoid(x)`` in those ops (8-bit), or each hardswish as
    ``x * hardsigmoid(x)`` with the hardsigmoid left whole (``wide``, 16x8: the converter
    verifies no int16 ADD of a constant, so the hardsigmoid stays TFLite's float lowering
    there, which the manifest's ``float_ops`` shows). Returns the nodes rewritten."""
    graph = gm.graph
    targets = {_ATEN.hardswish.default} if wide else {_ATEN.hardswish.default,
                                                       _ATEN.hardsigmoid.default}

    def build(node: Any) -> Any:
        if _inside_whole_module(node):
            return None
        x = node.args[0]
        if wide:
            out = graph.call_function(_ATEN.hardsigmoid.default, (x,))
            _copy_meta(out, node, None, "gate")
        else:
            out = _hardsigmoid(gm, x, node)
        if node.target == _ATEN.hardswish.default:
            gated = graph.call_function(_ATEN.mul.Tensor, (x, out))
            _copy_meta(gated, node, torch.mul, "gated")
            gated.meta[ACTIVE] = (-3.0, math.inf)  # below -3 the gate is 0
            out = gated
        return out

    return replace_each(gm, targets, build)


def annotate_bounded_adds(gm: torch.fx.GraphModule, qconfig: Any,
                          keep: Any = lambda node: True) -> list[str]:
    """Annotate each ``add -> hardtanh`` pair :func:`split_hard_activations` wrote as one fused
    op, as litert's ``add_relu`` does for ReLU: the add's inputs quantized, its output not,
    the hardtanh's output with a range of its own. The range is then observed after the clamp
    ([0, 6]), and TFLite fuses the clamp into the ADD; with the add's output observed instead
    (litert's ``add`` annotation, which the hardtanh then shares), a range set by the
    unclamped sum leaves the gate a coarse grid. ``keep(node)``: False for nodes to leave in
    float. Run before litert's own annotators (they skip annotated nodes)."""
    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_input_act_qspec,
        get_output_act_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    names = {n.name: n for n in gm.graph.nodes}
    done = []
    for node in gm.graph.nodes:
        bound = names.get(node.meta.get(_BOUNDED_BY, ""))
        if bound is None or not keep(node) or not keep(bound):
            continue
        spec = get_input_act_qspec(qconfig)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={a: spec for a in node.args if isinstance(a, torch.fx.Node)},
            _annotated=True)
        bound.meta["quantization_annotation"] = QuantizationAnnotation(
            output_qspec=get_output_act_qspec(qconfig), _annotated=True)
        done.append(node.name)
    return done


#: Ops whose int8 TFLite kernels take one scale for every input and the output.
_MIN_MAX = tuple(getattr(_ATEN, n).default for n in ("minimum", "maximum")) + (
    _ATEN.clamp.Tensor,)


def annotate_min_max(gm: torch.fx.GraphModule, qconfig: Any,
                     keep: Any = lambda node: True) -> list[str]:
    """Annotate each unannotated ``minimum`` / ``maximum`` / tensor-bound ``clamp`` on float
    data as litert annotates ``cat``: the first input observed, the others and the output
    sharing its observer, so one range covers every input. ``keep(node)``: False for nodes to
    leave in float. Run before litert's own annotators."""
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    done = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _MIN_MAX or not keep(node) \
                or "quantization_annotation" in node.meta:
            continue
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if len(args) < 2 or len(set(args)) != len(args) or not all(
                _float_tensor(a) for a in [*args, node]):
            continue
        shared = SharedQuantizationSpec((args[0], node))
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={args[0]: get_input_act_qspec(qconfig),
                             **{a: shared for a in args[1:]}},
            output_qspec=shared, _annotated=True)
        done.append(node.name)
    return done


_AVG_POOLS = _aten("avg_pool1d", "avg_pool2d", "avg_pool3d")


def annotate_avg_pools(gm: torch.fx.GraphModule, qconfig: Any,
                       keep: Any = lambda node: True) -> list[str]:
    """Annotate each unannotated average pool on float data as litert annotates its adaptive
    pool: the input observed (sharing its producer's range where that is annotated), the
    output on the input's range, as TFLite's int8 AVERAGE_POOL_2D requires. litert leaves
    ``F.avg_pool2d`` / ``nn.AvgPool2d`` unannotated. Where the pooled tensor had no range of
    its own while its other readers were quantized (GhostNetV2's attention pools the block's
    input beside a strided conv of it), the converter refused a PAD between the input's
    scale and the pool's output scale ("violate the same scale constraint"), litert's
    default flow included. ``keep(node)``: False for nodes to leave in float. Run before
    litert's own annotators; returns the nodes annotated."""
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    done = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "overloadpacket", None) \
                not in _AVG_POOLS or not keep(node) \
                or "quantization_annotation" in node.meta:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or not _float_tensor(src):
            continue
        ann = src.meta.get("quantization_annotation")
        in_spec = SharedQuantizationSpec(src) if ann is not None and ann.output_qspec \
            is not None else get_input_act_qspec(qconfig)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={src: in_spec}, output_qspec=SharedQuantizationSpec((src, node)),
            _annotated=True)
        done.append(node.name)
    return done


def _float_tensor(node: torch.fx.Node) -> bool:
    """Whether ``node`` produces a floating-point tensor (per its traced value)."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


def repair_self_shared(gm: torch.fx.GraphModule, qconfig: Any) -> list[str]:
    """Give every input edge whose annotation says it shares its range with itself (a
    ``cat`` that reads one node twice) the input range of ``qconfig`` instead; returns the
    names of the nodes repaired. Run after litert's annotators."""
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    done = []
    for node in gm.graph.nodes:
        ann = node.meta.get("quantization_annotation")
        if ann is None:
            continue
        for arg, spec in list(ann.input_qspec_map.items()):
            if isinstance(spec, SharedQuantizationSpec) and spec.edge_or_node == (arg, node):
                ann.input_qspec_map[arg] = get_input_act_qspec(qconfig)
                done.append(node.name)
    return done


#: Ops that move or select values without changing them (TFLite's TRANSPOSE, RESHAPE,
#: STRIDED_SLICE, GATHER, ... take one scale for input and output). litert annotates some of
#: them (``propagate_annotation``: ``view``, ``permute``, ``slice_copy``); these are the
#: others. ``index`` with a list of positions is Falcon's multi-query key and value
#: (``fused_qkv[..., [-2], :]``).
_LAYOUT = _aten("transpose", "t", "slice", "select", "unsqueeze", "squeeze", "reshape",
                "_unsafe_view", "expand", "unflatten", "narrow", "flatten", "view", "permute",
                "index", "index_select", "clone", "repeat")


def share_layout_ranges(gm: torch.fx.GraphModule, keep: Any = lambda node: True) -> list[str]:
    """Annotate each unannotated layout op (:data:`_LAYOUT`) whose input is quantized to
    share its input's range, in graph order so that chains follow (``linear -> view ->
    transpose -> slice``). Unannotated, such an op got its output range from its readers: Phi's
    partial rotary embedding slices the transposed query twice, each slice was quantized on
    its reader's range, and the converter refused the TRANSPOSE between two scales ("violate
    the same scale constraint"). Sharing loses nothing: the values are the input's. ``keep``:
    False for nodes left in float. Run after litert's annotators; returns the nodes changed."""
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    done = []
    for node in gm.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        if node.op != "call_function" or packet not in _LAYOUT or not keep(node) \
                or not _float_tensor(node) or "quantization_annotation" in node.meta:
            continue
        prev = node.args[0] if node.args else None
        ann = prev.meta.get("quantization_annotation") \
            if isinstance(prev, torch.fx.Node) else None
        if ann is None or ann.output_qspec is None:
            continue
        shared = SharedQuantizationSpec(prev)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={prev: shared}, output_qspec=shared, _annotated=True)
        done.append(node.name)
    return done


_CASTS = _aten("to", "_to_copy", "type_as")
_DROPOUTS = _aten("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")


def _identity_cast(node: torch.fx.Node) -> bool:
    """A cast whose output has its input's dtype, shape and device."""
    src = node.args[0] if node.args else None
    before = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
    after = node.meta.get("val")
    return isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) \
        and (before.dtype, before.shape, before.device) == (after.dtype, after.shape, after.device)


def _inactive_dropout(node: torch.fx.Node) -> bool:
    """A dropout with ``train=False`` or ``p=0``."""
    args = [*node.args, None, None][:3]
    p = node.kwargs.get("p", args[1])
    train = node.kwargs.get("train", args[2])
    return train is False or (isinstance(p, (int, float)) and p == 0)


def drop_no_ops(gm: torch.fx.GraphModule) -> list[str]:
    """Remove each node of ``gm`` that passes its input on unchanged, in place: a cast to the
    dtype, shape and device its input has, and a dropout with ``train=False`` or ``p=0``
    (``torch.export`` keeps every eval-mode ``nn.Dropout`` as ``aten.dropout(x, p, False)``).
    Returns the nodes removed."""

    def build(node: Any) -> Any:
        test = _identity_cast if node.target.overloadpacket in _CASTS else _inactive_dropout
        return node.args[0] if test(node) else None

    return replace_each(gm, _CASTS + _DROPOUTS, build)
