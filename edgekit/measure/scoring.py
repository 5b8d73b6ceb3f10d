"""The one scorer: a task's metric measured through any Session with the task's own scoring
code, and the plain metrics used when user data comes without a zoo task.

Example::

    acc = evaluate_session(session, task.test, task, batch=1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends.base import Session
from ..errors import UnknownNameError

if TYPE_CHECKING:
    from ..data.task import Split, Task

__all__ = ["METRIC_NAMES", "PLAIN_METRICS", "evaluate_session", "plain_metric", "session_outputs",
           "split_batches"]

#: A score: (stacked outputs, targets, inputs) -> number.
Score = Callable[[Sequence[np.ndarray], np.ndarray, Any], float]


def split_batches(split: Split, batch: int, limit: int | None = None) -> list[list[np.ndarray]]:
    """Cut a split's inputs into numpy batches of exactly ``batch`` samples (rest dropped)."""
    n = len(split) if limit is None else min(limit, len(split))
    arrays = [t.detach().cpu().numpy() for t in split.inputs]
    return [[a[i : i + batch] for a in arrays] for i in range(0, n - batch + 1, batch)]


def session_outputs(session: Session, split: Split, *, batch: int = 1) -> list[np.ndarray]:
    """Run every whole batch of ``split`` through ``session``; one stacked array per output."""
    batches = split_batches(split, batch)
    if not batches:
        raise ValueError(f"split has {len(split)} samples, fewer than one batch of {batch}")
    outs: list[list[np.ndarray]] = [[] for _ in session.outputs]
    for feeds in batches:
        for i, out in enumerate(session.run(feeds)):
            outs[i].append(out)
    return [np.concatenate(o, axis=0) for o in outs]


def evaluate_session(session: Session, split: Split, task: Task, *, batch: int = 1) -> float:
    """Run every sample of ``split`` through ``session`` and score it with ``task.score``."""
    stacked = session_outputs(session, split, batch=batch)
    used = len(stacked[0])
    inputs = [t[:used].detach().cpu().numpy() for t in split.inputs]
    return float(task.score(stacked, split.targets[:used].detach().cpu().numpy(), inputs))


def _top1(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
    from ..data.tasks import top1

    return top1(outputs, targets, inputs)


def _mse(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
    out = np.asarray(outputs[0], dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    return float(np.mean((out.reshape(t.shape) - t) ** 2))


def _auc(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
    from ..data.tasks import auc

    scores = np.asarray(outputs[-1]).reshape(len(targets), -1)
    return auc(scores[:, -1] if scores.shape[1] > 1 else scores[:, 0], targets)


def _macro_recall(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None
                  ) -> float:
    from .metrics import macro_recall

    return macro_recall(outputs[0], targets)


def _macro_f1(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
    from .metrics import macro_f1

    return macro_f1(outputs[0], targets)


def _at_k(k: int, retrieval: bool) -> Score:
    def score(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs: Any = None) -> float:
        from .metrics import recall_at_k, topk_accuracy

        if retrieval:
            return recall_at_k(outputs[0], targets, k)
        return topk_accuracy(outputs[0], targets, k)
    return score


#: name -> (score function, higher is better, classifier-like outputs); plus ``topK`` (top-k
#: accuracy, e.g. top5) and ``recall@K`` (retrieval: scores against relevant item indices or a
#: 0/1 relevance matrix), see :func:`plain_metric`.
PLAIN_METRICS: dict[str, tuple[Score, bool, bool]] = {
    "top1": (_top1, True, True), "mse": (_mse, False, False), "auc": (_auc, True, False),
    "macro_recall": (_macro_recall, True, True), "macro_f1": (_macro_f1, True, True)}

#: The names ``plain_metric`` takes, as shown to users.
METRIC_NAMES = ("top1", "topK (e.g. top5)", "recall@K (e.g. recall@10)", "macro_recall",
                "macro_f1", "mse", "auc")


def plain_metric(name: str) -> tuple[Score, bool, bool]:
    """(score, higher is better, classifier-like) of a plain metric; UnknownNameError else.
    ``topK`` and ``recall@K`` take any K >= 1."""
    import re

    if name in PLAIN_METRICS:
        return PLAIN_METRICS[name]
    m = re.fullmatch(r"(top|recall@)([0-9]+)", str(name))
    if m and int(m.group(2)) >= 1:
        return _at_k(int(m.group(2)), m.group(1) == "recall@"), True, m.group(1) == "top"
    raise UnknownNameError("metric", str(name), [*PLAIN_METRICS, "top5", "recall@10"])
