"""All-or-nothing pruning: work on a deep copy, move the pruned state into the caller's model
only once everything succeeded, and turn third-party failures into edgekit errors that name
the layer.

:func:`working_copy` copies the model and maps each of its modules to the copy's;
:func:`commit` then gives every original module object the pruned copy's state, so references
the caller holds (``model.conv``) see the pruned layers. A failure before :func:`commit` leaves
the caller's weights and structure as they were.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import EdgekitError, NotSupportedError, UsageError

__all__ = ["commit", "failing_layer", "pruning_failure", "working_copy"]


def working_copy(model: nn.Module) -> tuple[nn.Module, dict[nn.Module, nn.Module]]:
    """A deep copy of ``model`` and the map from each module of ``model`` to its copy."""
    try:
        work = copy.deepcopy(model)
    except Exception as exc:
        raise UsageError(
            f"cannot copy {type(model).__name__} to prune it safely: {type(exc).__name__}: "
            f"{exc}", hint="make the model deep-copyable (copy.deepcopy): drop references to "
            "open files, locks or other uncopyable objects from its modules") from exc
    originals = [m for _, m in model.named_modules(remove_duplicate=True)]
    copies = [m for _, m in work.named_modules(remove_duplicate=True)]
    if len(originals) != len(copies):  # a __deepcopy__ that changes the module tree
        raise UsageError(f"copying {type(model).__name__} changed its module tree",
                         hint="prune a model whose copy.deepcopy keeps the same modules")
    return work, dict(zip(originals, copies))


def commit(model: nn.Module, work: nn.Module, mapping: dict[nn.Module, nn.Module]) -> None:
    """Give every module of ``model`` the state of its pruned copy in ``work`` (children that
    the copy still holds stay the caller's objects; modules pruning created are taken over)."""
    back = {w: o for o, w in mapping.items()}
    states: list[tuple[nn.Module, dict[str, Any]]] = []
    for orig, pruned in mapping.items():
        state = dict(pruned.__dict__)
        state["_modules"] = {k: back.get(v, v) if v is not None else None
                             for k, v in pruned._modules.items()}
        states.append((orig, state))
    for _, pruned in work.named_modules():  # modules pruning created: their children too
        if pruned not in back:
            pruned._modules = {k: back.get(v, v) if v is not None else None
                               for k, v in pruned._modules.items()}
    for orig, state in states:
        orig.__dict__.clear()
        orig.__dict__.update(state)


def failing_layer(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[str, str] | None:
    """Run ``model``; if its forward raises, the innermost named module running at the time and
    the error (``None`` if it runs)."""
    names = {m: n for n, m in model.named_modules() if n}
    stack: list[nn.Module] = []
    culprit: list[nn.Module] = []

    def pre(mod, _inp):
        stack.append(mod)

    def post(mod, _inp, _out):
        stack.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()]
    hooks += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:
        culprit = [m for m in stack if m in names]
        where = names[culprit[-1]] if culprit else type(model).__name__
        return where, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        for h in hooks:
            h.remove()
    return None


def pruning_failure(exc: Exception, *, layer: str | None, coupled: list[str],
                    during: str) -> EdgekitError:
    """A third-party failure while pruning as an edgekit error naming ``layer`` and the layers
    pruned with it, with a hint that fits the cause."""
    if isinstance(exc, EdgekitError):
        return exc
    what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    keep = sorted(set(coupled) | ({layer} if layer else set()))
    keeping = f"keep_layers={keep!r}" if keep else "keep_layers (the layers named above)"
    shape = isinstance(exc, RuntimeError) and any(
        s in str(exc) for s in ("shape", "size", "cannot be multiplied", "expected input"))
    if shape:
        hint = (f"torch-pruning did not follow how {layer or 'this layer'}'s input is reshaped "
                f"from the layers pruned before it; keep those widths with {keeping}")
    elif isinstance(exc, IndexError):
        hint = (f"torch-pruning mis-indexed the channels of this group (a layer type or "
                f"coupling it does not handle); keep its widths with {keeping}")
    else:
        hint = f"keep the widths of the layers involved with {keeping}"
    at = f" at layer {layer!r}" if layer else ""
    return NotSupportedError(
        f"pruning failed{at} {during}: {what}. The model passed in is unchanged.", hint=hint)
