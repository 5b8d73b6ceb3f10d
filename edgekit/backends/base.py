"""The Backend protocol: one export path and one runtime per deployment target.

A backend turns a PyTorch module into a deployable file and loads that file into a
:class:`Session`. All compile and set-up work happens in :meth:`Backend.load`, so timing
:meth:`Session.run` measures inference only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype (numpy dtype name) of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass
class Artifact:
    """What an export produced: the main file, every file it needs, and its I/O specs.

    ``files`` are paths relative to ``root`` (the main file first); ``inputs``/``outputs``
    follow the PyTorch model's argument and output order.
    """

    backend: str
    root: Path
    files: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The main file (the one a runtime opens)."""
        return self.root / self.files[0]

    @property
    def size_bytes(self) -> int:
        return sum((self.root / f).stat().st_size for f in self.files)


@runtime_checkable
class Session(Protocol):
    """A loaded artifact, ready to run. ``run`` takes and returns numpy arrays in model order."""

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: What the runtime really executes, e.g. {"precision": "fp32", "threads": 2, "device": "CPU"}
    info: dict[str, Any]

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        """The edgekit backends also take torch tensors and ``allow_nonfinite=True`` (NaN/inf
        inputs raise DataError otherwise), and raise ModelRunError naming a failing node."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str  # registry name, e.g. "onnxruntime"
    extra: str  # the pip extra that installs it
    file_suffix: str  # ".onnx", ".xml", ".tflite"

    def available(self) -> str | None:
        """None when the runtime can be imported, else a one-line reason."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions of the packages this backend uses (for the manifest)."""
        ...

    def export(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        out_dir: Path,
        *,
        input_names: list[str],
        output_names: list[str],
        options: dict[str, Any],
    ) -> Artifact:
        """Write the fp32 artifact into ``out_dir`` (which exists and is empty)."""
        ...

    def export_int8(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        out_dir: Path,
        *,
        input_names: list[str],
        output_names: list[str],
        options: dict[str, Any],
        calibration: list[list[np.ndarray]],
        config: Any,
        keep_float: list[str] | tuple[str, ...] = (),
    ) -> Artifact:
        """Write the int8 artifact, calibrated on ``calibration`` (batches in input order).

        ``config`` is an :class:`edgekit.quantize.QuantConfig`; ``keep_float`` names PyTorch
        modules to leave in float. (TFLite also takes ``prepared``, a QAT-prepared graph.)
        """
        ...

    def load(self, artifact: Artifact, *, threads: int, options: dict[str, Any]) -> Session: ...
