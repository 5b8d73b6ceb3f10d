"""Runtime tensors -> PyTorch leaf modules.

Rules, in order:

1. **metadata**: each leaf module takes the *last* tensor (in the runtime's topological order)
   that the artifact's metadata ties to it and whose shape fits the module's output once the
   layout is undone: for a QDQ model that is the dequantized value the next op consumes.
2. **BatchNorm fold**: a module followed by a BatchNorm that has a tensor of its own is
   "fused into" it (exporters fold inference BatchNorm into the conv before it); a conv whose
   metadata tensor lies closer to the next BatchNorm's output than to its own, where that
   BatchNorm has no tensor (a Conv + BatchNorm + Hardswish: the runtime's conv holds the
   BatchNorm folded in, the activation is an op of its own), gives the BatchNorm that tensor
   and is fused into it.
3. **model output**: a module whose PyTorch output is the model's output ``k`` takes the
   artifact's output ``k`` (a graph output keeps the name the user gave, not the exporter's).
4. **same tensor**: a module whose PyTorch output equals its predecessor's (Flatten, Identity,
   eval Dropout) shares the predecessor's tensor (applied before and after rule 5).
5. **shape**: each run of modules still unmapped, between mapped neighbours, is walked
   backwards (a fused chain's tensor holds the value of the chain's last module); a module
   takes the tensor tied to no layer (to no module, or to a container module that made it
   with a functional op), lying between those neighbours, that has its shape (else that fits
   it after the layout is undone) only when exactly one value does (a value and its copies
   through reshapes and quantize/dequantize count once, the last copy is taken, and a value
   claimed is claimed with its copies), among the tensors whose values agree with the
   module's output (centred cosine >= 0.8: a value of the same shape computed elsewhere does
   not) or whose metadata names the module beside another (preferred): where several fit,
   the match would be a guess, and the module stays unmapped.
6. **fused**: a module the metadata lists as fused into the next module's tensor (``also``), or
   a module with parameters whose next module has a tensor and the same output shape (Conv +
   ReLU, Linear + ReLU), is measured at that tensor against the next module's PyTorch output;
   so is the ``Identity`` a BatchNorm folded into the conv before it leaves behind (a
   like-for-like reference, :mod:`edgekit.explain.reference`), with that conv.
   (A parameterless module with no tensor, such as a Dropout before a residual add, is not
   claimed: the runtime simply has no value for it.)

Rule 1 never gives a layer a tensor with no entry below zero when the layer's own output has a
real share of negative entries: that tensor holds the layer's value after an activation the
runtime fused into it (``F.relu(self.fc(x))`` in the model's forward). Rule 5 takes such a
tensor only when it agrees with the layer's output after a ReLU, and marks the match so
(``adjust="relu"``: the layer is compared after that ReLU). A Conv/Linear's tensor that sits
much closer to its output without the bias than with it is compared without it
(``adjust="no_bias"``: the runtime adds that bias in the next op).

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
    #: How the reference differs from the module's PyTorch output: ``"relu"``, the tensor
    #: holds it after a ReLU the model applies functionally (``F.relu(self.fc(x))``) and the
    #: runtime fused into the op; ``"no_bias"``, the runtime adds the module's bias in the
    #: next op (LiteRT folds a Linear's bias into the Linear after it). None: as is.
    adjust: str | None = None


def _folded(layers: Sequence[LayerCapture], i: int) -> bool:
    """An ``Identity`` that passes on the output of a module with parameters: a BatchNorm
    folded into the conv before it (the int8 build's batch-norm folding leaves one)."""
    if i == 0 or layers[i].kind != "Identity" or not layers[i - 1].params:
        return False
    a, b = layers[i - 1].stacked(), layers[i].stacked()
    return a.shape == b.shape and bool(np.array_equal(a, b))


def align(t: RuntimeTensor, shape: tuple[int, ...]) -> tuple[str | None, list[np.ndarray]] | None:
    """The tensor's values in PyTorch's ``shape`` (NHWC -> NCHW; a 1-D convolution's
    (N, 1, L, C) -> (N, C, L); or dropping size-1 axes), or None when they cannot be."""
    ts = t.shape
    nhwc_of = (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else None
    if t.layout == "NHWC" and len(ts) == len(shape) and ts == nhwc_of:
        perm = (0, len(ts) - 1, *range(1, len(ts) - 1))
        return "NHWC->NCHW", [np.transpose(v, perm) for v in t.values]
    if ts == shape:
        return None, t.values
    if (t.layout == "NHWC" and len(ts) == 4 and len(shape) == 3 and 1 in ts[1:3]
            and (ts[0], ts[3], ts[1] * ts[2]) == shape):
        # a Conv1d run as a 2-D convolution over (N, 1, L, C): back to (N, C, L)
        return "NHWC->NCL", [np.transpose(v, (0, 3, 1, 2)).reshape(shape) for v in t.values]
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
                      into.values, into.module, adjust=into.adjust)


def _own(m: LayerMatch | None) -> bool:
    """A match with a tensor of its own (not borrowed from a neighbour)."""
    return m is not None and m.tensor is not None and not m.how.startswith(("fused", "same"))


def _same_as_previous(layers: Sequence[LayerCapture], matches: list[LayerMatch]) -> None:
    """A module whose output equals its predecessor's (Flatten, Identity, eval Dropout) shares
    the predecessor's tensor."""
    for i in range(1, len(layers)):
        prev = matches[i - 1]
        if matches[i].tensor is not None or prev.tensor is None or prev.values is None:
            continue
        same, mine = layers[i - 1].stacked(), layers[i].stacked()
        if same.size == mine.size and np.array_equal(same.ravel(), mine.ravel()):
            shape = layers[i].shape
            matches[i] = LayerMatch(
                layers[i].name, prev.tensor, f"same tensor as {prev.module}",
                prev.transform if shape == layers[i - 1].shape else "reshape",
                [v.reshape(shape) for v in prev.values], adjust=prev.adjust)


def _rectified(t: RuntimeTensor, layer: LayerCapture) -> bool:
    """The tensor holds a rectified value (no entry below zero) where the layer's own output
    has a real share of negative entries: the runtime fused an activation the model applies
    functionally (``F.relu(self.fc(x))``) into the op, so the tensor is not the layer's."""
    if not t.values or min(float(np.min(v)) for v in t.values) < 0:
        return False
    out = layer.stacked()
    if out.size == 0:
        return False
    scale = float(np.max(np.abs(out))) or 1.0
    return float(np.mean(out < -1e-3 * scale)) > 0.01


def _bias_elsewhere(values: list[np.ndarray], layer: LayerCapture) -> bool:
    """The values are the layer's output without its bias (at most a quarter of the distance
    to the output with it): the runtime adds the bias in a later op."""
    if layer.bias is None or not np.any(layer.bias):
        return False
    out = layer.stacked().astype(np.float64)
    got = np.concatenate([np.asarray(v, np.float64) for v in values], axis=0).reshape(out.shape)
    with_bias = float(np.linalg.norm(got - out))
    return float(np.linalg.norm(got - layer.without_bias(out))) < 0.25 * with_bias


def _closer_to(m: LayerMatch, this: LayerCapture, than: LayerCapture) -> bool:
    """The match's values lie closer to ``this`` layer's output than to ``than``'s."""
    if m.values is None or m.adjust is not None:
        return False
    got = np.concatenate([np.asarray(v, np.float64).ravel() for v in m.values])
    a, b = this.stacked().astype(np.float64).ravel(), than.stacked().astype(np.float64).ravel()
    if not got.size == a.size == b.size:
        return False
    return float(np.linalg.norm(got - a)) < float(np.linalg.norm(got - b))


#: A tensor matched by shape alone must agree this well with the layer's output (centred
#: cosine): a value of the same shape computed elsewhere (the ``a * b`` term beside a fusion
#: layer) does not, nor does a sum that holds the layer's output and as much again (BERT's
#: word + position embeddings, where ONNX Runtime folded the constant position table: about
#: 0.7); an int8 layer at 4-5 dB SQNR still does.
MIN_SHAPE_COSINE = 0.8


def _agrees(t: RuntimeTensor, layer: LayerCapture) -> bool:
    """The tensor's values agree with the layer's output (after a ReLU when the tensor is
    rectified and the output is not: :func:`_rectified`)."""
    a = align(t, layer.shape)
    if a is None:
        return False
    got = np.concatenate([np.asarray(v, np.float64).ravel() for v in a[1]])
    ref = layer.stacked().astype(np.float64).ravel()
    if _rectified(t, layer):
        ref = np.maximum(ref, 0.0)
    if got.size != ref.size:
        return False
    got, ref = got - got.mean(), ref - ref.mean()
    denom = float(np.linalg.norm(got) * np.linalg.norm(ref))
    return denom == 0.0 or float(got @ ref) / denom >= MIN_SHAPE_COSINE


def _last_of_each_value(tensors: Sequence[RuntimeTensor]) -> list[RuntimeTensor]:
    """One tensor per value: of a value and its copies through ops that move no value
    (a Gemm's output, its DequantizeLinear, the Reshape after it) the last, the one the next
    op reads."""
    last: dict[str, RuntimeTensor] = {}
    for t in sorted(tensors, key=lambda t: t.order):
        last[t.value_key] = t
    return sorted(last.values(), key=lambda t: t.order)


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
            if a is not None and not _rectified(t, layer):
                found = LayerMatch(layer.name, t, t.source, a[0], a[1])
                if _bias_elsewhere(a[1], layer):
                    found.how, found.adjust = f"{t.source}, bias added in the next op", "no_bias"
                break
        matches.append(found or LayerMatch(layer.name, None, ""))
    n = len(layers)
    # a conv's own tensor that holds the BatchNorm after it (folded in, the BatchNorm has no
    # tensor): the BatchNorm takes it and the conv is fused into it
    for i in range(n - 1):
        if (_own(matches[i]) and matches[i + 1].tensor is None and layers[i].params
                and layers[i + 1].kind.startswith("BatchNorm")
                and layers[i].shape == layers[i + 1].shape
                and _closer_to(matches[i], layers[i + 1], layers[i])):
            m = matches[i]
            assert m.tensor is not None
            matches[i + 1] = LayerMatch(layers[i + 1].name, m.tensor,
                                        f"{m.how}, BatchNorm folded into {layers[i].name}",
                                        m.transform, m.values)
            matches[i] = _fused(layers[i], matches[i + 1])
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
    # a module whose output equals its predecessor's takes its tensor before the shape rule
    # could give it a later value of the same shape (a Dropout before a residual add)
    _same_as_previous(layers, matches)
    # shape: each run of unmapped layers between mapped neighbours, walked backwards (a
    # runtime tensor of a fused chain holds the value of the chain's last module). Free
    # tensors: tied to no layer (to no module, or to a container whose forward made them, such
    # as a functional ReLU inside a TransformerEncoderLayer)
    names = {layer.name for layer in layers}
    free = [t for t in tensors if t.module is None or t.module not in names]
    # values (a tensor and its copies) already claimed
    used = {m.tensor.value_key for m in matches if m.tensor is not None}
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
            cands = _last_of_each_value(
                [t for t in free if lo < t.order < hi and t.value_key not in used])
            exact = [t for t in cands if t.shape == layers[k].shape]
            fits = [t for t in cands if align(t, layers[k].shape) is not None]
            # a value whose metadata names the layer beside another module (the ONNX scope
            # of a Gemm the quantizer fused with the block's ReLU) is the layer's, agreeing or
            # not (a layer broken by int8 does not agree); others must agree with it
            tied = {t.value_key for t in free if layers[k].name in t.also}
            exact = [t for t in exact if t.value_key in tied or _agrees(t, layers[k])]
            fits = [t for t in fits if t.value_key in tied or _agrees(t, layers[k])]
            pick = exact if exact else fits
            pick = [t for t in pick if t.value_key in tied] or pick
            if len(pick) != 1:
                continue  # none, or ambiguous: several tensors fit, so none is claimed
            a = align(pick[0], layers[k].shape)
            assert a is not None
            relu = _rectified(pick[0], layers[k])
            matches[k] = LayerMatch(layers[k].name, pick[0],
                                    "shape, functional ReLU fused in" if relu else "shape",
                                    a[0], a[1], adjust="relu" if relu else None)
            used.add(pick[0].value_key)
            hi = pick[0].order
        i = j
    _same_as_previous(layers, matches)
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
