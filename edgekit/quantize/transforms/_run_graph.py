"""The module graph of one run, for models ``torch.fx`` cannot trace symbolically.

Most library models (Hugging Face ResNet, ConvNeXt, wav2vec2, BERT...) stop ``torch.fx``:
their forward iterates a proxy, branches on a shape or unpacks a config. Running the model
once on a real batch sees the path that batch takes. Each call of a leaf module (as
``torch.fx`` counts leaves: the ``torch.nn`` modules and the blocks traced whole) becomes a
``call_module`` node, and each torch function or tensor method called outside a leaf becomes
a ``call_function`` node (``__torch_function__``), its inputs tied to the nodes whose outputs
they are (by tensor identity). So a convolution whose output also feeds a residual add has
two users, as in a traced graph.

A forward that branches on a computed tensor's value (``if x.sum() > 0``) gets no graph:
another input may take another path. What the run still cannot see (a tensor read with torch
functions switched off) the caller checks by running the transformed model against the
original (:func:`edgekit.quantize.transforms.apply_transforms`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["DataBranch", "run_graph"]

#: Tensor methods that read metadata, not values: never a user of the tensor.
_METADATA = frozenset(("size", "dim", "shape", "dtype", "device", "ndim", "numel",
                       "is_floating_point", "requires_grad", "is_contiguous", "stride",
                       "__len__", "layout", "is_sparse", "names", "nelement"))


class DataBranch(Exception):
    """The forward branched on a computed tensor's value: one run's graph is not the
    model's."""


#: Reading a computed tensor as a Python truth value: the forward branches on data.
_BRANCH = frozenset(("__bool__",))


def _name(func: Callable[..., Any]) -> str:
    """A torch function's name; a property getter's (``Tensor.shape.__get__``) property."""
    name = str(getattr(func, "__name__", ""))
    if name == "__get__":
        name = str(getattr(getattr(func, "__self__", None), "__name__", name))
    return name


class _Recorder(TorchFunctionMode):
    """Records torch calls made outside leaf modules into ``graph``."""

    def __init__(self, graph: torch.fx.Graph, nodes: dict[int, torch.fx.Node],
                 keep: list[Any]) -> None:
        super().__init__()
        self.graph, self.nodes, self.keep = graph, nodes, keep
        self.depth = 0  # inside a leaf module's call
        self.branch: str | None = None  # a computed tensor read as a Python bool

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        if self.depth == 0 and name in _BRANCH and self.branch is None and any(
                isinstance(t, torch.Tensor) and id(t) in self.nodes
                for t in tree_flatten((args, kwargs))[0]):
            self.branch = name
        if self.depth == 0 and name not in _METADATA:
            self.add("call_function", func, args, kwargs, out)
        return out

    def add(self, op: str, target: Any, args: Any, kwargs: Any, out: Any) -> None:
        """A node for this call; its args are the recorded nodes of its tensor inputs (kept
        in order; other arguments are left out). A call that reads a recorded tensor into
        something else (``numpy()``, ``item()``) is a node too: a user of that tensor."""
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        inputs = [self.nodes[id(t)] for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and id(t) in self.nodes]
        if not outs and not inputs:
            return
        node = self.graph.create_node(op, target, tuple(inputs), {})
        for t in outs:
            self.nodes[id(t)] = node
            self.keep.append(t)  # ids stay unique while the run lasts


def _is_leaf(m: nn.Module, leaves: tuple[type, ...]) -> bool:
    """``torch.fx``'s default leaves (the ``torch.nn`` modules, containers excepted, which
    a run calls through or never), and ``leaves``."""
    return isinstance(m, leaves) or (
        m.__module__.startswith(("torch.nn", "torch.ao.nn"))
        and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)))


def run_graph(model: nn.Module, example: Sequence[np.ndarray | torch.Tensor],
              leaves: tuple[type, ...] = ()) -> torch.fx.Graph:
    """The graph of ``model`` (eval, no grad) run on ``example`` (one batch, in input
    order): ``placeholder`` nodes for the inputs, ``call_module`` nodes named as in
    ``model``, ``call_function`` nodes for the torch calls between them, ``output`` last.
    Raises what the model raises on ``example``, and :class:`DataBranch` where the forward branches
    on a computed tensor's value (``if x.sum() > 0``): other inputs may take another path.
    """
    graph = torch.fx.Graph()
    nodes: dict[int, torch.fx.Node] = {}
    keep: list[Any] = []
    recorder = _Recorder(graph, nodes, keep)
    inputs = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
              for x in example]
    for i, x in enumerate(inputs):
        nodes[id(x)] = graph.placeholder(f"input_{i}")
        keep.append(x)
    pending: list[tuple[Any, Any]] = []

    def before(m: nn.Module, args: Any, kwargs: Any) -> None:
        if recorder.depth == 0:
            pending.append((args, kwargs))
        recorder.depth += 1

    def after(name: str) -> Callable[..., None]:
        def fn(m: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            recorder.depth -= 1
            if recorder.depth == 0:
                call_args, call_kwargs = pending.pop()
                recorder.add("call_module", name, call_args, call_kwargs, out)
        return fn

    handles = []
    was_training = model.training
    try:
        for name, m in model.named_modules():
            if name and _is_leaf(m, leaves) and not _inside_leaf(name, model, leaves):
                handles.append(m.register_forward_pre_hook(before, with_kwargs=True))
                handles.append(m.register_forward_hook(after(name), with_kwargs=True))
        model.eval()
        with torch.no_grad(), recorder:
            result = model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if recorder.branch is not None:
        raise DataBranch("the forward branches on a computed tensor's value (a tensor read as "
                         "a Python bool outside torch.nn's modules): one run's graph need not "
                         "hold for other inputs")
    outs = [nodes[id(t)] for t in tree_flatten(result)[0]
            if isinstance(t, torch.Tensor) and id(t) in nodes]
    graph.output(tuple(outs))
    return graph


def _inside_leaf(name: str, model: nn.Module, leaves: tuple[type, ...]) -> bool:
    """Whether a module of ``name`` sits inside another leaf (its calls are that leaf's)."""
    parts = name.split(".")
    return any(_is_leaf(model.get_submodule(".".join(parts[:i])), leaves)
               for i in range(1, len(parts)))
