"""Which zoo model exports and verifies on which backend: one real build per cell."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..backends import BACKENDS
from ..errors import EdgekitError, ExportError

#: The fp32 target used for each registered backend's column.
COLUMN_TARGETS = {name: f"x86-{name}-fp32" for name in BACKENDS}


def check_cell(
    model: str,
    target: str,
    *,
    train_epochs: int = 0,
    verify_samples: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Build ``model`` for ``target`` in a temporary folder and report the outcome.

    ``status`` is ``verified`` or ``failed``; a failure keeps the error's class, message, and
    the op and layer it names (for export errors).
    """
    from ..models import get_spec
    from ..pipeline import compress

    spec = get_spec(model)
    torch.manual_seed(seed)
    net = spec.factory()
    task = spec.task()
    if train_epochs:
        from ..train import fit

        fit(net, task, epochs=train_epochs, seed=seed, progress=False, spec=spec)
    net.eval()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-cell-") as tmp:
        try:
            bundle = compress(
                net, spec.example_inputs(1), targets=[target], out_dir=Path(tmp) / model,
                input_names=spec.input_names, output_names=spec.output_names, task=task,
                verify_samples=verify_samples, progress=False,
            )
        except EdgekitError as exc:
            return {
                "model": model, "target": target, "status": "failed",
                "error": type(exc).__name__, "message": str(exc),
                "op": getattr(exc, "op", None) if isinstance(exc, ExportError) else None,
                "layer": getattr(exc, "layer", None) if isinstance(exc, ExportError) else None,
                "seconds": round(time.perf_counter() - start, 2),
            }
        entry = bundle.target(target)
        return {
            "model": model, "target": target, "status": "verified",
            "bytes": entry.size_bytes,
            "max_abs_diff": entry.max_abs_diff,
            "min_cosine": entry.min_cosine,
            "seconds": round(time.perf_counter() - start, 2),
        }
