"""Editing an exported graph in place, node by node, for the rewrites before a runtime's
converter or quantizer reads it (:mod:`.litert_lowering`, :mod:`.pt2e_rewrites`)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch

#: The metadata that names a node's layer and source line in errors and in the manifest.
SOURCE_KEYS = ("nn_module_stack", "stack_trace")


def copy_source(new: torch.fx.Node, old: torch.fx.Node) -> None:
    """``new`` reports as ``old``'s layer and source line."""
    new.meta.update({k: old.meta[k] for k in SOURCE_KEYS if k in old.meta})


def inherit(new: torch.fx.Node, old: torch.fx.Node) -> None:
    """``new`` reports as ``old``'s layer and source line, with its own value (evaluated on
    its inputs' fake tensors)."""
    from torch._guards import detect_fake_mode

    copy_source(new, old)
    args, kwargs = torch.fx.node.map_arg((new.args, new.kwargs), lambda n: n.meta.get("val"))
    mode = detect_fake_mode((args, kwargs))
    if mode is not None and callable(new.target):
        with mode:
            new.meta["val"] = new.target(*args, **kwargs)


def finished(gm: torch.fx.GraphModule, done: list[str]) -> list[str]:
    """``done`` (the nodes rewritten), with ``gm`` checked and its code regenerated when it
    holds any."""
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def replace_each(gm: torch.fx.GraphModule, targets: Collection[Any],
                 build: Callable[[torch.fx.Node], Any]) -> list[str]:
    """For each call in ``gm`` of an op in ``targets`` (an overload, or its packet), ``build``
    (with the graph inserting before the call) returns the node that computes the same value,
    or None to leave the call; the call is replaced by it and removed. Returns the names of
    the calls replaced."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or (
                node.target not in targets
                and getattr(node.target, "overloadpacket", None) not in targets):
            continue
        with gm.graph.inserting_before(node):
            new = build(node)
        if new is None:
            continue
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        done.append(node.name)
    return finished(gm, done)
