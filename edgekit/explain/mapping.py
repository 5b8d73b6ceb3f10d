"""Runtime tensors -> PyTorch leaf modules.

Rules, in order:

1. **metadata**: each leaf module takes the *last* tensor (in the runtime's topological order)
   that the artifact's metadata ties to it and whose shape fits the module's output once the
   layout is undone: for a QDQ model that is the dequantized value the next op consumes.
2. **BatchNorm fold**: a module followed by a BatchNorm that has a tensor of its own is
   "fused into" it (exporters fold inference BatchNorm into the conv before it).
3. **model output**: a module whose PyTorch output is the model's output ``k`` takes the
   artifact's output ``k`` (a graph output keeps the name the user gave, not the exporter's).
4. **shape**: each run of modules still unmapped, between mapped neighbours, is walked
   backwards (a fused chain's tensor holds the value of the chain's last module); a module
   takes the tensor tied to no module, lying between those neighbours, that has its shape
   (else that fits it after the layout is undone) only when exactly one does: where several
   fit, the match would be a guess, and the module stays unmapped.
5. **same tensor**: a module whose PyTorch output equals its predecessor's (Flatten, Identity,
   eval Dropout) shares the predecessor's tensor.
6. **fused**: a module the metadata lists as fused into the next module's tensor (``also``), or
   a module with parameters whose next module has a tensor and the same output shape (Conv +
   ReLU, Linear + ReLU), is measured at that tensor against the next module's PyTorch output;
   so is the ``Identity`` a BatchNorm folded into the conv before it leaves behind (a
   like-for-like reference, :mod:`edgekit.explain.reference`), with that conv.
   (A parameterless module with no tensor, such as a Dropout before a residual add, is not
   claimed: the runtime simply has no value for it.)

What remains is unmapped and listed. A fused module's numbers are those of the module it was
fused into (``compare_to``): the runtime has no value of its own for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .tensors import RuntimeTensor
from .torch_capture import LayerCapture

__all__ = ["LayerMatch", "align", "map_layers"]


@dataclass
class LayerMatch:
    """One module's runtime tensor (None when unmapped); ``values`` in PyTorch's layout."""

    module: str
    tensor: RuntimeTensor | None
    how: str
    transform: str | None = None
    values: list[np.ndarray] | None = None
    #: The module whose PyTorch output the values compare with: this one, or for a module the
    #: runtime fused into a later one (Conv + ReLU), that later module.
    compare_to: str | None = None


def _folded(layers: Sequence[LayerCapture], i: int) -> bool:
    """An ``Identity`` that passes on the output of a module with parameters: a BatchNorm
    folded into the conv before it (the int8 build's batch-norm folding leaves one)."""
    if i == 0 or layers[i].kind != "Identity" or not layers[i - 1].params:
        return False
    a, b = layers[i - 1].stacked(), layers[i].stacked()
    return a.shape == b.shape and bool(np.array_equal(a, b))


def align(t: RuntimeTensor, shape: tuple[int, ...]) -> tuple[str | None, list[np.ndarray]] | None:
    """The tensor's values in PyTorch's ``shape`` (NHWC -> NCHW, or dropping size-1 axes), or
    None when they cannot be."""
    ts = t.shape
    nhwc_of = (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else None
    if t.layout == "NHWC" and len(ts) == len(shape) and ts == nhwc_of:
        perm = (0, len(ts) - 1, *range(1, len(ts) - 1))
        return "NHWC->NCHW", [np.transpose(v, perm) for v in t.values]
    if ts == shape:
        return None, t.values
    if nhwc_of is not None and ts == nhwc_of:
        perm = (0, len(ts) - 1, *range(1, len(ts) - 1))
        return "NHWC->NCHW", [np.transpose(v, perm) for v in t.values]
    if int(np.prod(ts)) == int(np.prod(shape)) and [d for d in ts if d != 1] == [
            d for d in shape if d != 1]:
        return "reshape", [v.reshape(shape) for v in t.values]
    return None


def _fused(layer: LayerCapture, into: LayerMatch) -> LayerMatch:
    assert into.tensor is not None
    return LayerMatch(layer.name, into.tensor, f"fused into {into.module}", into.transform,
                      into.values, into.module)


def _own(m: LayerMatch | None) -> bool:
    """A match with a tensor of its own (not borrowed from a neighbour)."""
    return m is not None and m.tensor is not None and not m.how.startswith(("fused", "same"))


def map_layers(layers: Sequence[LayerCapture], tensors: Sequence[RuntimeTensor],
               outputs: Sequence[Sequence[np.ndarray]] = ()) -> list[LayerMatch]:
    """One :class:`LayerMatch` per layer, in the layers' (PyTorch execution) order;
    ``outputs``: PyTorch's model outputs per sample (for the model-output rule)."""
    by_module: dict[str, list[RuntimeTensor]] = {}
    for t in tensors:
        if t.module is not None:
            by_module.setdefault(t.module, []).append(t)
    matches: list[LayerMatch] = []
    for layer in layers:
        found = None
        for t in sorted(by_module.get(layer.name, []), key=lambda t: -t.order):
            a = align(t, layer.shape)
            if a is not None:
                found = LayerMatch(layer.name, t, t.source, a[0], a[1])
                break
        matches.append(found or LayerMatch(layer.name, None, ""))
    n = len(layers)
    # a conv (or linear) before a BatchNorm that has a tensor: the exporter folded the two
    for i in range(n - 1):
        if (matches[i].tensor is None and _own(matches[i + 1])
                and layers[i + 1].kind.startswith("BatchNorm")):
            matches[i] = _fused(layers[i], matches[i + 1])
    # a module whose output is the model's output k: the artifact's output k
    taken = {id(m.tensor) for m in matches if m.tensor is not None}
    for i in range(n):
        if matches[i].tensor is not None or not outputs:
            continue
        mine = layers[i].stacked()
        for k in range(len(outputs[0])):
            ref = np.concatenate([np.asarray(o[k]) for o in outputs], axis=0)
            out = next((t for t in tensors if t.model_output == k and id(t) not in taken), None)
            if out is None or ref.size != mine.size or not np.array_equal(
                    ref.ravel(), mine.ravel()):
                continue
            a = align(out, layers[i].shape)
            if a is not None:
                matches[i] = LayerMatch(layers[i].name, out, "model output", a[0], a[1])
                taken.add(id(out))
                break
    # shape: each run of unmapped layers between mapped neighbours, walked backwards (a
    # runtime tensor of a fused chain holds the value of the chain's last module)
    free = sorted((t for t in tensors if t.module is None), key=lambda t: t.order)
    used: set[int] = set()
    i = 0
    while i < n:
        if matches[i].tensor is not None:
            i += 1
            continue
        j = i
        while j < n and matches[j].tensor is None:
            j += 1
        lo = max((m.tensor.order for m in matches[:i] if m.tensor is not None), default=-1)
        hi = min((m.tensor.order for m in matches[j:] if m.tensor is not None),
                 default=1 << 30)
        for k in range(j - 1, i - 1, -1):
            cands = [t for t in free if lo < t.order < hi and id(t) not in used]
            exact = [t for t in cands if t.shape == layers[k].shape]
            fits = [t for t in cands if align(t, layers[k].shape) is not None]
            pick = exact if exact else fits
            if len(pick) != 1:
                continue  # none, or ambiguous: several tensors fit, so none is claimed
            a = align(pick[0], layers[k].shape)
            assert a is not None
            matches[k] = LayerMatch(layers[k].name, pick[0], "shape", a[0], a[1])
            used.add(id(pick[0]))
            hi = pick[0].order
        i = j
    # a module whose output equals its predecessor's (Flatten, Identity, eval Dropout)
    for i in range(1, n):
        prev = matches[i - 1]
        if matches[i].tensor is not None or prev.tensor is None or prev.values is None:
            continue
        same, mine = layers[i - 1].stacked(), layers[i].stacked()
        if same.size == mine.size and np.array_equal(same.ravel(), mine.ravel()):
            shape = layers[i].shape
            matches[i] = LayerMatch(
                layers[i].name, prev.tensor, f"same tensor as {prev.module}",
                prev.transform if shape == layers[i - 1].shape else "reshape",
                [v.reshape(shape) for v in prev.values])
    # fused into the next module: the metadata says so (``also``), or the next module has a
    # tensor of its own and the same output shape (Conv + ReLU, Linear + ReLU)
    for i in range(n - 2, -1, -1):
        nxt = matches[i + 1]
        if matches[i].tensor is not None or nxt.tensor is None:
            continue
        named = any(layers[i].name in t.also for t in by_module.get(nxt.module, []))
        if named or ((layers[i].params or _folded(layers, i))
                     and layers[i].shape == layers[i + 1].shape):
            matches[i] = _fused(layers[i], nxt if not nxt.how.startswith("fused")
                                else matches[[m.module for m in matches].index(
                                    nxt.compare_to or nxt.module)])
    for m in matches:
        if m.tensor is not None and m.compare_to is None:
            m.compare_to = m.module
    return matches
