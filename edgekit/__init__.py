"""edgekit: take PyTorch models to edge devices.

Export a model for TFLite (LiteRT), ONNX Runtime and OpenVINO, verify every artifact against
the PyTorch reference, and benchmark it::

    import edgekit, torch
    bundle = edgekit.compress(model, torch.zeros(1, 1, 8, 8),
                              targets=["x86-onnxruntime-fp32", "x86-tflite-fp32"],
                              out_dir="build/mymodel")
    session = bundle.load("x86-onnxruntime-fp32")
    outputs = session.run([x.numpy()])

Names are imported lazily so ``import edgekit`` does not load torch or any runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "edgekit.pipeline",
    "build_zoo_model": "edgekit.api",
    "load_factory": "edgekit.api",
    "load_bundle": "edgekit.bundle",
    "Bundle": "edgekit.bundle",
    "load_profile": "edgekit.profiles",
    "list_profiles": "edgekit.profiles",
    "TargetProfile": "edgekit.profiles",
    "get_backend": "edgekit.backends",
    "get_spec": "edgekit.models",
    "list_models": "edgekit.models",
    "verify": "edgekit.verify",
    "explain": "edgekit.explain",
    "culprit_layers": "edgekit.explain",
    "run_demo": "edgekit.demo",
    "EdgekitError": "edgekit.errors",
    "prune_model": "edgekit.prune",
    "QuantConfig": "edgekit.quantize",
    "sweep": "edgekit.search.sweep",
}

__all__ = ["__version__", "bench", "search", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in ("bench", "search"):  # callable subpackages: edgekit.bench(...) runs the
        return importlib.import_module(f"edgekit.{name}")  # harness, edgekit.search(...) a search
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
