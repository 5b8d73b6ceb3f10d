"""The measured gain of explain's suggestion: the int8 target rebuilt with the culprit in float.

``explain(..., measure_suggestion=True)`` rebuilds an int8 target three ways from the same
PyTorch model, calibrated on the same inputs (the ones explain runs; a bundle holds no
calibration data), with the recorded quantization settings and float-domain transforms:
as recorded, with the first culprit kept in float, and with the culprit plus the layer that
reads its output kept in float (:func:`edgekit.explain.culprits.try_first`: the tensor is
rounded again where its reader is int8). Each rebuild's end-to-end SQNR against the model is
measured on those inputs; the gain is against the rebuild as recorded, so the calibration data
is the same on both sides. The shipped artifact's own SQNR is reported beside them.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import Artifact, get_backend
from ..measure.metrics import compare_outputs, json_number

__all__ = ["measure_suggestion"]


def _sqnr(backend: Any, art: Artifact, options: dict[str, Any], samples: list[list[np.ndarray]],
          refs: list[np.ndarray], threads: int) -> float:
    sess = backend.load(art, threads=threads, options=options)
    outs = [[np.asarray(o) for o in sess.run([np.asarray(x) for x in s])] for s in samples]
    got = [np.concatenate([o[i] for o in outs]).astype(np.float64) for i in range(len(refs))]
    fid = compare_outputs(refs, got, [f"output{i}" for i in range(len(refs))], classifier=False)
    return float(fid["sqnr_db"])


def measure_suggestion(model: torch.nn.Module, artifact: Artifact, culprit: str,
                       samples: Sequence[Sequence[np.ndarray]],
                       torch_outputs: Sequence[Sequence[np.ndarray]], *,
                       quantization: dict[str, Any] | None, options: dict[str, Any],
                       input_names: list[str], output_names: list[str],
                       order: Sequence[str], threads: int = 1,
                       shipped_sqnr_db: float | None = None) -> dict[str, Any]:
    """Rebuild ``artifact``'s target as recorded and with ``culprit`` (and its reader) in
    float; the end-to-end SQNR of each (see the module's docstring).

    Example::

        gain = measure_suggestion(model, art, "conv1", samples, outputs, quantization=None,
                                  options={}, input_names=["x"], output_names=["y"],
                                  order=["conv1", "conv2", "fc"])
        gain["variants"][1]["gain_db"]
    """
    from ..quantize.config import QuantConfig, equalizes
    from ..quantize.sensitivity import quantizable_layers
    from ..quantize.transforms import apply_transforms
    from .culprits import try_first

    backend = get_backend(artifact.backend)
    cfg = QuantConfig.coerce((quantization or {}).get("config"))
    _, changes = backend.int8_sources(cfg)[0]
    cfg = dataclasses.replace(cfg, **changes)
    calib = [[np.asarray(a) for a in s] for s in samples]
    base = list(cfg.keep_float)
    quantizable = [n for n, _ in quantizable_layers(model)]
    reader = try_first([culprit], order, quantizable)[:2]  # the culprit (or its layer), reader
    choices = [base]
    for extra in ([culprit] if culprit in quantizable else [], reader):
        keep = base + [n for n in extra if n not in base]
        if extra and keep not in choices:
            choices.append(keep)
    refs = [np.concatenate([o[i] for o in torch_outputs]).astype(np.float64)
            for i in range(len(torch_outputs[0]))]
    example = tuple(torch.from_numpy(np.asarray(a)) for a in calib[0])
    variants: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-explain-") as tmp:
        for k, keep in enumerate(choices):
            where = Path(tmp) / f"v{k}"
            # the transforms as the build runs them (bias correction skips float layers)
            ref_model, _ = apply_transforms(
                model, calib, equalize=equalizes(cfg), relu6=cfg.equalize_relu6,
                bias_correction=cfg.bias_correction and cfg.per_channel,
                smoothquant=cfg.smoothquant, alpha=cfg.smoothquant_alpha, keep_float=keep)
            art = backend.quantize(ref_model, example, where, input_names=input_names,
                                   output_names=output_names, options=dict(options),
                                   calibration=calib, config=cfg, keep_float=list(keep))
            variants.append({"keep_float": keep,
                             "sqnr_db": _sqnr(backend, art, options, calib, refs, threads)})
    before = variants[0]["sqnr_db"]
    for v in variants:
        v["gain_db"] = json_number(round(v["sqnr_db"] - before, 2))
        v["sqnr_db"] = json_number(round(v["sqnr_db"], 2))
    return {"culprit": culprit, "calibration": f"the {len(calib)} explain input(s)",
            "shipped_sqnr_db": json_number(shipped_sqnr_db), "variants": variants}
