"""ATen ops litert-torch has no lowering for, written as equivalent ops it lowers (LiteRT fp32
and int8 builds).

* ``adaptive_max_pool1d`` / ``adaptive_max_pool2d`` (``nn.AdaptiveMaxPool1d(1)`` ending a
  keyword-spotting or text CNN, ``F.adaptive_max_pool2d``): the converter said "Lowering not
  found: aten.adaptive_max_pool2d.default". Where each input size is a multiple of the output
  size (a global max pool always is) and the indices are not read, the op is a max pool with
  kernel = stride = input size / output size: the same windows, the same values.

* ``topk`` over the last dimension (``torch.topk(scores, k)``): litert-torch lowers it through
  JAX to STABLEHLO_SORT, which the LiteRT interpreter has no kernel for ("Didn't find op for
  builtin opcode 'STABLEHLO_SORT'"): written as litert-torch's own ``tfl.topk_v2`` (TOPK_V2,
  int32 indices, cast to int64 as ``torch.topk`` returns them), ``largest=False`` as the top
  k of the negated input.

* ``sort`` / ``argsort`` over the last dimension: litert-torch's SORT lowering failed ("comparator
  block argument #2 should be of type 'tensor<i32>' but got 'tensor<i64>'"): written as a
  ``topk`` of every element (``largest`` = ``descending``), then as TOPK_V2 as above.

* ``bilinear`` (``nn.Bilinear``): litert-torch has no lowering for the ``_trilinear`` it
  decomposes to: written as the ``einsum`` it computes, plus the bias.

* ``one_hot`` with a given number of classes: its decomposition asserts the indices' bounds
  (``_assert_async``, no lowering): written as the indices compared with ``arange(classes)``.

* ``conv1d`` with ``padding="same"`` / ``"valid"``: litert-torch's decomposition of a 1-D
  convolution prepends a zero to the padding, and a string padding became
  ``[0, 's', 'a', 'm', 'e']`` ("Expected a value of type 'List[int]' for argument 'padding'"):
  written with its numbers (an odd total padding as a zero pad at the end first, as PyTorch
  pads it).

* ``conv_transpose`` with a padding that is neither 0 nor the "same" form (kernel - 2 x padding
  = stride), such as the ``ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)``
  that doubles a decoder's map: the converter "failed to legalize operation
  'mhlo.convolution'". Written as the transposed convolution without padding (LiteRT's
  VALID form) sliced to PyTorch's window; where the output padding reaches past that
  (output_padding > padding) the new rows hold only the bias: zero-padded, then the bias added.

* ``expand`` / ``expand_as`` read only by broadcasting arithmetic (``F.normalize(x, dim=1)``
  divides by its norm expanded to the input's shape): in an int8 graph over a 4-D map,
  litert-torch's layout pass left the expanded norm in NCHW beside the NHWC input ("'tfl.div'
  op operands don't have broadcast-compatible shapes", after "Attempting to convert non-NHWC
  compatible node to NHWC"): the expand is dropped where each reader broadcasts to the same
  shape without it.

Each rewrite keeps the float function (``tests/test_op_corpus.py`` builds such a model on
every runtime and compares it with PyTorch).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from ._fx_rewrite import copy_source, finished, inherit, replace_each

__all__ = ["drop_broadcast_expands", "lower_adaptive_max_pools", "lower_bilinear",
           "lower_one_hot", "lower_sorts", "lower_conv_string_padding",
           "lower_conv_transpose_padding", "lower_topk", "lower_unrunnable"]

_ATEN = torch.ops.aten


def _windows(node: torch.fx.Node, dims: int) -> list[int] | None:
    """Kernel sizes of the max pool equal to ``node`` (an adaptive max pool over the last
    ``dims`` dimensions); None when an input size is not a multiple of its output size."""
    x = node.args[0]
    val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    arg: Any = node.args[1] if len(node.args) > 1 else None
    if not isinstance(val, torch.Tensor) or arg is None:
        return None
    try:
        out = [int(arg)] * dims if isinstance(arg, int) else [int(o) for o in arg]
    except (TypeError, ValueError):
        return None  # a symbolic size
    sizes = [int(s) for s in val.shape[-dims:]]
    if len(out) != dims or any(o <= 0 or s % o for s, o in zip(sizes, out)):
        return None
    return [s // o for s, o in zip(sizes, out)]


def lower_adaptive_max_pools(gm: torch.fx.GraphModule) -> list[str]:
    """Write each adaptive max pool of ``gm`` whose indices are not read and whose windows are
    even as a max pool with kernel = stride = its window, in place; return the nodes
    rewritten."""
    ops: dict[Any, tuple[int, Any]] = {
        _ATEN.adaptive_max_pool1d.default: (1, _ATEN.max_pool1d.default),
        _ATEN.adaptive_max_pool2d.default: (2, _ATEN.max_pool2d.default)}
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ops:
            continue
        dims, pool = ops[node.target]
        users = list(node.users)
        index = {u: u.args[1] if len(u.args) > 1 else None for u in users}
        if not all(u.op == "call_function" and u.target is operator.getitem
                   and index[u] in (0, 1) and (index[u] == 0 or not u.users)
                   for u in users):
            continue
        kernel = _windows(node, dims)
        if kernel is None:
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(pool, (node.args[0], kernel, kernel))
        val = node.meta.get("val")
        copy_source(new, node)
        if isinstance(val, (tuple, list)) and val:
            new.meta["val"] = val[0]
        for u in users:
            if index[u] == 0:
                u.replace_all_uses_with(new)
            gm.graph.erase_node(u)
        gm.graph.erase_node(node)
        done.append(node.name)
    return finished(gm, done)


def _tfl_topk() -> Any:
    """litert-torch's ``torch.ops.tfl.topk_v2`` (registered by importing its op module), or
    None where this litert-torch has none."""
    try:
        from litert_torch.backend.experimental.torch_tfl import _ops  # noqa: F401
    except ImportError:
        return None
    return getattr(getattr(torch.ops, "tfl", None), "topk_v2", None)


def lower_topk(gm: torch.fx.GraphModule) -> list[str]:
    """Write each ``topk`` of ``gm`` over the last dimension as ``tfl.topk_v2`` (values, int32
    indices cast to int64), in place; return the nodes rewritten."""
    topk = _tfl_topk()
    if topk is None:
        return []
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != _ATEN.topk.default:
            continue
        args = list(node.args) + [None] * 5
        x, k = args[0], args[1]
        dim = node.kwargs.get("dim", args[2] if args[2] is not None else -1)
        largest = node.kwargs.get("largest", args[3] if args[3] is not None else True)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        users = list(node.users)
        if not isinstance(val, torch.Tensor) or not isinstance(k, int) \
                or int(dim) % max(val.dim(), 1) != val.dim() - 1 or not all(
                u.op == "call_function" and u.target is operator.getitem for u in users):
            continue
        graph = gm.graph
        with graph.inserting_before(node):
            src = x if largest else graph.call_function(_ATEN.neg.default, (x,))
            pair = graph.call_function(topk, (src, k))
            values = graph.call_function(operator.getitem, (pair, 0))
            if not largest:
                values = graph.call_function(_ATEN.neg.default, (values,))
            indices = graph.call_function(
                _ATEN._to_copy.default, (graph.call_function(operator.getitem, (pair, 1)),),
                {"dtype": torch.int64})
        for new in (pair, values, indices):
            copy_source(new, node)
        for u in users:
            u.replace_all_uses_with(values if u.args[1] == 0 else indices)
            graph.erase_node(u)
        graph.erase_node(node)
        done.append(node.name)
    return finished(gm, done)


def _ints(value: Any, dims: int) -> list[int]:
    """A conv argument (an int or one per spatial dimension) as ``dims`` ints."""
    return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]


def _static(node: Any) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor) or any(not isinstance(s, int) for s in val.shape):
        return None
    return val


def lower_conv_string_padding(gm: torch.fx.GraphModule) -> list[str]:
    """Write each 1-D convolution of ``gm`` whose padding is a string (``"same"``,
    ``"valid"``) with numbers, in place; return the nodes rewritten."""
    graph = gm.graph

    def build(node: Any) -> Any:
        args = list(node.args) + [None] * (7 - len(node.args))
        x, w, b, stride, padding, dilation, groups = args
        stride = node.kwargs.get("stride", 1 if stride is None else stride)
        padding = node.kwargs.get("padding", "valid" if padding is None else padding)
        dilation = node.kwargs.get("dilation", 1 if dilation is None else dilation)
        groups = node.kwargs.get("groups", 1 if groups is None else groups)
        weight = _static(w)
        if weight is None or padding not in ("same", "valid"):
            return None
        total = _ints(dilation, 1)[0] * (int(weight.shape[-1]) - 1) if padding == "same" else 0
        if total % 2:  # PyTorch pads the odd element at the end
            x = graph.call_function(_ATEN.constant_pad_nd.default, (x, [0, 1], 0.0))
            inherit(x, node)
        new = graph.call_function(_ATEN.conv1d.default, (x, w, b, _ints(stride, 1),
                                                         [total // 2], _ints(dilation, 1),
                                                         groups))
        inherit(new, node)
        return new

    return replace_each(gm, [_ATEN.conv1d.padding], build)


_CONV_T = {_ATEN.conv_transpose1d.default: 1, _ATEN.conv_transpose2d.input: 2,
           _ATEN.conv_transpose3d.input: 3}


def lower_conv_transpose_padding(gm: torch.fx.GraphModule) -> list[str]:
    """Write each strided transposed convolution of ``gm`` whose padding LiteRT's converter
    cannot legalize as the unpadded one sliced to PyTorch's window, in place; return the
    nodes rewritten."""
    graph = gm.graph

    def build(node: Any) -> Any:
        dims = _CONV_T[node.target]
        args = list(node.args) + [None] * (8 - len(node.args))
        x, w, b, stride, padding, out_pad, groups, dilation = args
        stride, padding = _ints(stride or 1, dims), _ints(padding or 0, dims)
        out_pad, dilation = _ints(out_pad or 0, dims), _ints(dilation or 1, dims)
        val, weight = _static(x), _static(w)
        if node.kwargs or val is None or weight is None:
            return None
        span = [d * (int(k) - 1) + 1 for d, k in zip(dilation, weight.shape[2:])]
        if all(s == 1 or p == 0 or k - 2 * p == s for s, p, k in zip(stride, padding, span)):
            return None  # forms the converter lowers
        size = [int(n) for n in val.shape[-dims:]]
        out = [(n - 1) * s - 2 * p + k + o
               for n, s, p, k, o in zip(size, stride, padding, span, out_pad)]
        beyond = [max(0, o - p) for o, p in zip(out_pad, padding)]
        y = graph.call_function(node.target, (x, w, None if any(beyond) else b, stride,
                                              [0] * dims, [0] * dims, groups or 1, dilation))
        inherit(y, node)
        if any(beyond):
            pads = [v for e in reversed(beyond) for v in (0, e)]
            y = graph.call_function(_ATEN.constant_pad_nd.default, (y, pads, 0.0))
            inherit(y, node)
        for i, (p, n) in enumerate(zip(padding, out)):
            y = graph.call_function(_ATEN.slice.Tensor, (y, i - dims, p, p + n))
            inherit(y, node)
        if any(beyond) and b is not None:
            bias = graph.call_function(_ATEN.view.default, (b, [1, -1] + [1] * dims))
            inherit(bias, node)
            y = graph.call_function(_ATEN.add.Tensor, (y, bias))
            inherit(y, node)
        return y

    return replace_each(gm, _CONV_T, build)


_BROADCASTING = {_ATEN.add.Tensor, _ATEN.sub.Tensor, _ATEN.mul.Tensor, _ATEN.div.Tensor}


def _shape(arg: Any) -> tuple[int, ...] | None:
    if not isinstance(arg, torch.fx.Node):
        return () if isinstance(arg, (int, float)) else None
    val = _static(arg)
    return None if val is None else tuple(val.shape)


def drop_broadcast_expands(gm: torch.fx.GraphModule) -> list[str]:
    """Remove each ``expand`` / ``expand_as`` of ``gm`` whose readers are all broadcasting
    arithmetic that gives the same shape from the unexpanded tensor, in place; return the
    nodes removed."""

    def build(node: Any) -> Any:
        src = node.args[0]
        small = _shape(src)
        if small is None or not node.users:
            return None
        for user in node.users:
            if user.op != "call_function" or user.target not in _BROADCASTING \
                    or user.kwargs or len(user.args) != 2 or user.args.count(node) != 1:
                return None
            other = _shape(user.args[1] if user.args[0] is node else user.args[0])
            out = _shape(user)
            try:
                if other is None or out is None \
                        or tuple(torch.broadcast_shapes(small, other)) != out:
                    return None
            except RuntimeError:
                return None
        return src

    return replace_each(gm, [_ATEN.expand.default, _ATEN.expand_as.default], build)


_SORTS = (_ATEN.sort.default, _ATEN.sort.stable, _ATEN.argsort.default, _ATEN.argsort.stable)


def lower_sorts(gm: torch.fx.GraphModule) -> list[str]:
    """Write each ``sort`` / ``argsort`` of ``gm`` over the last dimension of a static
    floating-point tensor as a ``topk`` of all its elements, in place; return the nodes
    rewritten."""
    graph = gm.graph

    def build(node: Any) -> Any:
        stable = node.target in (_ATEN.sort.stable, _ATEN.argsort.stable)
        pos = list(node.args[1:]) if not stable else []
        dim = node.kwargs.get("dim", pos[0] if len(pos) > 0 else -1)
        descending = node.kwargs.get("descending", pos[1] if len(pos) > 1 else False)
        val = _static(node.args[0])
        if val is None or val.dim() == 0 or not val.is_floating_point() \
                or int(dim) % val.dim() != val.dim() - 1:
            return None
        pair = graph.call_function(_ATEN.topk.default,
                                   (node.args[0], int(val.shape[-1]), -1, bool(descending)))
        inherit(pair, node)
        if node.target in (_ATEN.sort.default, _ATEN.sort.stable):
            return pair
        indices = graph.call_function(operator.getitem, (pair, 1))
        inherit(indices, node)
        return indices

    return replace_each(gm, _SORTS, build)


def lower_bilinear(gm: torch.fx.GraphModule) -> list[str]:
    """Write each ``bilinear`` of ``gm`` as ``einsum('...i,kij,...j->...k') + bias``, in
    place; return the nodes rewritten."""
    graph = gm.graph

    def build(node: Any) -> Any:
        x1, x2, weight = node.args[:3]
        bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
        new = graph.call_function(_ATEN.einsum.default, ("...i,kij,...j->...k", [x1, weight, x2]))
        inherit(new, node)
        if bias is not None:
            new = graph.call_function(_ATEN.add.Tensor, (new, bias))
            inherit(new, node)
        return new

    return replace_each(gm, [_ATEN.bilinear.default], build)


def lower_one_hot(gm: torch.fx.GraphModule) -> list[str]:
    """Write each ``one_hot`` of ``gm`` with a given number of classes as its indices
    compared with ``arange(classes)`` (int64), in place; return the nodes rewritten."""
    graph = gm.graph

    def build(node: Any) -> Any:
        classes = node.args[1] if len(node.args) > 1 else node.kwargs.get("num_classes", -1)
        if not isinstance(classes, int) or classes <= 0:
            return None  # counted from the data
        name = f"_edgekit_{node.name}_classes"
        gm.register_buffer(name, torch.arange(classes, dtype=torch.int64))
        grid = graph.get_attr(name)
        grid.meta["val"] = getattr(gm, name)
        column = graph.call_function(_ATEN.unsqueeze.default, (node.args[0], -1))
        hit = graph.call_function(_ATEN.eq.Tensor, (column, grid))
        new = graph.call_function(_ATEN._to_copy.default, (hit,), {"dtype": torch.int64})
        for made in (column, hit, new):
            copy_source(made, node)
        new.meta["val"] = node.meta.get("val")
        return new

    return replace_each(gm, [_ATEN.one_hot.default], build)


def lower_unrunnable(gm: torch.fx.GraphModule) -> list[str]:
    """Every rewrite of this module, in place; the nodes rewritten."""
    return (lower_adaptive_max_pools(gm) + lower_sorts(gm) + lower_topk(gm)
            + lower_bilinear(gm) + lower_one_hot(gm) + lower_conv_string_padding(gm)
            + lower_conv_transpose_padding(gm) + drop_broadcast_expands(gm))
