"""Models whose ``forward`` returns a structure of tensors: a dict (detection heads:
``{"boxes": ..., "scores": ...}``), a Hugging Face ``ModelOutput``, nested tuples, ``None``
entries.

Every runtime's artifact has a flat list of named outputs, and edgekit's stages compare
outputs by position. :func:`output_leaves` lists a structure's tensors in order (a mapping in
its key order, a sequence by index, ``None`` skipped) with a name from its path (``boxes``,
``hidden_states_1``); :func:`flat_view` gives the model a ``forward`` that returns those
tensors as a tuple, sharing its modules, parameters and names (the modules keep their names,
so ``keep_float``, explain and the manifest name them as in the user's model), and leaves
the user's model as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["output_leaves", "flat_view", "is_flat", "not_tensors"]


def output_leaves(out: Any, path: str = "") -> list[tuple[str, Any]]:
    """``(name, leaf)`` of each non-``None`` leaf of ``out``, in order. A leaf that is not a
    tensor is listed too (the caller reports it)."""
    if isinstance(out, Mapping):  # a dict, a Hugging Face ModelOutput (an OrderedDict)
        items = [(str(k), out[k]) for k in out.keys()]
    elif isinstance(out, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(out)]
    elif out is None:
        return []
    else:
        return [(path, out)]
    leaves: list[tuple[str, Any]] = []
    for key, value in items:
        leaves += output_leaves(value, f"{path}_{key}" if path else key)
    return leaves


def not_tensors(leaves: list[tuple[str, Any]]) -> list[str]:
    """``"key: type"`` of each leaf of :func:`output_leaves` that is not a tensor."""
    return [f"{n or 'output'}: {type(t).__name__}" for n, t in leaves
            if not isinstance(t, torch.Tensor)]


def is_flat(out: Any) -> bool:
    """A tensor, or a tuple / list of tensors: what every stage takes as it is."""
    return isinstance(out, torch.Tensor) or (
        isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out))


def flat_view(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with a ``forward`` returning its output's tensors as a tuple
    (:func:`output_leaves` order). The view is an instance of a subclass of the model's class
    with the same name, sharing its submodules, parameters and buffers (new containers, the
    same tensors and modules); the user's model is not changed."""
    cls = type(model)

    def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t for _, t in output_leaves(cls.forward(self, *args, **kwargs)))

    view_cls = type(cls.__name__, (cls,), {
        "forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    view: torch.nn.Module = cls.__new__(view_cls)
    view.__dict__.update(model.__dict__)
    for attr in ("_parameters", "_buffers", "_modules", "_forward_hooks",
                 "_forward_pre_hooks", "_non_persistent_buffers_set"):
        value = model.__dict__.get(attr)
        if value is not None:
            view.__dict__[attr] = type(value)(value) if not isinstance(value, set) \
                else set(value)
    return view
