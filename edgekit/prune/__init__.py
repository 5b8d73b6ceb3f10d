"""Structured pruning: :func:`prune` a model on torch-pruning's dependency graph (all or
nothing: the model passed in changes only on success), with head-aware attention pruning and
LSTM / GRU / RNN hidden-unit pruners; :func:`replay` the recorded history on a fresh model,
recover accuracy with :func:`fine_tune` / :func:`prune_and_fine_tune`, or prune to a measured
latency with :func:`prune_to_latency`.

Names load lazily so ``edgekit prune --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prune": "pruner", "PruneResult": "pruner", "replay": "history", "HISTORY_FORMAT": "history",
    "default_ignored_layers": "graph", "layers_feeding_outputs": "graph", "build_graph": "graph",
    "count_macs": "targets", "count_params": "targets", "IMPORTANCES": "importance",
    "LSTMPruner": "lstm", "GRUPruner": "gru", "RNNPruner": "gru",
    "ATTENTION_MODES": "attention", "PrunableMultiheadAttention": "attention",
    "fine_tune": "recover", "prune_and_fine_tune": "recover", "merge_histories": "recover",
    "measure_latency": "latency", "prune_to_latency": "latency",
}
#: ``edgekit.prune_model`` is :func:`prune` (``edgekit.prune`` is this package).
_ALIASES = {"prune_model": "prune"}

__all__ = sorted([*_EXPORTS, *_ALIASES])


def __getattr__(name: str) -> Any:
    target = _ALIASES.get(name, name)
    if target in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[target]}"), target)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
