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
* :func:`relative_error`: ``||out - ref|| / ||ref||`` (L2 norms over every element; 0.0 when
  identical, ``inf`` when the reference is all zero and the output not); it equals
  ``10 ** (-sqnr_db / 20)`` and, unlike :func:`max_rel_error`, does not explode near zero.
* :func:`channel_sqnr_db`: :func:`sqnr_db` of each slice along ``axis`` (the channel axis),
  samples pooled; a tensor whose range one outlier channel sets keeps a high tensor SQNR while
  most of its channels drown in rounding noise, which these per-channel values show.

Example::

    cos = cosine(ref, out)              # one value per sample
    worst, agree = cos.min(), top1_agreement(ref, out)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["REL_FLOOR", "centred_cosine", "classification_metrics", "compare_outputs",
           "confusion_matrix", "cosine", "json_number", "macro_f1", "macro_recall",
           "max_abs_error", "max_rel_error", "mean_iou", "power_ratio_db", "recall_at_k", "sqnr_db",
           "top1_agreement", "top1_matches", "topk_accuracy"]

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


def power_ratio_db(signal: float, noise: float, cap: float = 200.0) -> float:
    """``10 log10(signal / noise)`` of sums accumulated elsewhere (e.g. over batches),
    ``cap`` where either is 0 (a finite number for the manifest's JSON)."""
    return float(10.0 * math.log10(signal / noise)) if noise > 0 and signal > 0 else cap


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


def relative_error(ref: Any, out: Any) -> float:
    """``||out - ref|| / ||ref||`` over every element (0.0 when identical)."""
    r = np.asarray(ref, dtype=np.float64)
    noise = float(np.linalg.norm((np.asarray(out, dtype=np.float64).reshape(r.shape) - r).ravel()))
    signal = float(np.linalg.norm(r.ravel()))
    if noise == 0.0:
        return 0.0
    return noise / signal if signal > 0.0 else math.inf


def channel_sqnr_db(ref: Any, out: Any, axis: int = 1) -> np.ndarray:
    """:func:`sqnr_db` per slice along ``axis`` (every other axis pooled), one value a channel."""
    r = np.asarray(ref, dtype=np.float64)
    o = np.asarray(out, dtype=np.float64).reshape(r.shape)
    if r.ndim == 0:
        return np.array([sqnr_db(r, o)])
    r, o = np.moveaxis(r, axis, 0), np.moveaxis(o, axis, 0)
    return np.array([sqnr_db(r[c], o[c]) for c in range(r.shape[0])])


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


# --------------------------------------------------------------------------- task metrics
# Scores of predictions against true labels (not of an output against its reference):
#
# * :func:`confusion_matrix`: ``C[t, p]`` counts samples of true class t predicted as p.
# * :func:`macro_recall`: the unweighted mean over the classes present in the targets of
#   ``TP / (TP + FN)``, in percent (0..100). Every class weighs the same however few samples
#   it has, so a model that ignores a rare class loses its full share.
# * :func:`macro_f1`: the unweighted mean, over the same classes, of ``2 P R / (P + R)`` with
#   precision ``P = TP / (TP + FP)`` (0 when the class is never predicted) and ``F1 = 0`` when
#   ``P + R = 0``; in percent. Classes absent from the targets are left out of the average
#   (a sample wrongly predicted as one still counts against its true class's recall).
# * :func:`recall_at_k`: retrieval, scores (N queries, M items). With ``relevant`` a 0/1 (or
#   boolean) matrix (N, M), the mean over the queries that have a relevant item of
#   ``|relevant among the k highest-scored| / |relevant|``; with ``relevant`` one item index
#   per query (N,), the fraction of queries whose item is among their k highest scores. In
#   percent. Ties at the k-th score are broken by the lower item index (a stable order).
# * :func:`topk_accuracy`: classification, the % of samples whose true class is among the k
#   highest logits: :func:`recall_at_k` with one relevant item (the class) per sample.
# * :func:`mean_iou`: per-pixel segmentation, the mean over classes present in the targets or
#   the predictions of ``|pred = c and target = c| / |pred = c or target = c|``, in percent.


def _predictions(logits: Any, n: int) -> np.ndarray:
    return np.asarray(logits).reshape(n, -1).argmax(axis=1)


def confusion_matrix(targets: Any, predictions: Any, num_classes: int | None = None
                     ) -> np.ndarray:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    k = int(num_classes if num_classes is not None else max(t.max(initial=-1),
                                                            p.max(initial=-1)) + 1)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _per_class(logits: Any, targets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    logits = np.asarray(logits)
    k = logits.reshape(len(t), -1).shape[1]
    cm = confusion_matrix(t, _predictions(logits, len(t)), k)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    return recall[present], precision[present], present


def macro_recall(logits: Any, targets: Any) -> float:
    """Macro-averaged recall (%) of the argmax of ``logits`` (N, classes); see the notes."""
    recall, _, _ = _per_class(logits, targets)
    return float(100.0 * recall.mean()) if recall.size else 0.0


def macro_f1(logits: Any, targets: Any) -> float:
    """Macro-averaged F1 (%) of the argmax of ``logits`` (N, classes); see the notes."""
    r, p, _ = _per_class(logits, targets)
    if not r.size:
        return 0.0
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(r), where=(p + r) > 0)
    return float(100.0 * f1.mean())


def classification_metrics(logits: Any, targets: Any) -> dict[str, float]:
    """``{"top1", "macro_recall", "macro_f1"}`` in percent, from logits (N, classes)."""
    t = np.asarray(targets).reshape(-1)
    top1 = float(100.0 * np.mean(_predictions(logits, len(t)) == t)) if t.size else 0.0
    return {"top1": top1, "macro_recall": macro_recall(logits, t), "macro_f1": macro_f1(logits, t)}


def recall_at_k(scores: Any, relevant: Any, k: int) -> float:
    """Recall@k (%) of ``scores`` (N queries, M items) against ``relevant`` ((N, M) 0/1, or
    (N,) item indices); see the notes."""
    if int(k) < 1:
        raise ValueError(f"recall@k needs k >= 1, got {k}")
    rel = np.asarray(relevant)
    n = len(rel)
    s = np.asarray(scores, dtype=np.float64).reshape(n, -1)
    k = min(int(k), s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    if rel.ndim == 1:
        return float(100.0 * np.mean((top == rel.astype(np.int64)[:, None]).any(axis=1))) \
            if n else 0.0
    rel = rel.reshape(n, -1).astype(bool)
    if rel.shape != s.shape:
        raise ValueError(f"relevance matrix {rel.shape} does not match scores {s.shape}")
    have = rel.sum(axis=1)
    hits = np.take_along_axis(rel, top, axis=1).sum(axis=1)
    keep = have > 0
    return float(100.0 * np.mean(hits[keep] / have[keep])) if keep.any() else 0.0


def topk_accuracy(logits: Any, targets: Any, k: int) -> float:
    """% of samples whose true class is among the ``k`` highest of ``logits`` (N, classes)."""
    t = np.asarray(targets).reshape(-1)
    return recall_at_k(logits, t, k)


def mean_iou(logits: Any, targets: Any) -> float:
    """Mean intersection over union (%) of per-pixel classes: ``logits`` (N, C, H, W),
    ``targets`` (N, H, W) class indices."""
    pred = np.asarray(logits).argmax(axis=1).reshape(-1)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    cm = confusion_matrix(t, pred, np.asarray(logits).shape[1])
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    seen = union > 0
    return float(100.0 * (inter[seen] / union[seen]).mean()) if seen.any() else 0.0
