"""int8 quantization for every runtime: calibration, PTQ, QAT, sensitivity and fallback.

* :func:`calibration_batches` - user data -> calibration feeds (checks and warnings).
* :class:`QuantConfig` - method (minmax / percentile / entropy), per-channel, activation type,
  TFLite I/O type, layers kept in float, automatic fallback, the int8-vs-fp32 latency check.
* :func:`layer_sensitivity` - SQNR of the output with only one layer quantized.
* :func:`qat_prepare` / :func:`compress` with ``quantization`` - see ``edgekit.quantize.qat``.

``edgekit.compress(model, x, targets=["x86-onnxruntime-int8"], task=task)`` builds int8 artifacts.
"""

from __future__ import annotations

from ..measure.metrics import sqnr_db
from .calibration import CalibrationRangeWarning, calibration_batches, range_statistics
from .config import METHODS, QuantConfig
from .latency import Int8SlowerWarning
from .sensitivity import layer_sensitivity, quantizable_layers

__all__ = [
    "QuantConfig", "METHODS", "calibration_batches", "CalibrationRangeWarning",
    "range_statistics", "layer_sensitivity", "quantizable_layers", "sqnr_db",
    "Int8SlowerWarning",
]
