"""ATen ops litert-torch has no lowering for, written as equivalent ops it lowers (LiteRT fp32
and int8 builds).

* ``adaptive_max_pool1d`` / ``adaptive_max_pool2d`` (``nn.AdaptiveMaxPool1d(1)`` ending a
  keyword-spotting or text CNN, ``F.adaptive_max_pool2d``): the converter said "Lowering not
  found: aten.adaptive_max_pool2d.default". Where each input size is a multiple of the output
  size (a global max pool always is) and the indices are not read, the op is a max pool with
  kernel = stride = input size / output size: the same windows, the same values.

Each rewrite keeps the float function (``tests/test_op_corpus.py`` builds such a model on
every runtime and compares it with PyTorch).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = ["lower_adaptive_max_pools"]

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
