"""Per-target backends, by registry name. Each backend's runtime is imported only when used."""

from __future__ import annotations

import importlib

from ..errors import UnknownNameError
from .base import Artifact, Backend, Session, TensorSpec

__all__ = ["Artifact", "Backend", "Session", "TensorSpec", "get_backend", "BACKENDS"]

#: name -> "module:class"; adding a backend is one module and one line here.
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgekit.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgekit.backends.openvino:OpenVinoBackend",
    "tflite": "edgekit.backends.tflite:TFLiteBackend",
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS)
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
