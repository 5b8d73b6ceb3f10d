"""The smallest scale a PT2E observer may give a tensor, shared by the PT2E backends (LiteRT,
ExecuTorch).

litert-torch's and ExecuTorch's XNNPACK quantizer configs clamp every scale at
``eps = 2**-12``: a weight channel under 0.031 in magnitude, or an activation spanning under
0.062, lands on a coarser grid than its range needs, and a tensor of a few 1e-4 or less
quantizes to zero (a randomly initialised MobileNetV2's logits, ~1e-9, came out constant on
both). :data:`SCALE_FLOOR` only keeps an all-zero tensor's scale positive; 2**-60 leaves the
product of two floored scales (2**-120) a normal float32, as the requantization multipliers
need.

Floored is not always better: a tiny tensor that the clamp zeroes may feed a kernel that
cannot work at a tiny scale (TFLite's int8 HARD_SWISH: a randomly initialised
MobileNetV3-Large fell from 44 to 10 dB SQNR with every scale floored). So
``scale_floor="auto"`` (the default) builds both where the clamp would change a scale and
keeps the more faithful on the held-out data (:func:`floor_sources`,
:func:`scales_below_clamp`; ``quantize.build`` compares them untimed, as they run the same
ops); where it would change none the two are the same file and only one is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SCALE_FLOOR = 2.0 ** -60
#: The clamp of litert-torch's and ExecuTorch's XNNPACK quantizer configs.
QUANTIZER_EPS = 2.0 ** -12
#: ``QuantConfig.scale_floor`` settings.
SCALE_FLOORS = ("auto", "on", "off")


def floored(config: Any) -> bool:
    """Whether a build with ``config`` floors scales (``"on"``, and ``"auto"`` built alone)."""
    return str(getattr(config, "scale_floor", "auto")) != "off"


def floor_sources(config: Any, name: str) -> list[tuple[str, dict[str, Any]]]:
    """A PT2E backend's int8 sources: with ``scale_floor="auto"`` the floored build and the
    quantizer's own clamp, compared; otherwise the configured one."""
    if config.scale_floor != "auto":
        return [(name, {})]
    return [(f"{name}, scales floored", {"scale_floor": "on"}),
            (f"{name}, the quantizer's 2**-12 clamp", {"scale_floor": "off"})]


def scales_below_clamp(prepared: Any) -> list[str]:
    """The observers of a calibrated PT2E graph with a scale under :data:`QUANTIZER_EPS`:
    those the quantizer's own clamp would change (none: a clamped build is the same file).
    16-bit observers (LiteRT's 16x8 activations) are floored whatever the setting: not
    counted. Histogram observers search with :func:`._histogram_search.fast_search`."""
    import torch
    from torchao.quantization.pt2e.observer import ObserverBase

    from ._histogram_search import speed_up

    speed_up(prepared)  # the same search, without a tensor read per step
    below = []
    for name, mod in prepared.named_modules():
        obs = getattr(mod, "activation_post_process", mod)
        if not isinstance(obs, ObserverBase) or not hasattr(obs, "eps") \
                or getattr(obs, "dtype", None) == torch.int16:
            continue
        try:
            qparams = obs.calculate_qparams()
        except Exception:  # noqa: BLE001 - an observer that saw nothing sets no scale
            continue
        # convert_pt2e asks again: a histogram observer's search loops over 1e-5 steps in
        # Python (seconds per observer; a MobileViT's LiteRT build spent minutes there)
        obs.calculate_qparams = _Answer(qparams)
        scale = qparams[0]
        if scale.numel() and float(scale.min()) < QUANTIZER_EPS:
            below.append(name)
    return below


class _Answer:
    """``calculate_qparams`` of an observer whose ranges are final: the (scale, zero point)
    it computed, as fresh tensors each call."""

    def __init__(self, qparams: Any) -> None:
        self.qparams = tuple(q.clone() for q in qparams)

    def __call__(self) -> Any:
        return tuple(q.clone() for q in self.qparams)


def configured(qconfig: Any, config: Any) -> Any:
    """The quantizer config ``qconfig`` as ``config.scale_floor`` asks (floored or not)."""
    return with_scale_floor(qconfig) if floored(config) else qconfig


def source_flags(below: int) -> dict[str, bool]:
    """What an artifact tells the int8 source choice: with no scale under the clamp the other
    scale_floor source is this same file; the two run the same ops either way (untimed).
    ``below``: how many observers have a scale under the clamp."""
    return {"sources_identical": below == 0, "sources_same_ops": True}


def floor_record(config: Any, below: list[str]) -> dict[str, Any]:
    """What the manifest records of the scale floor of one build."""
    return {"setting": config.scale_floor, "floored": floored(config),
            "observers_below_clamp": len(below), "examples": below[:5]}


def with_scale_floor(qconfig: Any, eps: float = SCALE_FLOOR) -> Any:
    """``qconfig`` (a PT2E ``QuantizationConfig``) with the ``eps`` of every 8-bit observer
    that takes one set to ``eps``; the observers and their other arguments unchanged (16-bit
    ones keep their own floor: :data:`edgekit.backends.tflite_16x8.INT16_EPS`)."""
    import torch

    def floor_spec(spec: Any) -> Any:
        if getattr(spec, "dtype", None) == torch.int16:
            return spec
        ctr = getattr(spec, "observer_or_fake_quant_ctr", None)
        partial = getattr(ctr, "p", None)
        if partial is None or "eps" not in partial.keywords:
            return spec
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=partial.func.with_args(
            *partial.args, **{**partial.keywords, "eps": eps}))

    return dataclasses.replace(qconfig, **{f: floor_spec(getattr(qconfig, f)) for f in
                                           ("input_activation", "output_activation", "weight")})
