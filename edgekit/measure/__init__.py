"""Measurement, below every stage: one timer, one scorer, one definition of each fidelity
number. verify, bench, quantize and prune all measure through here, so a number means the same
wherever it is reported.

* :mod:`.metrics`: cosine, centred cosine, SQNR, top-1 agreement, max abs/rel error;
* :mod:`.timing`: the interleaved timer and :class:`LatencyStats`;
* :mod:`.scoring`: a session scored on a task split, and the plain metrics for user data.

Only numpy, torch, :mod:`edgekit.errors` and :mod:`edgekit.backends.base` are imported here
(the plain metrics use :mod:`edgekit.data.tasks` when called).
"""

from .metrics import (
    centred_cosine,
    compare_outputs,
    cosine,
    max_abs_error,
    max_rel_error,
    sqnr_db,
    top1_agreement,
    top1_matches,
)
from .scoring import evaluate_session, plain_metric, session_outputs, split_batches
from .timing import LatencyStats, collect_interleaved, time_interleaved, timed_call

__all__ = [
    "LatencyStats", "centred_cosine", "collect_interleaved", "compare_outputs", "cosine",
    "evaluate_session", "max_abs_error", "max_rel_error", "plain_metric", "session_outputs",
    "split_batches", "sqnr_db", "time_interleaved", "timed_call", "top1_agreement",
    "top1_matches",
]
