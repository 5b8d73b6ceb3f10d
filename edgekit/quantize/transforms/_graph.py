"""The module graph the transforms read: ``torch.fx`` tracing with whole-block leaves, and the
small pattern helpers they share (which module a node calls, its single consumer, activations
that commute with a positive per-channel scale)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["trace", "from_run", "module_of", "only_user", "users", "set_module", "run_batches",
           "PASS_THROUGH", "WEIGHTED"]

#: Blocks traced as one node (their insides are not plain module calls fx can follow).
_LEAVES: tuple[type, ...] = (nn.MultiheadAttention, nn.TransformerEncoderLayer,
                             nn.TransformerDecoderLayer, nn.LSTM, nn.GRU, nn.RNN)
#: Modules that do nothing at inference (or after BN folding).
PASS_THROUGH: tuple[type, ...] = (nn.Identity, nn.Dropout)
WEIGHTED: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, example: Sequence[np.ndarray] | None = None
          ) -> tuple[torch.fx.Graph | None, str | None]:
    """The model's fx graph (modules by their names in ``model``), or None and why not.
    Where ``torch.fx`` cannot trace it, with ``example`` (one batch): the graph of a run on
    it (:func:`edgekit.quantize.transforms._run_graph.run_graph`; ``why`` then says so:
    :func:`from_run`)."""
    try:
        return _Tracer().trace(model), None
    except Exception as exc:  # noqa: BLE001 - data-dependent control flow etc.: no transform
        first = (str(exc).splitlines() or [""])[0]
        why = f"torch.fx could not trace the model ({type(exc).__name__}: {first[:160]})"
    if example is None:
        return None, why
    from ._run_graph import DataBranch, run_graph

    try:
        return run_graph(model, example, _LEAVES), f"{_RUN}{why}; the graph of one run is used"
    except DataBranch as exc:  # branches on data: one run's graph is not the model's
        return None, f"{why}; {exc}"
    except Exception as exc:  # noqa: BLE001 - the model fails on the batch: no transform
        return None, f"{why}; a run on the first batch failed too ({type(exc).__name__})"


#: How :func:`trace`'s ``why`` starts where the graph is that of one run.
_RUN = "run: "


def from_run(why: str | None) -> str | None:
    """What :func:`trace` said of a graph read from one run (why torch.fx could not trace
    the model), without its marker; None where the graph is torch.fx's or there is none."""
    return why[len(_RUN):] if why is not None and why.startswith(_RUN) else None


def module_of(model: nn.Module, node: torch.fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    try:
        return model.get_submodule(str(node.target))
    except AttributeError:
        return None


def users(node: torch.fx.Node) -> list[torch.fx.Node]:
    return list(node.users)


def only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    u = users(node)
    return u[0] if len(u) == 1 else None


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    """How often each module is called (a module called twice cannot be rescaled alone)."""
    out: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            out[str(n.target)] = out.get(str(n.target), 0) + 1
    return out


def activation_kind(model: nn.Module, node: torch.fx.Node) -> str | None:
    """``"relu"`` for activations with f(s x) = s f(x) for every s > 0 (ReLU, LeakyReLU),
    ``"relu6"`` for ReLU6 / Hardtanh(0, 6), else None."""
    m = module_of(model, node)
    if m is not None:
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            return "relu"
        if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0):
            return "relu6"
        return None
    if node.op == "call_function" and node.target in (F.relu, torch.relu, F.leaky_relu):
        return "relu"
    if node.op == "call_function" and node.target is F.relu6:
        return "relu6"
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


def run_batches(model: nn.Module, batches: Sequence[Sequence[np.ndarray]]) -> Iterator[Any]:
    """The model's outputs on each calibration batch (no grad)."""
    with torch.no_grad():
        for b in batches:
            yield model(*(torch.from_numpy(np.asarray(a)) for a in b))
