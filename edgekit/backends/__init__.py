"""Per-target backends, by registry name. Each backend's runtime is imported only when used.

The registry is the one place that knows the runtimes: :func:`get_backend` by name,
:func:`backend_for_file` by a file's suffix (each backend's ``file_suffix``), and
:func:`check_model_file` runs the right backend's file check before a runtime or ``embed``
reads a file.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import BundleError, UnknownNameError, UsageError
from .base import Artifact, Backend, Session, TensorSpec

__all__ = ["BACKENDS", "Artifact", "Backend", "Session", "TensorSpec", "backend_for_file",
           "check_model_file", "get_backend", "known_suffixes"]

#: name -> "module:class"; adding a backend is one module and one line here.
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgekit.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgekit.backends.openvino:OpenVinoBackend",
    "tflite": "edgekit.backends.tflite:TFLiteBackend",
    "executorch": "edgekit.backends.executorch:ExecuTorchBackend",
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS)
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def known_suffixes() -> dict[str, str]:
    """File suffix -> backend name, from each registered backend's ``file_suffix``."""
    return {get_backend(name).file_suffix: name for name in BACKENDS}


def backend_for_file(path: str | Path) -> Backend:
    """The backend whose ``file_suffix`` ``path`` has; UsageError naming the file and the
    known suffixes otherwise."""
    suffixes = known_suffixes()
    name = suffixes.get(Path(path).suffix.lower())
    if name is None:
        raise UsageError(f"{path}: cannot tell the runtime from the suffix "
                         f"{Path(path).suffix!r}",
                         hint=f"pass a bundle folder or a {', '.join(sorted(suffixes))} file")
    return get_backend(name)


def check_model_file(path: str | Path) -> str:
    """The checks for a model file before a runtime or ``embed`` reads it: stat (no FIFO,
    device, sparse or over-size file), the format its bytes show, then the file check of the
    backend its suffix names; other files only have their format sniffed. Returns the
    sniffed format."""
    from ..modelfile import check_format, model_file_stat

    path = Path(path)
    if not os.path.lexists(path):
        raise BundleError(f"model file {path} does not exist")
    model_file_stat(path)
    fmt = check_format(path)
    name = known_suffixes().get(path.suffix.lower())
    if name is not None:
        get_backend(name).check_file(path)
    return fmt
