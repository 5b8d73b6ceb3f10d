"""The pruning history: plain JSON of the pruned groups in order (channel groups, and attention
records: heads or head positions removed, ``nn.MultiheadAttention`` split), replayed on a
freshly built model so the pruned ``state_dict`` loads without pickled code."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError, UsageError
from .attention import apply_record
from .graph import as_inputs, build_graph

__all__ = ["HISTORY_FORMAT", "replay"]

HISTORY_FORMAT = "edgekit.prune/1"


def replay(model: nn.Module, history: dict[str, Any] | Sequence[dict[str, Any]],
           example_inputs=None) -> nn.Module:
    """Apply a pruning ``history`` (from :attr:`PruneResult.history`, a manifest's prune record,
    or a list of them) to a freshly built ``model`` of the same architecture, in place.

    Load the pruned ``state_dict`` afterwards to get the pruned model back exactly.
    ``example_inputs`` default to the zoo spec's when the model comes from the zoo.
    """
    records = [history] if isinstance(history, dict) else list(history)
    records = [r.get("pruning", r) for r in records if r.get("stage", "prune") == "prune"]
    if example_inputs is None:
        name = getattr(model, "edgekit_name", None)
        if name is None:
            raise UsageError("replay needs example_inputs for a model that is not from the zoo")
        from ..models import get_spec

        example_inputs = get_spec(name).example_inputs(1)
    inputs = as_inputs(example_inputs)
    model.eval()
    for rec in records:
        if rec.get("format") != HISTORY_FORMAT:
            raise ConfigError(f"unknown pruning history format {rec.get('format')!r}",
                              hint=f"expected {HISTORY_FORMAT}")
        dg = None
        for g in rec["groups"]:
            if g.get("kind") == "attention":
                apply_record(model, g)
                dg = None
                continue
            if dg is None:
                dg = build_graph(model, inputs)
            named = dict(model.named_modules())
            if g["root"] not in named:
                raise ConfigError(f"pruning history names layer {g['root']!r}, which "
                                  f"{type(model).__name__} does not have")
            module = named[g["root"]]
            pruner = dg.get_pruner_of_module(module)
            fn = pruner.prune_out_channels if g["dim"] == "out" else pruner.prune_in_channels
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dg.get_pruning_group(module, fn, list(g["idxs"])).prune(record_history=False)
    return model.eval()
