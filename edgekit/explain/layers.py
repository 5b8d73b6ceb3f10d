"""Per-layer numbers of one target against PyTorch, the first layer where the error jumps, the
culprit ranking and the suggested action.

Numbers (one definition each, :mod:`edgekit.measure.metrics`), samples pooled:
``cosine`` (worst sample), ``sqnr_db``, ``max_abs``, ``rel_error`` (``||out-ref|| / ||ref||``)
and ``channel_sqnr_db``, the median over channels (axis 1 of a tensor with 3 or more axes) of
the per-channel SQNR. ``effective_sqnr_db`` is the smaller of ``sqnr_db`` and
``channel_sqnr_db``: one outlier channel keeps the tensor's SQNR high while rounding noise
drowns the other channels, and only the per-channel value shows it.

The error is *cumulative*: each runtime tensor comes from the artifact run end to end.

**First jump**: the first mapped layer (PyTorch execution order) whose effective SQNR is below
``min_sqnr_db`` (default 20 dB) *and* at least ``jump_db`` (default 6 dB) below the previous
mapped layer's (values capped at ``CAP_DB`` = 60 dB, the first layer compared with the cap).
None when no layer qualifies (e.g. an fp32 artifact, or an error that grows gradually).

**Culprits**: mapped layers ranked by the SQNR they lose against the previous mapped layer
(the same capped values), largest loss first, the first jump (if any) on top; layers that
lose nothing are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..measure.metrics import (
    channel_sqnr_db,
    cosine,
    json_number,
    max_abs_error,
    relative_error,
    sqnr_db,
)
from .mapping import LayerMatch
from .torch_capture import LayerCapture

__all__ = ["CAP_DB", "LayerNumbers", "TargetResult", "first_jump", "layer_numbers", "suggest"]

#: SQNR above this counts as exact for the jump and culprit rules.
CAP_DB = 60.0
#: An integer tensor on at most this many distinct values is on a coarse grid.
COARSE_LEVELS = 16
_LEVELS_SAMPLE = 1 << 18


@dataclass
class LayerNumbers:
    """One layer of one target: where its values came from and how far they are from PyTorch."""

    module: str
    kind: str
    depth: int
    tensor: str | None = None
    op: str | None = None
    how: str = ""
    transform: str | None = None
    precision: str | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    channel_sqnr_db: float | None = None
    max_abs: float | None = None
    rel_error: float | None = None
    ref_absmax: float | None = None
    out_absmax: float | None = None
    #: The layer alone, fed with PyTorch's own inputs (effective SQNR, dB); None where the
    #: runtime offers no way to run one layer (see :mod:`edgekit.explain.local_onnx`).
    local_sqnr_db: float | None = None
    #: Distinct values of an integer layer's runtime tensor over the samples: the grid levels
    #: these inputs use, counted on its first 2**18 values unless 16 or fewer there (None: not
    #: an integer layer).
    levels: int | None = None

    @property
    def mapped(self) -> bool:
        return self.tensor is not None

    @property
    def effective_sqnr_db(self) -> float | None:
        vals = [v for v in (self.sqnr_db, self.channel_sqnr_db) if v is not None]
        return min(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "module", "kind", "depth", "tensor", "op", "how", "transform", "precision")}
        for k in ("cosine", "sqnr_db", "channel_sqnr_db", "effective_sqnr_db", "max_abs",
                  "rel_error"):
            out[k] = json_number(getattr(self, k))
        out["local_sqnr_db"] = ("n/a" if self.local_sqnr_db is None
                                else json_number(self.local_sqnr_db))
        out["levels"] = self.levels
        return out


def layer_numbers(layer: LayerCapture, depth: int, match: LayerMatch,
                  reference: LayerCapture, precision: str | None) -> LayerNumbers:
    """Compare a match's runtime values with ``reference``'s PyTorch output (the layer's own,
    or for a fused layer the layer it was fused into)."""
    row = LayerNumbers(layer.name, layer.kind, depth)
    if match.tensor is None or match.values is None:
        return row
    ref = reference.stacked().astype(np.float64)
    if match.adjust == "relu":
        ref = np.maximum(ref, 0.0)
    elif match.adjust == "no_bias":
        ref = reference.without_bias(ref)
    out = np.concatenate([np.asarray(v, dtype=np.float64) for v in match.values], axis=0)
    out = out.reshape(ref.shape)
    row.tensor, row.op, row.how = match.tensor.name, match.tensor.op, match.how
    row.transform, row.precision = match.transform, precision
    row.cosine = float(np.min(cosine(ref, out)))
    row.sqnr_db = sqnr_db(ref, out)
    row.max_abs = max_abs_error(ref, out)
    row.rel_error = relative_error(ref, out)
    if ref.ndim >= 3 and ref.shape[1] > 1:
        row.channel_sqnr_db = float(np.median(channel_sqnr_db(ref, out, axis=1)))
    row.ref_absmax = float(np.abs(ref).max()) if ref.size else 0.0
    row.out_absmax = float(np.abs(out).max()) if out.size else 0.0
    if precision is not None and precision.startswith(("int", "uint")):
        flat = out.reshape(-1)
        row.levels = int(np.unique(flat[:_LEVELS_SAMPLE]).size)  # a sort of every value is
        if row.levels <= COARSE_LEVELS < flat.size:  # slow on big tensors; exact where coarse
            row.levels = int(np.unique(flat).size)
    return row


def _capped(x: float | None) -> float:
    if x is None or math.isnan(x):
        return -math.inf
    return min(x, CAP_DB)


def first_jump(rows: Sequence[LayerNumbers], *, min_sqnr_db: float = 20.0,
               jump_db: float = 6.0) -> LayerNumbers | None:
    prev = CAP_DB
    for r in rows:
        if not r.mapped or r.how.startswith("fused"):
            continue
        eff = _capped(r.effective_sqnr_db)
        if eff < min_sqnr_db and eff <= prev - jump_db:
            return r
        prev = eff
    return None


def culprits(rows: Sequence[LayerNumbers], jump: LayerNumbers | None) -> list[tuple[str, float]]:
    """(module, dB lost against the previous mapped layer), largest loss first."""
    lost: list[tuple[str, float]] = []
    prev = CAP_DB
    for r in rows:
        if not r.mapped or r.how.startswith("fused"):
            continue
        eff = _capped(r.effective_sqnr_db)
        if prev - eff > 0:
            lost.append((r.module, prev - eff if math.isfinite(eff) else math.inf))
        prev = eff
    lost.sort(key=lambda x: -x[1])
    if jump is not None:
        lost.sort(key=lambda x: x[0] != jump.module)
    return lost


def suggest(row: LayerNumbers) -> dict[str, str]:
    """The symptom at a culprit layer and the action that addresses it."""
    keep = f"quantization={{'keep_float': [{row.module!r}]}}"
    sq, ch = row.sqnr_db, row.channel_sqnr_db
    if row.precision is not None and not row.precision.startswith(("int", "uint")):
        return {"symptom": f"the runtime ran this layer in {row.precision}, yet it diverges",
                "action": "the error comes from its inputs or from the runtime's kernel: look "
                          "at the layers before it, and compare with the fp32 artifact"}
    if sq is not None and ch is not None and sq - ch > 10.0:
        return {"symptom": f"outlier channels: the tensor SQNR is {sq:.1f} dB but the median "
                           f"channel's is {ch:.1f} dB (a few channels set the int8 range and "
                           "the others round to a few levels)",
                "action": "equalize the channel ranges (cross-layer equalization / SmoothQuant "
                          "scaling), or 16-bit activations for this tensor, or keep the layer "
                          f"in float: {keep}"}
    if (row.ref_absmax is not None and row.out_absmax is not None
            and row.out_absmax < 0.9 * row.ref_absmax):
        return {"symptom": f"saturation: the runtime's largest value {row.out_absmax:.3g} is "
                           f"below PyTorch's {row.ref_absmax:.3g}",
                "action": "the calibration range is too narrow: use the minmax range method "
                          "or calibration data that covers these inputs, or keep the layer in "
                          f"float: {keep}"}
    eff = row.effective_sqnr_db
    if row.levels is not None and row.levels <= COARSE_LEVELS and eff is not None \
            and eff < 20.0 and row.precision is not None:
        bits = 16 if "16" in row.precision else 8
        return {"symptom": f"coarse grid: on these inputs the tensor takes {row.levels} of its "
                           f"{2 ** bits} levels (SQNR {eff:.1f} dB): its calibrated range is "
                           "far wider than their values, set by calibration inputs much larger "
                           "than these (a tail of inputs, not of elements)",
                "action": "16-bit activations for this tensor (ONNX Runtime: "
                          "activations_16bit naming the layer that reads it; LiteRT: 16x8), or "
                          f"keep the layer in float: {keep}; a tighter range (percentile) clips "
                          "the inputs that set it; calibrate on data like the inputs the model "
                          "will see"}
    return {"symptom": f"rounding noise over the whole range (SQNR {sq:.1f} dB)"
                       if sq is not None else "no numbers",
            "action": "try the percentile or entropy range method (quantization={'method': "
                      f"'percentile'}}), or keep the layer in float: {keep}"}


@dataclass
class TargetResult:
    """One target's explanation: per-layer numbers, coverage, jump, culprits, suggestion."""

    target: str
    backend: str
    precision: str
    status: str = "ok"
    reason: str | None = None
    rows: list[LayerNumbers] = field(default_factory=list)
    unmatched_tensors: int = 0
    jump: LayerNumbers | None = None
    ranked: list[tuple[str, float]] = field(default_factory=list)
    suggestion: dict[str, str] | None = None
    output: dict[str, Any] | None = None
    #: The float-domain transforms re-applied to the PyTorch reference (None: the model as
    #: given), see :mod:`edgekit.explain.reference`.
    reference: dict[str, Any] | None = None
    #: The suggestion's measured gain (``measure_suggestion=True``), see
    #: :mod:`edgekit.explain.measure`.
    measured: dict[str, Any] | None = None

    @property
    def coverage(self) -> dict[str, Any]:
        mapped = [r for r in self.rows if r.mapped]
        return {"mapped": len(mapped), "total": len(self.rows),
                "fraction": round(len(mapped) / len(self.rows), 4) if self.rows else None,
                "fused": [r.module for r in mapped if r.how.startswith("fused")],
                "by_shape": [r.module for r in mapped if r.how.startswith("shape")],
                "unmapped": [r.module for r in self.rows if not r.mapped]}

    def culprit_names(self) -> list[str]:
        return [m for m, _ in self.ranked]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "backend": self.backend,
                               "precision": self.precision, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.status != "ok":
            return out
        out["coverage"] = self.coverage
        out["output"] = self.output
        out["reference"] = self.reference
        out["first_jump"] = self.jump.module if self.jump else None
        out["culprits"] = [{"module": m, "sqnr_lost_db": json_number(d)} for m, d in self.ranked]
        out["suggestion"] = self.suggestion
        if self.measured is not None:
            out["suggestion_measured"] = self.measured
        out["layers"] = [r.to_json() for r in self.rows]
        return out
