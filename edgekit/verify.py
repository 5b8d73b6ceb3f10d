"""Parity of a loaded artifact against its PyTorch reference, per output.

Example::

    report = verify(model, session, samples, tolerance={"max_abs": 1e-4, "min_cosine": 0.999},
                    classifier_outputs=["logits"])
    print(report.to_json())
    report.raise_for_failure()   # VerificationError naming the output and the numbers

Numbers per output, over all samples, each defined once in :mod:`edgekit.measure.metrics`
(the bench report uses the same functions, so a number means the same in both); a *sample* is
one call of the session:

* ``max_abs``: max |session - reference| over every element.
* ``scale``: max |reference| of the output over every sample. The ``max_abs`` tolerance scales
  with it, per output: the bound is ``tolerance.max_abs * max(1, scale)`` (``abs_bound``), so
  an output in the hundreds (boxes in pixels) is held to the same relative precision as one
  near 1 (probabilities beside it keep the plain absolute bound).
* ``max_rel``: max |session - reference| / max(|reference|, 1e-6) over every element
  (informational: it explodes near zero, so no tolerance uses it).
* ``cosine``: the *worst* (minimum) per-sample cosine similarity of the flattened output
  (two all-zero vectors count as 1.0); ``mean_cosine`` the mean.
* ``top1_agreement``: for outputs marked as classifier logits, the fraction (0..1) of rows
  (argmax over the last axis, every leading index a row) where session and reference agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .backends._common import flatten_outputs
from .backends.base import Session
from .errors import UsageError, VerificationError
from .measure.metrics import cosine, json_number, max_abs_error, max_rel_error, top1_matches
from .profiles import Tolerance

__all__ = ["Tolerance", "OutputReport", "VerifyReport", "verify"]


@dataclass
class OutputReport:
    """Parity numbers of one output, and why it failed (empty when it passed)."""

    name: str
    max_abs: float
    max_rel: float
    cosine: float
    mean_cosine: float
    top1_agreement: float | None
    num_samples: int
    failures: list[str] = field(default_factory=list)
    #: max |reference| over every sample; the max_abs bound is tolerance x max(1, scale)
    scale: float = 0.0
    abs_bound: float | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "max_abs": json_number(self.max_abs),
            "scale": json_number(self.scale),
            "abs_bound": json_number(self.abs_bound),
            "max_rel": json_number(self.max_rel),
            "cosine": json_number(self.cosine),
            "mean_cosine": json_number(self.mean_cosine),
            "top1_agreement": json_number(self.top1_agreement),
            "num_samples": self.num_samples,
            "failures": list(self.failures),
        }


@dataclass
class VerifyReport:
    """Per-output parity of a session against the reference model."""

    outputs: list[OutputReport]
    tolerance: Tolerance
    num_samples: int
    backend: str = ""
    session_info: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def output(self, name: str) -> OutputReport:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "backend": self.backend,
            "num_samples": self.num_samples,
            "tolerance": self.tolerance.to_json(),
            "outputs": [o.to_json() for o in self.outputs],
            "session": dict(self.session_info),
        }

    def raise_for_failure(self, *, context: str | None = None) -> None:
        """Raise :class:`VerificationError` naming every failing output and its numbers.

        ``context`` (e.g. the target name) prefixes the message.
        """
        bad = [o for o in self.outputs if not o.passed]
        if not bad:
            return
        lines = [f"output {o.name!r}: " + "; ".join(o.failures)
                 + f" (max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}, cosine {o.cosine:.6f})"
                 for o in bad]
        worst = max(bad, key=lambda o: (o.max_abs if math.isfinite(o.max_abs) else math.inf))
        info = self.session_info or {}
        runtime = " ".join(str(info[k]) for k in ("runtime", "version") if info.get(k))
        versions = info.get("versions")
        if isinstance(versions, dict) and versions:
            runtime += " (" + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ")"
        raise VerificationError(
            (f"{context}: " if context else "")
            + f"{self.backend or 'artifact'} disagrees with the PyTorch reference on "
            f"{len(bad)} of {len(self.outputs)} output(s) over {self.num_samples} sample(s):\n  "
            + "\n  ".join(lines)
            + f"\n  worst output: {worst.name!r} (max abs diff {worst.max_abs:.3g}, max rel "
            f"{worst.max_rel:.3g})"
            + f"\n  runtime: {runtime or self.backend or 'unknown'}; torch "
            f"{torch.__version__.split('+')[0]}",
            hint="check the export (ops, dtypes, layout) or loosen the tolerance if the "
            "difference is expected (e.g. reduced precision)",
        )


class _Acc:
    """Running numbers for one output."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.scale = 0.0
        self.cosines: list[float] = []
        self.agree = 0
        self.rows = 0
        self.shape_error: str | None = None


def _to_torch(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def flips_allowed(rows: int, min_agreement: float, significance: float = 0.01) -> int:
    """The most top-1 disagreements among ``rows`` that an artifact agreeing at the rate
    ``min_agreement`` shows with probability at least ``significance`` (binomial upper tail):
    4 rows at 0.97 allow 1 (a 12% chance), 201 rows allow 12."""
    q = 1.0 - min_agreement
    if q <= 0.0:
        return 0
    k, tail = 0, 1.0  # tail = P(X >= k)
    while k < rows:
        tail -= math.comb(rows, k) * q**k * (1 - q) ** (rows - k)
        if tail < significance:  # P(X >= k + 1) is under the significance: k is the most
            return k
        k += 1
    return rows


def verify(
    reference_model: torch.nn.Module,
    session: Session,
    samples: Sequence[Sequence[np.ndarray]],
    *,
    tolerance: Tolerance | Mapping[str, Any] | None = None,
    classifier_outputs: Sequence[str | int] = (),
    top1_as_rate: bool = False,
) -> VerifyReport:
    """Run every sample through ``session`` and ``reference_model`` and compare per output.

    ``samples``: input tuples of numpy arrays in model input order, batch as the artifact
    expects. The reference runs in eval mode under ``torch.no_grad()`` (its training flag is
    restored afterwards). ``classifier_outputs``: names (or indices) of outputs that are class
    logits; they also get top-1 agreement. ``top1_as_rate``: the tolerance's top-1 agreement
    is a rate the few rows here are a sample of (a bundle's stored reference pairs): the check
    allows the disagreements that rate gives with probability over 1% (:func:`flips_allowed`).
    """
    tol = Tolerance.coerce(tolerance)
    samples = list(samples)
    if not samples:
        raise UsageError("verify needs at least one sample")
    names = [s.name for s in session.outputs]
    classifiers: set[int] = set()
    for c in classifier_outputs:
        if isinstance(c, int) and not isinstance(c, bool):
            if not 0 <= c < len(names):
                raise UsageError(f"classifier output index {c} out of range for outputs {names}")
            classifiers.add(c)
        elif c in names:
            classifiers.add(names.index(c))
        else:
            raise UsageError(f"classifier output {c!r} is not one of the outputs {names}")

    accs = [_Acc() for _ in names]
    was_training = {m: m.training for m in reference_model.modules()}
    reference_model.eval()
    try:
        for k, sample in enumerate(samples):
            if isinstance(sample, np.ndarray):
                sample = (sample,)
            with torch.no_grad():
                ref = [t.detach().cpu().numpy() for t in
                       flatten_outputs(reference_model(*(_to_torch(x) for x in sample)))]
            got = session.run([np.asarray(x) for x in sample])
            if len(ref) != len(got) or len(got) != len(names):
                raise VerificationError(
                    f"sample {k}: the session returned {len(got)} outputs {names}, "
                    f"the reference model {len(ref)}"
                )
            for i, (g, r) in enumerate(zip(got, ref)):
                acc = accs[i]
                if acc.shape_error:
                    continue
                g = np.asarray(g)
                if g.shape != r.shape:
                    acc.shape_error = (
                        f"shape {list(g.shape)} differs from the reference's {list(r.shape)} "
                        f"(sample {k})"
                    )
                    continue
                abs_err, rel_err = max_abs_error(r, g), max_rel_error(r, g)
                if r.size:
                    acc.scale = max(acc.scale, float(np.nanmax(np.abs(r.astype(np.float64)))))
                if math.isnan(abs_err):
                    acc.max_abs = acc.max_rel = float("nan")
                else:
                    acc.max_abs = max(acc.max_abs, abs_err)
                    acc.max_rel = max(acc.max_rel, rel_err)
                acc.cosines.append(float(cosine(r[None], g[None])[0]))
                if i in classifiers:
                    agree, rows = top1_matches(r, g)
                    acc.agree += agree
                    acc.rows += rows
    finally:
        for m, flag in was_training.items():
            m.training = flag

    reports = []
    for i, (name, acc) in enumerate(zip(names, accs)):
        top1 = (acc.agree / acc.rows if acc.rows else None) if i in classifiers else None
        cos_min = min(acc.cosines) if acc.cosines else float("nan")
        cos_mean = float(np.mean(acc.cosines)) if acc.cosines else float("nan")
        if any(math.isnan(c) for c in acc.cosines):
            cos_min = cos_mean = float("nan")
        failures: list[str] = []
        bound = None if tol.max_abs is None else tol.max_abs * max(1.0, acc.scale)
        if acc.shape_error:
            failures.append(acc.shape_error)
        else:
            if bound is not None and tol.max_abs is not None and not acc.max_abs <= bound:
                failures.append(
                    f"max abs diff {acc.max_abs:.3g} > tolerance {tol.max_abs:.3g}"
                    + (f" x output scale {acc.scale:.4g} = {bound:.3g}" if acc.scale > 1 else ""))
            if tol.min_cosine is not None and not cos_min >= tol.min_cosine:
                failures.append(f"cosine {cos_min:.6f} < tolerance {tol.min_cosine:.6f}")
            if tol.min_top1_agreement is not None and top1 is not None:
                allowed = flips_allowed(acc.rows, tol.min_top1_agreement) if top1_as_rate \
                    else None
                if allowed is not None and acc.rows - acc.agree > allowed:
                    failures.append(
                        f"top-1 agreement {top1:.4f} ({acc.agree}/{acc.rows}): "
                        f"{acc.rows - acc.agree} disagreement(s), more than the {allowed} an "
                        f"agreement rate of {tol.min_top1_agreement:.4f} gives on "
                        f"{acc.rows} rows with probability over 1%")
                elif allowed is None and not top1 >= tol.min_top1_agreement:
                    failures.append(
                        f"top-1 agreement {top1:.4f} ({acc.agree}/{acc.rows}) < tolerance "
                        f"{tol.min_top1_agreement:.4f}"
                    )
        reports.append(
            OutputReport(
                name=name,
                max_abs=acc.max_abs,
                max_rel=acc.max_rel,
                cosine=cos_min,
                mean_cosine=cos_mean,
                top1_agreement=top1,
                num_samples=len(samples),
                failures=failures,
                scale=acc.scale,
                abs_bound=bound,
            )
        )
    return VerifyReport(
        outputs=reports,
        tolerance=tol,
        num_samples=len(samples),
        backend=str(getattr(session, "backend", "")),
        session_info=dict(getattr(session, "info", {}) or {}),
    )
