"""The fidelity gate of an int8 build without a task: held-out data against fp32.

Without a task there is no accuracy to gate on, and plain cosine is blind to an output that
keeps its offset but loses what depends on the input. The gate runs held-out inputs (a part of
the calibration data kept out of calibration, or ``compress(verify_data=...)``) through the
int8 artifact and the PyTorch model and compares, per output, with the one definition of each
number in :mod:`edgekit.measure.metrics`:

* ``centred_cosine``: mean over the held-out calls of the cosine of each call's output minus
  its own mean;
* ``sqnr_db``: SQNR over every held-out element;
* ``top1_agreement``: for the first output when its class axis has two or more entries (class
  scores by convention: the last axis of a ``(batch, classes)`` or ``(batch, tokens,
  classes)`` output, axis 1 of a dense ``(batch, classes, H, W, ...)`` one, as PyTorch's
  losses take it: per-pixel labels of a segmentation); gated only over at least
  :data:`MIN_TOP1_ROWS` rows (fewer rows make a single disagreement a failure), reported
  always.

Thresholds come from the target profile's ``[gate]`` table (``false`` switches one off)::

    [gate]
    holdout = 0.25             # fraction of the calibration batches held out
    min_centred_cosine = 0.8
    min_sqnr_db = 8.0
    min_top1_agreement = 0.8
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..backends._common import flatten_outputs
from ..measure.metrics import centred_cosine, json_number, sqnr_db, top1_agreement
from ..schema import Field, check_table

__all__ = ["GATE_SCHEMA", "MIN_TOP1_ROWS", "FidelityGate", "split_holdout"]

#: Rows the top-1 agreement is gated over at least.
MIN_TOP1_ROWS = 10

#: The profile's ``[gate]`` keys.
GATE_SCHEMA: dict[str, Field] = {
    "holdout": Field(float, low=0, high=0.9),
    "min_centred_cosine": Field(float, low=-1, high=1, off=True),
    "min_sqnr_db": Field(float, off=True),
    "min_top1_agreement": Field(float, low=0, high=1, off=True),
}


def class_scores_last(stacked: np.ndarray) -> np.ndarray:
    """``stacked`` (held-out calls x one call's output) with the class axis last: a call's
    output of rank 4 or more is channels-first (``batch, classes, H, W, ...``), its class axis
    moved to the end; lower ranks have it last already."""
    return np.moveaxis(stacked, 2, -1) if stacked.ndim >= 5 else stacked


@dataclass(frozen=True)
class FidelityGate:
    """Thresholds of the held-out fidelity check (None: that check is off)."""

    holdout: float = 0.25
    min_centred_cosine: float | None = 0.8
    min_sqnr_db: float | None = 8.0
    min_top1_agreement: float | None = 0.8

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None, where: str = "[gate]"
                   ) -> FidelityGate:
        """The gate of a profile's ``[gate]`` table (checked; defaults for missing keys)."""
        return cls(**check_table(dict(table or {}), GATE_SCHEMA, where=where))

    def measure(self, model: torch.nn.Module, session: Any,
                batches: Sequence[Sequence[np.ndarray]], names: Sequence[str]
                ) -> dict[str, Any]:
        """The numbers per output on ``batches`` (one call each) and the failures."""
        refs: list[list[np.ndarray]] = []
        outs: list[list[np.ndarray]] = []
        with torch.no_grad():
            for b in batches:
                r = flatten_outputs(model(*(torch.from_numpy(np.asarray(a)) for a in b)))
                refs.append([t.detach().numpy() for t in r])
                outs.append([np.asarray(o) for o in session.run([np.asarray(a) for a in b])])
        per: list[dict[str, Any]] = []
        failures: list[str] = []
        for i, name in enumerate(names):
            ref = np.stack([r[i] for r in refs]).astype(np.float64)
            out = np.stack([o[i] for o in outs]).astype(np.float64).reshape(ref.shape)
            cc = centred_cosine(ref, out)
            row: dict[str, Any] = {"name": name, "centred_cosine": float(np.mean(cc)),
                                   "centred_cosine_min": float(np.min(cc)),
                                   "sqnr_db": sqnr_db(ref, out)}
            rows = 0
            r1, o1 = class_scores_last(ref), class_scores_last(out)
            if i == 0 and r1.ndim >= 2 and r1.shape[-1] >= 2:
                row["top1_agreement"] = top1_agreement(r1, o1)
                rows = int(r1.size // r1.shape[-1])
                row["top1_rows"] = rows
            fails = []
            c, s, t = row["centred_cosine"], row["sqnr_db"], row.get("top1_agreement")
            if self.min_centred_cosine is not None and not c >= self.min_centred_cosine:
                fails.append(f"centred cosine {c:.4f} < {self.min_centred_cosine:g}")
            if self.min_sqnr_db is not None and not s >= self.min_sqnr_db:
                fails.append(f"SQNR {s:.2f} dB < {self.min_sqnr_db:g} dB")
            if self.min_top1_agreement is not None and t is not None and \
                    rows >= MIN_TOP1_ROWS and not t >= self.min_top1_agreement:
                fails.append(f"top-1 agreement {t:.4f} < {self.min_top1_agreement:g}")
            if fails:
                failures.append(f"output {name!r}: " + ", ".join(fails))
            per.append({k: (json_number(v) if isinstance(v, float) else v)
                        for k, v in row.items()})
        return {"batches": len(batches), "outputs": per, "failures": failures,
                "thresholds": {"min_centred_cosine": self.min_centred_cosine,
                               "min_sqnr_db": self.min_sqnr_db,
                               "min_top1_agreement": self.min_top1_agreement}}

    def verdict(self, numbers: Mapping[str, Any], source: str) -> str | None:
        """None when every output passed, else the reason with the numbers."""
        if not numbers["failures"]:
            return None
        return (f"held-out fidelity against fp32 ({numbers['batches']} batch(es) of {source}) "
                "is too low: " + "; ".join(numbers["failures"]))


def split_holdout(batches: list[list[np.ndarray]], fraction: float,
                  spare: list[list[np.ndarray]] | None = None
                  ) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]], str]:
    """(calibration, held out, what was held out). ``spare``: batches of the calibration data
    beyond the calibration sample count; the held-out batches come from them when there are
    any (calibration keeps every sample it was asked for), else the last ``fraction`` of
    ``batches`` is held out (at least one batch when there are two or more). With one batch (or
    ``fraction`` 0) nothing is held out and the gate checks the calibration batches."""
    if fraction > 0 and spare:
        k = max(1, math.floor(len(batches) * fraction / (1 - fraction) + 0.5))
        held = spare[:k]
        return batches, held, (f"{len(held)} calibration batch(es) beyond the "
                               "calibration samples, held out")
    if fraction <= 0 or len(batches) < 2:
        return batches, list(batches), "the calibration batches (none held out)"
    k = min(len(batches) - 1, max(1, math.floor(len(batches) * fraction + 0.5)))
    return batches[:-k], batches[-k:], f"the last {k} calibration batch(es), held out"
