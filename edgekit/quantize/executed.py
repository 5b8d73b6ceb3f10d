"""What an int8 artifact executes per PyTorch layer, read back from the file.

Each runtime's int8 path reads its written artifact (QDQ / integer ops in ONNX, tensor types in
TFLite, FakeQuantize and int8 constants in OpenVINO IR) into rows ``{"node", "op", "module",
"precision"}`` (``artifact.info["quantization"]["layers"]``). :func:`layer_precisions` folds
them onto the model's quantizable layers, so the manifest says what runs, not what was asked::

    layer_precisions(rows, ["conv", "gru", "head"])
    # {"conv": "int8", "gru": "fp32", "head": "int8"}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..modulenames import in_modules

__all__ = ["layer_precisions", "unattributed_nodes"]


def _owns(layer: str, module: str) -> bool:
    return in_modules(module, (layer,))


def layer_precisions(rows: Sequence[Mapping[str, Any]] | None,
                     layers: Sequence[str], kinds: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """Layer -> the precision its nodes execute in: ``int8``, ``int16``, ``fp32``,
    ``int8 (dynamic range)``, ``fp32 (int8 weights)`` (float compute on stored int8 weights) or
    ``mixed: ...``; layers without a node in ``rows`` are absent
    (the artifact does not name them). ``kinds`` (layer -> ``gru``, ``lstm``...): a recurrent
    layer the artifact does not name takes the unnamed recurrent op of its kind (OpenVINO
    names the sequence op of an ONNX source ``GRUSequence_102``), in order."""
    owner = _owners(rows, layers, kinds)
    out: dict[str, str] = {}
    for layer in layers:
        found = [_label(r) for r, o in zip(rows or (), owner) if o == layer]
        if not found:
            continue
        labels = sorted(set(found))
        out[layer] = labels[0] if len(labels) == 1 else "mixed: " + ", ".join(
            f"{k} x{found.count(k)}" for k in labels)
    return out


def unattributed_nodes(rows: Sequence[Mapping[str, Any]] | None,
                       layers: Sequence[str], kinds: Mapping[str, str] | None = None
                       ) -> list[dict[str, Any]]:
    """Compute nodes no quantizable layer owns (e.g. a matmul of two activations), with their
    precision."""
    return [{"node": r.get("node"), "op": r.get("op"), "precision": _label(r)}
            for r, o in zip(rows or (), _owners(rows, layers, kinds)) if o is None]


def _owners(rows: Sequence[Mapping[str, Any]] | None, layers: Sequence[str],
            kinds: Mapping[str, str] | None = None) -> list[str | None]:
    """The layer each row belongs to: the one its module is (or is inside), else, for a
    runtime that drops container names from its paths, the layers ending in that path (LiteRT
    names ``down.0.0`` just ``0.0``), else the layers whose path holds the row's in order,
    with containers left out inside it (LiteRT names ``encoder.layer.0.fc`` ``encoder.0.fc``).
    Several candidates are taken in model order by the rows in graph order (the k-th row of a
    path goes to the k-th such layer); one takes every row of the path."""
    out: list[str | None] = []
    seen: dict[str, int] = {}
    for r in rows or ():
        module = str(r.get("module", ""))
        exact = [n for n in layers if _owns(n, module)]
        if exact:
            out.append(max(exact, key=len))
            continue
        candidates = [n for n in layers if module and n.endswith("." + module)] or (
            _spread(module, layers))
        k = seen.get(module, 0)
        seen[module] = k + 1
        if len(candidates) == 1:  # one layer: every row of the path is in it
            k = 0
        out.append(candidates[k] if k < len(candidates) else None)
    for kind in ("lstm", "gru", "rnn"):  # unnamed recurrent ops to the unnamed layers
        named = set(out)
        free = [n for n in layers if (kinds or {}).get(n) == kind and n not in named]
        for i, r in enumerate(rows or ()):
            op = str(r.get("op", "")).upper()
            if out[i] is None and free and op.startswith(kind.upper()):
                out[i] = free.pop(0)
    return out


def _spread(module: str, layers: Sequence[str]) -> list[str]:
    """Layers the module path names with container names left out: the path, or a path it
    starts with (a node inside the layer), is the layer's path less some parts, its last part
    kept; the layers of the longest prefix that names any, those with the fewest parts left
    out."""
    parts = module.split(".") if module else []
    for k in range(len(parts), 0, -1):
        head = parts[:k]
        found = [n for n in layers if _subsequence(head, n.split("."))]
        if found:  # the fewest parts left out: ``0.output.dense`` is not ``0.attention...``
            fewest = min(n.count(".") for n in found)
            return [n for n in found if n.count(".") == fewest]
    return []


def _subsequence(short: list[str], full: list[str]) -> bool:
    """``short`` is ``full`` with some parts left out, the last part of both the same."""
    if not short or not full or short[-1] != full[-1]:
        return False
    it = iter(full[:-1])
    return all(any(p == q for q in it) for p in short[:-1])


def _label(row: Mapping[str, Any]) -> str:
    p = str(row.get("precision", "fp32"))
    if row.get("mode") == "dynamic":
        return f"{p} (dynamic range)"
    if row.get("mode") == "weights only":
        return f"{p} (int8 weights)"
    return p
