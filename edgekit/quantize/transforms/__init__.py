"""Float-domain transforms applied to a copy of the PyTorch model before it is exported for
int8, so that every runtime's quantizer starts from weights and activations that quantize
better. Each keeps the float function except bias correction, which moves the output mean by
the expected weight-rounding error on purpose.

In order:

1. batch-norm folding (:mod:`.bn_fold`), so equalization sees the weights that execute;
2. SmoothQuant (:mod:`.smoothquant`): LayerNorm -> Linear activation outliers into weights;
3. cross-layer equalization with bias absorption (:mod:`.equalize`);
4. learned rounding (:mod:`.adaround`): the weights rounded onto the per-channel int8 grid
   layer by layer, written back on the grid so each runtime's quantizer reproduces them;
5. empirical bias correction (:mod:`.bias_correction`), last, on the final weights (layers
   AdaRound put on the grid have no rounding error left to correct and are skipped).

:func:`apply_transforms` returns the transformed copy and a record for the manifest (what was
applied where, and why a transform did nothing, e.g. a graph torch.fx cannot trace).

Example::

    model8, record = apply_transforms(model, batches, equalize=True, bias_correction=True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from ...modulenames import in_modules
from ._graph import from_run, trace
from .adaround import DEFAULT_ITERATIONS
from .adaround import adaround as _adaround
from .bias_correction import bias_correction as _bias_correction
from .bn_fold import fold_batchnorm
from .equalize import RELU6_MODES, ChannelClamp, absorb_bias, find_pairs
from .equalize import equalize as _equalize
from .smoothquant import find_sites
from .smoothquant import smoothquant as _smoothquant

__all__ = ["apply_transforms", "fold_batchnorm_checked", "ChannelClamp", "RELU6_MODES"]


def apply_transforms(model: nn.Module, calibration: Sequence[Sequence[np.ndarray]], *,
                     equalize: bool = False, bias_correction: bool = False,
                     smoothquant: bool = False, alpha: float = 0.5, relu6: str = "skip",
                     adaround: bool = False, adaround_iterations: int = DEFAULT_ITERATIONS,
                     keep_float: Sequence[str] = (), weight_qmax: int = 127,
                     corrections: dict[str, Any] | None = None
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """A transformed copy of ``model`` (in eval mode; ``model`` is untouched) and the record.
    Bias correction and AdaRound target the runtime's weight grid ``-weight_qmax..weight_qmax``;
    ``corrections`` (when given) receives each corrected layer's bias correction.

    With every switch off, ``model`` itself is returned and the record says so.
    """
    record: dict[str, Any] = {"equalize": equalize, "bias_correction": bias_correction,
                              "smoothquant": smoothquant, "adaround": adaround}
    if not (equalize or bias_correction or smoothquant or adaround):
        return model, {**record, "applied": []}
    out = copy.deepcopy(model).eval()
    applied: list[str] = []
    skipped: dict[str, str] = {}
    example = calibration[0] if len(calibration) else None
    graph, why = trace(out, example)
    run_note = from_run(why)
    if run_note is not None:
        record["graph"] = run_note
    if graph is not None:
        folded = fold_batchnorm(out, graph)
        record["bn_folded"] = folded
        if folded:
            graph, why = trace(out, example)  # BN nodes are Identity now
    if smoothquant:
        if graph is None:
            skipped["smoothquant"] = why or "no graph"
        else:
            sites = find_sites(out, graph)
            done = _smoothquant(out, sites, calibration, alpha=alpha)
            record["smoothquant_alpha"] = alpha
            record["smoothquant_norms"] = done
            if done:
                applied.append("smoothquant")
            else:
                skipped["smoothquant"] = "no LayerNorm feeding only Linear/attention layers"
    if equalize:
        if graph is None:
            skipped["equalize"] = why or "no graph"
        else:
            pairs = find_pairs(out, graph, relu6=relu6)
            if pairs:
                rounds = _equalize(out, pairs)
                record["equalized_pairs"] = [
                    f"{p.first} -> {p.act or 'linear'} -> {p.second}" for p in pairs]
                record["equalize_rounds"] = rounds
                record["equalize_relu6"] = relu6
                record["clamped_relu6"] = sorted(n for n, m in out.named_modules()
                                                 if isinstance(m, ChannelClamp))
                # a layer kept in float computes as in the model: no bias moved through it
                record["bias_absorbed"] = absorb_bias(
                    out, [p for p in pairs if not in_modules(p.first, keep_float)
                          and not in_modules(p.second, keep_float)], calibration)
                applied.append("equalize")
            else:
                skipped["equalize"] = ("no conv/linear -> [ReLU] -> conv/linear chain whose "
                                       "first output feeds only the second")
    if run_note is not None and (record.get("bn_folded") or applied):
        out = _unless_changed(model, out, example, record, applied, skipped)
    on_grid: list[str] = []
    if adaround:
        ada = _adaround(out, calibration, skip=keep_float, iterations=adaround_iterations,
                        qmax=weight_qmax)
        record["adaround_grid"] = f"-{weight_qmax}..{weight_qmax}"
        record["adaround_layers"] = ada["layers"]  # per layer: output error, nearest vs learned
        record["adaround_iterations"] = ada.get("iterations", adaround_iterations)
        record["adaround_seconds"] = ada["seconds"]
        if ada["skipped"]:
            record["adaround_skipped"] = ada["skipped"]
        on_grid = [r["layer"] for r in ada["layers"]]
        if graph is None and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
                                 for m in out.modules()):
            record["adaround_note"] = (
                "batch norms not folded (no graph): a runtime that folds them into the "
                "convolutions re-rounds those weights to nearest")
        if on_grid:
            applied.append("adaround")
        else:
            skipped["adaround"] = "no conv/linear layer ran on the calibration data"
    if bias_correction:
        done = _bias_correction(out, calibration, skip=[*keep_float, *on_grid],
                                qmax=weight_qmax, amounts=corrections)
        record["bias_correction_grid"] = f"-{weight_qmax}..{weight_qmax}"
        record["bias_corrected"] = done
        if done:
            applied.append("bias_correction")
        elif on_grid:
            skipped["bias_correction"] = ("the layers are on the int8 grid already (adaround): "
                                          "no rounding error left to correct")
        else:
            skipped["bias_correction"] = "no conv/linear layer ran on the calibration data"
    record["applied"] = applied
    if skipped:
        record["skipped"] = skipped
    return out, record


#: The least SQNR (dB) of a transformed model's outputs against the original's on the first
#: calibration batch, where the graph came from one run (folding and equalizing keep the
#: function up to float rounding: 120+ dB; a pattern the run misread gives tens of dB).
RUN_GRAPH_MIN_SQNR_DB = 60.0


def _unless_changed(model: nn.Module, out: nn.Module, example: Any, record: dict[str, Any],
                    applied: list[str], skipped: dict[str, str]) -> nn.Module:
    """``out`` if it computes what ``model`` computes on ``example``; else an untransformed
    copy, the record saying why (a graph read from one run sees one path, and no reader of a
    tensor outside torch's functions)."""
    from ...measure.metrics import sqnr_db
    from ._graph import run_batches

    was_training = model.training
    model.eval()  # compared as the copy runs: in inference mode
    try:
        ref, new = (_float_tensors(next(run_batches(m, [example]))) for m in (model, out))
    finally:
        model.train(was_training)
    flat = list(zip(ref, new))
    db = min((sqnr_db(a.numpy(), b.numpy()) for a, b in flat), default=float("inf"))
    record["run_graph_check_sqnr_db"] = round(db, 1) if math.isfinite(db) else "inf"
    if db >= RUN_GRAPH_MIN_SQNR_DB:
        return out
    undone = [*(["bn_fold"] if record.get("bn_folded") else []), *applied]
    for name in undone:
        skipped[name] = (f"the transformed model departs from the model on the first "
                         f"calibration batch (SQNR {db:.1f} dB < {RUN_GRAPH_MIN_SQNR_DB}): "
                         "the graph of one run misread a pattern; not applied")
    record["bn_folded"] = []
    applied.clear()
    for key in ("equalized_pairs", "equalize_rounds", "equalize_relu6", "bias_absorbed",
                "smoothquant_norms", "smoothquant_alpha", "clamped_relu6"):
        record.pop(key, None)
    return copy.deepcopy(model).eval()


def fold_batchnorm_checked(model: nn.Module, example: Sequence[np.ndarray] | None
                           ) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` (eval) with its batch norms folded into their convolutions, by the
    graph :func:`trace` gives on ``example``, and the folds; where that graph came from a
    run, the folded copy is kept only if it computes what ``model`` does on ``example`` (else
    a plain copy and no folds). Without ``example``, torch.fx's graph only."""
    out = copy.deepcopy(model).eval()
    graph, why = trace(out, example)
    folded = fold_batchnorm(out, graph) if graph is not None else []
    if folded and from_run(why) is not None:
        record: dict[str, Any] = {"bn_folded": folded}
        out = _unless_changed(model, out, example, record, [], {})
        folded = record["bn_folded"]
    return out, folded


def _float_tensors(out: Any) -> list[Any]:
    """The floating-point tensors in a model's output (tuples, lists, dicts and a library's
    output classes that are mappings, walked in order)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _float_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _float_tensors(v)]
    return []
