"""The task metric measured through any Session, with the task's own scoring code."""

from __future__ import annotations

import numpy as np

from ..backends import Session
from ..data.task import Split, Task


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
