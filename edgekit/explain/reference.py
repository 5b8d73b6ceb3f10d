"""Like-for-like references: the PyTorch model an int8 artifact was really exported from.

An int8 build exports a transformed copy of the model (batch-norm folding, cross-layer
equalization with bias absorption, SmoothQuant, bias correction: :mod:`edgekit.quantize.
transforms`), recorded in the manifest's ``quantization.transforms``. Equalization rescales
channels between two layers and keeps the float function end to end, so the tensor between
them differs from the user's model by a per-channel scale: compared with the untransformed
model, that layer would look broken in every int8 artifact. :func:`transformed_reference`
re-applies the recorded transforms to the model before capture.

Batch-norm folding and the equalization scales depend on the weights only and are reproduced
exactly. Bias absorption is estimated from calibration data, which a bundle does not hold: the
biases it set are taken from the record (``absorbed_biases``; those layers then carry their
bias correction too). SmoothQuant's scales are re-estimated on the inputs explain runs (the
report says so).
Bias correction is not re-applied: it changes the float function on purpose (by the expected
rounding error), so the uncorrected layer is the right reference for the int8 one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DATA_FREE", "transformed_reference"]

#: Transforms reproduced exactly from the weights alone.
DATA_FREE = ("bn_fold", "equalize")

NOT_BIAS_CORRECTION = ("it moves each layer's mean output by the expected int8 rounding error "
                       "on purpose: the int8 artifact is compared with the uncorrected layers, "
                       "which is the error it has against the model")


def transformed_reference(model: torch.nn.Module, record: dict[str, Any] | None,
                          samples: Sequence[Sequence[np.ndarray]],
                          keep_float: Sequence[str] = ()
                          ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """``model`` with ``record``'s transforms re-applied (``model`` itself, and None, when the
    record applied none), and what was re-applied.

    Example::

        ref, note = transformed_reference(model, manifest_entry["quantization"]["transforms"],
                                          samples)
    """
    if not record or not (record.get("applied") or record.get("bn_folded")):
        return model, None
    applied = list(record.get("applied") or [])
    flags = {k: k in applied for k in ("equalize", "smoothquant")}
    absorbed = record.get("absorbed_biases") or {}
    # bias absorption moves a data-dependent amount between biases: taken from the record, not
    # re-estimated (with no amounts recorded, and no SmoothQuant needing data, it is skipped)
    data = [list(s) for s in samples]
    if record.get("bias_absorbed") and not absorbed and not flags["smoothquant"]:
        data = []
    if any(flags.values()):
        from ..quantize.transforms import apply_transforms

        out, redone = apply_transforms(
            model, data, keep_float=keep_float,
            equalize=flags["equalize"], smoothquant=flags["smoothquant"],
            alpha=float(record.get("smoothquant_alpha", 0.5)),
            relu6=str(record.get("equalize_relu6", "skip")))
    else:  # batch-norm folding alone
        from ..quantize.transforms import fold_batchnorm_checked

        out, folds = fold_batchnorm_checked(
            model, [np.asarray(a) for a in samples[0]] if len(samples) else None)
        redone = {"applied": [], "bn_folded": folds}
    note: dict[str, Any] = {
        "reapplied": [*(["bn_fold"] if redone.get("bn_folded") else []),
                      *redone.get("applied", [])],
        "recorded": [*(["bn_fold"] if record.get("bn_folded") else []), *applied]}
    for name, bias in absorbed.items():
        target = getattr(out.get_submodule(name), "bias", None)
        if isinstance(target, torch.Tensor):
            with torch.no_grad():
                target.copy_(torch.tensor(bias, dtype=target.dtype))
    if absorbed:
        note["absorbed_biases_from_record"] = sorted(absorbed)
    elif record.get("bias_absorbed"):
        note["not_reapplied"] = {"bias_absorption": "the bundle does not record the amounts"}
    estimated = [t for t in note["reapplied"] if t not in DATA_FREE]
    if estimated:
        note["estimated_on_explain_inputs"] = estimated
    if "bias_correction" in applied:
        note.setdefault("not_reapplied", {})["bias_correction"] = NOT_BIAS_CORRECTION
    if "adaround" in applied:
        note.setdefault("not_reapplied", {})["adaround"] = (
            "learned rounding puts the weights on the int8 grid: the float weights are the "
            "reference for the int8 layer")
    return out, note
