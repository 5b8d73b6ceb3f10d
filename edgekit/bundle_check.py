"""``edgekit verify``: is a bundle intact, and do its artifacts still give its reference outputs?

1. Checksums: every file the manifest lists (artifacts and ``reference.npz``) must exist with
   the recorded sha256. Any problem stops here with a :class:`BundleError` naming every bad file.
2. Reference inputs: the stored inputs (``reference.npz``, ``input.<name>`` stacked along axis
   0) run through each target on its runtime; each output is compared with the stored PyTorch
   output (max abs diff, cosine, top-1 agreement for classifiers) against the target profile's
   tolerance. A runtime that is not installed is reported as skipped, with its pip extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends import get_backend
from .bundle import REFERENCE, Bundle, check_record, load_bundle
from .errors import BundleError, EdgekitError
from .manifest import ModelRecord
from .verify import verify

__all__ = ["verify_bundle"]


class _StoredOutputs(torch.nn.Module):
    """Stands in for the PyTorch model: returns the stored reference outputs in order."""

    def __init__(self, outputs: list[list[np.ndarray]]) -> None:
        super().__init__()
        self._outputs = outputs
        self._next = 0

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._outputs[self._next]
        self._next += 1
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in out)


def check_checksums(bundle: Bundle) -> list[str]:
    """Every file record checked; returns the paths checked, raises naming all bad files."""
    problems, checked = [], []
    for rec in bundle.manifest.files():
        try:
            check_record(bundle.root, rec)
            checked.append(rec.path)
        except BundleError as exc:
            problems.append(exc.message)
    if problems:
        raise BundleError(
            f"bundle {bundle.root} failed its checksums ({len(problems)} file(s)):\n  "
            + "\n  ".join(problems),
            hint="the bundle was altered after the build; rebuild it (nothing was run)",
        )
    return checked


def verify_bundle(path: str | Path, targets: Sequence[str] | None = None) -> dict[str, Any]:
    """Check and re-run a bundle; returns a JSON-able report with ``passed`` per target.

    Raises :class:`BundleError` for a damaged bundle (before anything runs).
    """
    bundle = load_bundle(path)
    chosen = list(targets) if targets else bundle.targets
    for t in chosen:
        bundle.target(t)  # unknown target -> UnknownNameError listing the bundle's targets
    checked = check_checksums(bundle)
    if bundle.manifest.reference is None:
        raise BundleError(f"bundle {bundle.root} has no reference data to verify against")
    from ._npz import check_npz

    check_npz(bundle.root / REFERENCE, "reference data")  # declared sizes before numpy allocates
    with np.load(bundle.root / REFERENCE, allow_pickle=False) as npz:
        ref = {k: npz[k] for k in npz.files}
    model = bundle.manifest.model or ModelRecord()
    in_names, out_names = model.input_names, model.output_names
    missing = [f"input.{n}" for n in in_names if f"input.{n}" not in ref] + [
        f"output.{n}" for n in out_names if f"output.{n}" not in ref
    ]
    if missing or not in_names:
        lacking = ", ".join(missing) or "inputs"
        raise BundleError(f"bundle {bundle.root}: {REFERENCE} lacks {lacking}")
    pairs = int(ref[f"input.{in_names[0]}"].shape[0])
    samples = [[ref[f"input.{n}"][k] for n in in_names] for k in range(pairs)]
    expected = [[ref[f"output.{n}"][k] for n in out_names] for k in range(pairs)]
    classifier = [out_names[0]] if model.is_classifier and out_names else []

    report: dict[str, Any] = {
        "bundle": str(bundle.root),
        "checksums": {"passed": True, "files": checked},
        "reference_pairs": pairs,
        "targets": {},
    }
    for name in chosen:
        entry = bundle.target(name)
        backend = get_backend(entry.backend)
        reason = backend.available()
        if reason is not None:
            report["targets"][name] = {
                "status": "skipped", "backend": entry.backend, "reason": reason,
                "install": f'pip install "edgekit[{backend.extra}]"',
            }
            continue
        tolerance = entry.tolerance
        try:
            session = bundle.load(name)
            # the few stored pairs are a sample of what the build verified at the tolerance's
            # agreement rate: one near-tied row flipping is not a broken file
            result = verify(_StoredOutputs(expected), session, samples, tolerance=tolerance,
                            classifier_outputs=classifier, top1_as_rate=True)
        except EdgekitError as exc:
            report["targets"][name] = {"status": "failed", "backend": entry.backend,
                                       "error": exc.message}
            continue
        report["targets"][name] = {
            "status": "passed" if result.passed else "failed",
            "backend": entry.backend,
            "tolerance": result.tolerance.to_json(),
            "runtime": {k: result.session_info.get(k) for k in ("runtime", "version")},
            "outputs": [
                {k: o[k] for k in ("name", "passed", "max_abs", "max_rel", "cosine",
                                   "top1_agreement", "failures")}
                for o in result.to_json()["outputs"]
            ],
        }
    statuses = [t["status"] for t in report["targets"].values()]
    report["passed"] = "failed" not in statuses
    report["skipped"] = statuses.count("skipped")
    return report
