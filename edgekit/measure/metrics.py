"""One definition of each number that compares an output with its reference.

A *sample* is one index along axis 0 of the arrays passed in: callers stack one entry per
sample there (``verify`` one entry per call of the artifact, the bench report one per row of
the stacked outputs; with batch 1 the two are the same).

* :func:`cosine`: per sample, cosine similarity of the flattened sample; two all-zero samples
  count 1.0, one all-zero sample 0.0, a non-finite norm NaN. Reports give the worst (minimum)
  and the mean.
* :func:`centred_cosine`: the same after subtracting each sample's mean (insensitive to a
  shared offset).
* :func:`sqnr_db`: ``10 log10(sum(ref^2) / sum((ref - out)^2))`` over every element, in dB;
  ``inf`` when identical, ``-inf`` when the reference is all zero and the output not.
* :func:`top1_agreement`: the *fraction* (0..1) of rows whose argmax over the last axis agrees,
  every index over the leading axes being a row: for ``(N, C)`` logits the N samples, for
  ``(N, T, C)`` the N*T positions. Reports that show a percent convert when displaying.
* :func:`max_abs_error` / :func:`max_rel_error`: largest ``|out - ref|`` and
  ``|out - ref| / max(|ref|, 1e-6)`` over every element (NaN when any difference is NaN).

Example::

    cos = cosine(ref, out)              # one value per sample
    worst, agree = cos.min(), top1_agreement(ref, out)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["REL_FLOOR", "centred_cosine", "compare_outputs", "cosine", "json_number",
           "max_abs_error", "max_rel_error", "sqnr_db", "top1_agreement", "top1_matches"]

#: Denominator floor of the relative error.
REL_FLOOR = 1e-6


def _samples(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)


def cosine(ref: Any, out: Any) -> np.ndarray:
    """Cosine similarity per sample (axis 0) of the flattened samples; see the module notes."""
    r, o = _samples(ref), _samples(out).reshape(_samples(ref).shape)
    nr, no = np.linalg.norm(r, axis=1), np.linalg.norm(o, axis=1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        dot = (r * o).sum(axis=1)
        cos = np.where((nr == 0) & (no == 0), 1.0,
                       np.where((nr == 0) | (no == 0), 0.0, dot / np.where(nr * no > 0, nr * no,
                                                                           1.0)))
    return np.where(np.isfinite(nr) & np.isfinite(no), cos, np.nan)


def centred_cosine(ref: Any, out: Any) -> np.ndarray:
    """:func:`cosine` of each sample minus its own mean."""
    r, o = _samples(ref), _samples(out).reshape(_samples(ref).shape)
    return cosine(r - r.mean(axis=1, keepdims=True), o - o.mean(axis=1, keepdims=True))


def sqnr_db(ref: Any, out: Any) -> float:
    """Signal-to-quantization-noise ratio in dB over every element (``inf`` when identical)."""
    r = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((r - np.asarray(out, dtype=np.float64).reshape(r.shape)) ** 2))
    signal = float(np.sum(r * r))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def top1_matches(ref: Any, out: Any) -> tuple[int, int]:
    """(rows whose argmax over the last axis agrees, rows); every leading index is a row."""
    r, o = np.asarray(ref), np.asarray(out)
    if r.ndim == 0 or r.shape[-1] == 0:
        return 0, 0
    ra = r.reshape(-1, r.shape[-1]).argmax(-1)
    oa = o.reshape(-1, r.shape[-1]).argmax(-1)
    return int((ra == oa).sum()), int(ra.size)


def top1_agreement(ref: Any, out: Any) -> float | None:
    """Fraction (0..1) of rows with the same argmax over the last axis; None with no rows."""
    agree, rows = top1_matches(ref, out)
    return agree / rows if rows else None


def max_abs_error(ref: Any, out: Any) -> float:
    """Largest absolute difference over every element (0.0 when empty, NaN if any is NaN)."""
    r = np.asarray(ref, dtype=np.float64)
    diff = np.abs(np.asarray(out, dtype=np.float64).reshape(r.shape) - r)
    return float(diff.max()) if diff.size else 0.0


def max_rel_error(ref: Any, out: Any) -> float:
    """Largest ``|out - ref| / max(|ref|, 1e-6)`` over every element (informational: it
    explodes near zero)."""
    r = np.asarray(ref, dtype=np.float64)
    diff = np.abs(np.asarray(out, dtype=np.float64).reshape(r.shape) - r)
    return float((diff / np.maximum(np.abs(r), REL_FLOOR)).max()) if diff.size else 0.0


def json_number(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity: those become the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


def compare_outputs(refs: Sequence[np.ndarray], outs: Sequence[np.ndarray],
                    names: Sequence[str], *, classifier: bool) -> dict[str, Any]:
    """Fidelity numbers per output (samples stacked on axis 0) plus a summary: the bench
    report's ``fidelity`` entry. ``top1_agreement`` (a fraction) is of the first output when
    ``classifier`` is true."""
    per = []
    for name, r, o in zip(names, refs, outs):
        r = np.asarray(r)
        o = np.asarray(o).reshape(r.shape)
        cos = cosine(r, o)
        per.append({"name": name, "max_abs": max_abs_error(r, o),
                    "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                    "sqnr_db": json_number(sqnr_db(r, o))})
    sqnrs = [float(p["sqnr_db"]) for p in per]
    return {
        "samples": len(refs[0]) if refs else 0,
        "outputs": per,
        "cosine_min": min(p["cosine_min"] for p in per) if per else None,
        "sqnr_db": json_number(min(sqnrs)) if sqnrs else None,
        "top1_agreement": top1_agreement(refs[0], outs[0]) if classifier and per else None,
    }
