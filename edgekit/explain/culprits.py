"""The int8 gate's view of explain: which layers to keep in float first, read from the
runtime's own tensors.

When an int8 variant misses its gate, :func:`gate_culprits` runs the few samples where the
artifact departs most from PyTorch (:func:`worst_samples`, among the verification, held-out
or calibration samples) through PyTorch and through that variant's artifact and ranks the layers
where the runtime's tensors lose SQNR (:mod:`edgekit.explain.layers`). A culprit tensor is the
output of a module ``L`` as the runtime computed it: it carries the rounding of ``L``'s inputs
and weights and, where the next layer reads it in int8, of ``L``'s output. Keeping ``L`` in
float removes the second; keeping the layer that reads the tensor in float too removes the
third, and keeping the layer whose output ``L`` reads in float too removes the first. So each
culprit contributes ``L`` (or, for a parameter-free culprit such as a ReLU, the quantizable
layer before it), the next quantizable layer in execution order, then (for ``L`` itself) the
one before it, and the fallback tries them in that order before the PyTorch-side sensitivity
ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..backends import Artifact
from ..errors import NotSupportedError
from ..measure.metrics import json_number
from .layers import TargetResult
from .target import explain_artifact
from .torch_capture import LayerCapture

__all__ = ["MAX_CULPRITS", "MAX_SAMPLES", "MIN_LOSS_DB", "gate_culprits", "try_first",
           "worst_samples"]

#: Samples run through PyTorch and the artifact (each costs a capture of every tensor).
MAX_SAMPLES = 4
#: Culprits the gate reports and tries at most.
MAX_CULPRITS = 3
#: A layer is a culprit when it is the first jump or loses at least this much SQNR (dB).
MIN_LOSS_DB = 3.0
#: A first jump whose own SQNR is under this (dB) is no rounding error: its output is
#: unrelated to PyTorch's (rounded to zero, or a runtime kernel's fault:
#: benchmarks/openvino_grouped_conv.py).
KERNEL_FAULT_DB = 3.0


def try_first(culprit_names: Sequence[str], order: Sequence[str],
              quantizable: Sequence[str]) -> list[str]:
    """The quantizable layers to keep in float for ``culprit_names`` (see the module's
    docstring), in the order to try them; ``order`` is PyTorch's execution order of the leaf
    modules."""
    q = set(quantizable)
    pos = {name: i for i, name in enumerate(order)}
    seq = [n for n in order if n in q]
    out: list[str] = []

    def add(name: str | None) -> None:
        if name is not None and name not in out:
            out.append(name)

    for c in culprit_names:
        if c not in pos:
            continue
        at = pos[c]
        before = next((n for n in reversed(seq) if pos[n] < at), None)
        add(c if c in q else before)
        add(next((n for n in seq if pos[n] > at), None))
        if c in q:  # the layer whose output it reads: its input's rounding
            add(before)
    return out


def worst_samples(model: torch.nn.Module, session: Any,
                  pool: Sequence[Sequence[np.ndarray]], k: int = MAX_SAMPLES
                  ) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """The ``k`` samples of ``pool`` where ``session`` departs most from ``model``: those
    whose top-1 class differs first (outputs with 2+ entries per row), then the lowest
    cosine of any output. A gate fails on its worst samples, and the layers that break those
    are not always the ones that lose the most on typical inputs (a near-tied pair of logits,
    an output rounded to zero). Returns the samples and what was chosen (indices, cosines)."""
    from ..backends._common import flatten_outputs
    from ..measure.metrics import cosine, top1_matches

    scored = []
    was = model.training
    model.eval()
    try:
        for i, sample in enumerate(pool):
            feeds = [np.asarray(a) for a in sample]
            with torch.no_grad():
                ref = [t.detach().cpu().numpy() for t in
                       flatten_outputs(model(*(torch.from_numpy(np.ascontiguousarray(a))
                                               for a in feeds)))]
            got = [np.asarray(g) for g in session.run(feeds)]
            cos, flip = 1.0, False
            for r, g in zip(ref, got):
                if r.shape != g.shape or r.size == 0:
                    continue
                c = float(np.nanmin(cosine(r[None], g[None])))
                cos = min(cos, c if math.isfinite(c) else -1.0)
                if r.ndim == 2 and r.shape[1] > 1:  # class scores: one row per sample
                    agree, rows = top1_matches(r, g)
                    flip = flip or agree < rows
            scored.append((not flip, cos, i))
    finally:
        model.train(was)
    chosen = sorted(scored)[:k]
    return ([[np.asarray(a) for a in pool[i]] for _, _, i in chosen],
            {"pool": len(pool), "indices": [i for _, _, i in chosen],
             "cosines": [round(c, 6) for _, c, _ in chosen],
             "top1_flips": sum(not f for f, _, _ in chosen)})


def _db(x: float | None) -> float | str | None:
    v = json_number(x)
    return round(v, 2) if isinstance(v, float) else v


def _rows(result: TargetResult) -> list[dict[str, Any]]:
    by_name = {r.module: r for r in result.rows}
    jump = result.jump.module if result.jump is not None else None
    chosen = [(m, lost) for m, lost in result.ranked
              if m == jump or (math.isfinite(lost) and lost >= MIN_LOSS_DB) or math.isinf(lost)]
    out = []
    for m, lost in chosen[:MAX_CULPRITS]:
        r = by_name[m]
        out.append({"module": m, "kind": r.kind, "sqnr_db": _db(r.effective_sqnr_db),
                    "sqnr_lost_db": _db(lost), "precision": r.precision,
                    "first_jump": m == jump})
    return out


def gate_culprits(model: torch.nn.Module, artifact: Artifact,
                  samples: Sequence[Sequence[np.ndarray]], quantizable: Sequence[str], *,
                  options: dict[str, Any] | None = None, threads: int = 1) -> dict[str, Any]:
    """The manifest's record of the culprits of a failed int8 variant: ``layers`` (module,
    SQNR there, dB lost, first jump), ``try_first`` (the quantizable layers the fallback keeps
    in float first), ``source``. Raises what explain raises (the caller records it).

    Example::

        rec = gate_culprits(model, variant_artifact, holdout[:4], ["conv1", "conv2", "fc"])
        rec["try_first"]  # ['conv1', 'conv2']
    """
    feeds = [[np.asarray(a) for a in s] for s in list(samples)[:MAX_SAMPLES]]
    layers, result = explain_artifact(model, artifact, feeds, options=options,
                                      threads=threads)
    if result.status != "ok":
        raise NotSupportedError(f"explain cannot read {artifact.path}: "
                                f"{result.reason or result.status}")
    rows = _rows(result)
    order = [c.name for c in sorted(layers, key=_order)]
    return {"source": f"runtime tensors ({artifact.backend} artifact, edgekit explain on "
                      f"{len(feeds)} sample(s))",
            "first_jump": result.jump.module if result.jump is not None else None,
            "layers": rows,
            "try_first": try_first([r["module"] for r in rows], order, quantizable),
            "coverage": {k: result.coverage[k] for k in ("mapped", "total")}}


def _order(layer: LayerCapture) -> int:
    return layer.order


def culprit_message(rec: dict[str, Any], backend: str, kept: Sequence[str],
                    quantizable: Sequence[str]) -> tuple[str, str | None]:
    """The gate error's sentence naming the culprits of :func:`gate_culprits`' record ``rec``,
    and a hint that fits them: keep the culprits in float, unless the first jump is at a layer
    with nothing to quantize (an embedding, a norm), where what feeds it is the cause; a
    quantized first jump whose output is unrelated to PyTorch's (under ``KERNEL_FAULT_DB``)
    is no rounding error: an output rounded to zero, or a runtime kernel's fault."""
    rows = rec.get("layers") or []
    if not rows:
        return "", None
    named = "; ".join(
        f"{r['module']} ({r['kind']}: SQNR {r['sqnr_db']} dB there, "
        f"{r['sqnr_lost_db']} dB lost{', the first jump' if r['first_jump'] else ''})"
        for r in rows)
    keep = [n for n in rec.get("try_first", []) if n not in kept][:2] or [rows[0]["module"]]
    keeping = (f"keep_float = {keep!r} under [quantization] in the recipe, or "
               f"quantization={{'keep_float': {keep!r}}}")
    jump = next((r for r in rows if r["first_jump"]), None)
    if jump is not None and jump["module"] not in quantizable:
        hint = (f"the first jump is at {jump['module']!r} ({jump['kind']}), which has no "
                "weights edgekit quantizes: what feeds it already differs. Look at the ops "
                "that compute its input (an index or position computed in floating point is "
                "rounded onto the int8 grid before its cast); " + keeping +
                " keeps the layers around it in float, which may not reach the cause")
    elif jump is not None and isinstance(jump["sqnr_db"], (int, float)) \
            and jump["sqnr_db"] < KERNEL_FAULT_DB:
        hint = (f"{jump['module']!r} ({jump['kind']}) departs from PyTorch by more than "
                f"rounding (SQNR {jump['sqnr_db']} dB there; int8 rounding of one layer keeps "
                "well over 10 dB) while the layers before it agree: either its output is far "
                "smaller than its int8 step and rounds to zero (a scale clamped from below), "
                "or the runtime's int8 kernel for it computes something else on this CPU "
                "(OpenVINO's AMX kernel for grouped 1-D convolutions with long kernels is one "
                f"known case). Keep it in float: {keeping}; or build for another runtime")
    else:
        hint = f"keep the culprit in float: {keeping}; or raise the profile's [gate] / " \
               "[accuracy] limits"
    return (f" The {backend} artifact's own tensors depart from PyTorch at: {named}.", hint)

