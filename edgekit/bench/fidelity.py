"""Fidelity against a reference (the fp32 PyTorch model) that needs no labels, and the plain
metrics used when user data comes without a zoo task.

* ``top1_agreement``: percent of samples whose argmax matches the reference's argmax;
* ``cosine``: cosine similarity of the flattened outputs (per sample, then the minimum and mean);
* ``sqnr_db``: signal-to-quantisation-noise ratio ``10 log10(sum(ref^2) / sum((ref - out)^2))``
  over all elements (``inf`` when identical);
* ``max_abs``: largest absolute difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["compare_outputs", "cosine", "sqnr_db", "top1_agreement", "plain_metric",
           "PLAIN_METRICS"]


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Percent (0..100) of samples (rows) with the same argmax."""
    r = np.asarray(ref).reshape(len(ref), -1)
    o = np.asarray(out).reshape(len(out), -1)
    return float(100.0 * np.mean(r.argmax(axis=1) == o.argmax(axis=1)))


def cosine(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of the flattened outputs (1.0 where both are all zero)."""
    r = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    o = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    num = (r * o).sum(axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0),
                       np.where((np.abs(r).sum(1) == 0) & (np.abs(o).sum(1) == 0), 1.0, 0.0))
    return cos


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """10 log10(signal power / noise power), over every element; inf when identical."""
    r = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((r - np.asarray(out, dtype=np.float64)) ** 2))
    signal = float(np.sum(r * r))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def compare_outputs(refs: Sequence[np.ndarray], outs: Sequence[np.ndarray],
                    names: Sequence[str], *, classifier: bool) -> dict[str, Any]:
    """Fidelity numbers per output (stacked over samples on axis 0) plus a summary.

    ``top1_agreement`` is computed on the first output when ``classifier`` is true.
    """
    per = []
    for name, r, o in zip(names, refs, outs):
        r = np.asarray(r)
        o = np.asarray(o).reshape(r.shape)
        cos = cosine(r, o)
        per.append({"name": name, "max_abs": float(np.max(np.abs(r.astype(np.float64) - o)))
                    if r.size else 0.0,
                    "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                    "sqnr_db": _finite(sqnr_db(r, o))})
    summary: dict[str, Any] = {
        "samples": int(len(refs[0])) if refs else 0,
        "outputs": per,
        "cosine_min": min(p["cosine_min"] for p in per) if per else None,
        "sqnr_db": _min_sqnr(per),
        "top1_agreement": top1_agreement(refs[0], outs[0]) if classifier and per else None,
    }
    return summary


def _finite(x: float) -> float | str:
    """JSON has no infinity: identical outputs report the string "inf"."""
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _min_sqnr(per: list[dict[str, Any]]) -> float | str | None:
    vals = [math.inf if p["sqnr_db"] == "inf" else -math.inf if p["sqnr_db"] == "-inf"
            else p["sqnr_db"] for p in per]
    return _finite(min(vals)) if vals else None


# --------------------------------------------------------------------------- plain metrics


def _top1(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
    logits = np.asarray(outputs[0])
    t = np.asarray(targets).reshape(-1)
    return float(100.0 * np.mean(logits.reshape(len(t), -1).argmax(axis=1) == t))


def _mse(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
    out = np.asarray(outputs[0], dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    return float(np.mean((out.reshape(t.shape) - t) ** 2))


def _auc(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
    from ..data.tasks import auc

    scores = np.asarray(outputs[-1]).reshape(len(targets), -1)
    return auc(scores[:, -1] if scores.shape[1] > 1 else scores[:, 0], targets)


#: name -> (score function, higher is better, classifier-like outputs)
PLAIN_METRICS = {"top1": (_top1, True, True), "mse": (_mse, False, False),
                 "auc": (_auc, True, False)}


def plain_metric(name: str) -> tuple[Any, bool, bool]:
    from ..errors import UnknownNameError

    if name not in PLAIN_METRICS:
        raise UnknownNameError("metric", name, PLAIN_METRICS)
    return PLAIN_METRICS[name]
