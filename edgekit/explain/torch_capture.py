"""PyTorch side: every leaf module's output for each reference sample, in execution order.

Forward hooks on every module record the first tensor each returns; the layers kept are the
modules *called as leaves*: called during the forward, with no called module inside them. That
is a module without children, and also one whose children its forward never calls (an
``nn.MultiheadAttention`` computes with ``out_proj``'s weights through the functional API: the
attention itself is the layer, the uncalled ``out_proj`` is not one). A parametrized module (a
weight-normed convolution) is a layer too: its parametrizations compute its weight, and are
not hooked. A module called more
than once per forward keeps its last call (its name then maps to one tensor in each runtime
as well). Modules whose output is not a floating-point tensor
(e.g. an embedding's integer indices are inputs, not outputs) are recorded only when float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..backends._common import flatten_outputs

__all__ = ["LayerCapture", "capture_torch", "fx_name_modules"]


@dataclass
class LayerCapture:
    """One leaf module: its name, class, call order and output per sample (numpy, batch kept)."""

    name: str
    kind: str
    order: int
    outputs: list[np.ndarray] = field(default_factory=list)
    #: Parameters the module holds (0 for ReLU, Dropout, Flatten...).
    params: int = 0
    #: The bias a Conv/Linear adds (None without one) and the output axis it runs along.
    bias: np.ndarray | None = None
    bias_axis: int = 1
    _stacked: tuple[int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def without_bias(self, out: np.ndarray) -> np.ndarray:
        """``out`` (this layer's output, stacked) with the layer's bias taken off."""
        assert self.bias is not None
        shape = [1] * out.ndim
        shape[self.bias_axis] = -1
        return out - self.bias.reshape(shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.outputs[0].shape) if self.outputs else ()

    def stacked(self) -> np.ndarray:
        """Samples concatenated along axis 0 (each sample keeps its own batch axis); built once
        per number of samples (the mapping asks for it many times). Read-only."""
        if self._stacked is None or self._stacked[0] != len(self.outputs):
            value = np.concatenate([o.reshape((-1, *o.shape[1:])) if o.ndim else o.reshape(1)
                                    for o in self.outputs], axis=0)
            value.flags.writeable = False
            self._stacked = (len(self.outputs), value)
        return self._stacked[1]


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _bias(m: torch.nn.Module, out: torch.Tensor) -> dict[str, Any]:
    """A Conv's or Linear's bias and the axis of ``out`` it is added along."""
    b = getattr(m, "bias", None)
    if not isinstance(b, torch.Tensor) or b.ndim != 1 or out.ndim < 2:
        return {}
    if isinstance(m, torch.nn.Linear) and out.shape[-1] == b.numel():
        return {"bias": b.detach().float().cpu().numpy().copy(), "bias_axis": out.ndim - 1}
    if isinstance(m, torch.nn.modules.conv._ConvNd) and out.shape[1] == b.numel():
        return {"bias": b.detach().float().cpu().numpy().copy(), "bias_axis": 1}
    return {}


def _parametrizations(model: torch.nn.Module) -> set[str]:
    """Names of the modules that compute a parametrized module's weight
    (``torch.nn.utils.parametrize``: a weight-normed convolution's ``parametrizations.weight``
    and what it holds). They run inside the layer's forward and return its weight, not an
    activation: the parametrized module stays the layer."""
    from torch.nn.utils.parametrize import ParametrizationList

    roots = [n for n, m in model.named_modules() if isinstance(m, ParametrizationList)]
    return {n for n, _ in model.named_modules()
            if any(n == r or n.startswith(r + ".") for r in roots)}


def called_leaves(called: Sequence[str]) -> set[str]:
    """The names in ``called`` (module paths, ``""`` the root) with no other called name
    inside them."""
    names = set(called)
    return {n for n in names
            if not any(m != n and (n == "" or m.startswith(n + ".")) for m in names)}


def capture_torch(model: torch.nn.Module, samples: Sequence[Sequence[np.ndarray]]
                  ) -> tuple[list[LayerCapture], list[list[np.ndarray]]]:
    """Run every sample through ``model`` (eval, no grad) with hooks on each leaf module.

    Returns the captured layers in first-call order and the model's outputs per sample.
    """
    captures: dict[str, LayerCapture] = {}
    order = [0]
    current: dict[str, np.ndarray] = {}
    called: set[str] = set()
    root = type(model).__name__

    def hook(name: str, kind: str, params: int) -> Any:
        def fn(m: torch.nn.Module, _args: Any, out: Any) -> None:
            called.add(name)
            t = _first_tensor(out)
            if t is None or not t.is_floating_point():
                return
            if name not in captures:
                captures[name] = LayerCapture(name, kind, order[0], params=params,
                                              **_bias(m, t))
                order[0] += 1
            current[name] = t.detach().float().cpu().numpy().copy()
        return fn

    weights = _parametrizations(model)
    handles = [m.register_forward_hook(hook(n, type(m).__name__,
                                            sum(p.numel() for p in m.parameters())))
               for n, m in model.named_modules() if n not in weights]
    was_training = model.training
    model.eval()
    outputs: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for sample in samples:
                current.clear()
                result = model(*(torch.from_numpy(np.asarray(x)) for x in sample))
                outputs.append([r.detach().float().cpu().numpy()
                                for r in flatten_outputs(result)])
                for name, cap in captures.items():
                    if name in current:
                        cap.outputs.append(current[name])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    leaves = called_leaves(sorted(called))
    layers = [c for c in sorted(captures.values(), key=lambda c: c.order)
              if c.name in leaves and len(c.outputs) == len(samples)]
    for c in layers:
        c.name = c.name or root
    return layers, outputs


def fx_name_modules(model: torch.nn.Module, sample: Sequence[np.ndarray]) -> dict[str, str]:
    """``torch.export`` node name -> leaf module name: the names the ONNX exporter gives its
    tensors (and OpenVINO keeps when it reads the ONNX file). Empty when export fails."""
    try:
        ep = torch.export.export(model, tuple(torch.from_numpy(np.asarray(x)) for x in sample))
    except Exception:  # an unexportable model still gets the runtimes' own metadata
        return {}
    out = {}
    for node in ep.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and stack:
            path = list(stack.values())[-1][0]
            out[node.name] = _clean_path(str(path))
    return out


def _clean_path(path: str) -> str:
    """``L['self'].layers[0].conv`` / ``layers.0.conv`` -> ``layers.0.conv``."""
    import re

    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    return path.strip(".")
