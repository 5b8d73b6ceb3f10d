"""Which graph nodes a layer kept in float takes with it.

Keeping a module in float removes the rounding of its weights and its own int8 op, but not
the rounding of its input when that input comes from ops outside any kept module: a model's
``forward`` that writes ``fuse(torch.cat([a, b, a * b]))`` leaves the ``cat`` and the ``mul``
in int8 with ``fuse`` in float, so the tensor ``fuse`` reads is still rounded, onto one
scale for three tensors of different ranges. :func:`spread_float` adds to the float set
every parameter-free node (no weight of its own) whose every consumer is float, repeated
until nothing changes: the data movement and arithmetic that only feed float layers run in
float too. A node with a weight (a convolution, a linear layer, an embedding) is never added;
a node whose output is a model output, or that feeds an int8 node, stays as the quantizer
configures it.

Each backend maps its graph onto ``consumers`` / ``parameter_free`` (PT2E FX nodes for
LiteRT, ONNX nodes for ONNX Runtime, OpenVINO ops for NNCF).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["spread_float"]


def spread_float(float_nodes: Iterable[str], consumers: Mapping[str, Iterable[str]],
                 parameter_free: Iterable[str]) -> list[str]:
    """The nodes to add to ``float_nodes``: every ``parameter_free`` node whose consumers
    (``consumers[node]``: the nodes reading its outputs; a model output is named by a node
    not in ``parameter_free`` nor ``float_nodes``, e.g. ``"<output>"``) are all float,
    transitively. Sorted by name; empty when ``float_nodes`` is empty.

    Example::

        spread_float({"fuse"}, {"mul": ["cat"], "cat": ["fuse"], "proj": ["mul", "cat"]},
                     {"mul", "cat"})  # ['cat', 'mul']
    """
    floats = set(float_nodes)
    if not floats:
        return []
    free = set(parameter_free) - floats
    users = {n: list(consumers.get(n, ())) for n in free}
    added: set[str] = set()
    changed = True
    while changed:
        changed = False
        for n in sorted(free - added):
            if users[n] and all(u in floats or u in added for u in users[n]):
                added.add(n)
                changed = True
    return sorted(added)
