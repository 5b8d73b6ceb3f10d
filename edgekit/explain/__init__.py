"""Find the layer that breaks: PyTorch's leaf-module outputs against the tensors inside each
runtime's artifact (ONNX Runtime, OpenVINO, LiteRT), layer by layer.

Modules: :mod:`.torch_capture` (hooks), :mod:`.capture_onnx`, :mod:`.capture_openvino`,
:mod:`.capture_tflite` (each runtime's own means), :mod:`.tensors` and :mod:`.mapping`
(runtime tensors -> module names), :mod:`.layers` (numbers, first jump, culprits, suggested
action), :mod:`.report` / :mod:`.plot` (table, JSON, Markdown, PNG), :mod:`.api`.

The package is callable: ``edgekit.explain(bundle="build/cnn")`` is :func:`.api.explain`, also
once ``edgekit.explain`` has been imported as a package.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .api import culprit_layers, explain, model_from_bundle
from .report import ExplainReport

__all__ = ["ExplainReport", "culprit_layers", "explain", "model_from_bundle"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> ExplainReport:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
