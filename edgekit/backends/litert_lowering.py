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

Each rewrite keeps the float function (``tests/test_op_corpus.py`` builds such a model on
every runtime and compares it with PyTorch).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = ["lower_adaptive_max_pools", "lower_topk", "lower_unrunnable"]

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
        new.meta.update({k: node.meta[k] for k in ("nn_module_stack", "stack_trace")
                         if k in node.meta})
        if isinstance(val, (tuple, list)) and val:
            new.meta["val"] = val[0]
        for u in users:
            if index[u] == 0:
                u.replace_all_uses_with(new)
            gm.graph.erase_node(u)
        gm.graph.erase_node(node)
        done.append(node.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


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
            new.meta.update({k2: node.meta[k2] for k2 in ("nn_module_stack", "stack_trace")
                             if k2 in node.meta})
        for u in users:
            u.replace_all_uses_with(values if u.args[1] == 0 else indices)
            graph.erase_node(u)
        graph.erase_node(node)
        done.append(node.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def lower_unrunnable(gm: torch.fx.GraphModule) -> list[str]:
    """Every rewrite of this module, in place; the nodes rewritten."""
    return lower_adaptive_max_pools(gm) + lower_topk(gm)
