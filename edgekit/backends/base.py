"""The Backend protocol: one export path and one runtime per deployment target.

A backend turns a PyTorch module into a deployable file and loads that file into a
:class:`Session`. All compile and set-up work happens in :meth:`Backend.load`, so timing
:meth:`Session.run` measures inference only. Everything else that differs per runtime lives on
the backend too: checking and inspecting a lone file, loading on a GPU, int8 quantization and
its alternatives, and the schema of the profile's ``[options]``.
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
    #: True where int8 converts a QAT-prepared PT2E graph directly (``quantize(prepared=...)``)
    qat_graph: bool
    #: option name -> its type or allowed values, for the profile's ``[options]``
    options_schema: dict[str, Any]

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

    def int8_available(self) -> str | None:
        """None when int8 can be built here (its quantizer packages import), else a one-line
        reason."""
        ...

    def quantize(
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
        fp32: Artifact | None = None,
        prepared: Any = None,
    ) -> Artifact:
        """Write the int8 artifact, calibrated on ``calibration`` (batches in input order).

        ``config`` is an :class:`edgekit.quantize.QuantConfig`; ``keep_float`` names PyTorch
        modules to leave in float; ``fp32`` is an fp32 artifact of the same model and target
        exported already, used where the runtime quantizes an fp32 file; ``prepared`` is a
        QAT-prepared PT2E graph (used where :attr:`qat_graph`).
        """
        ...

    def int8_sources(self, config: Any, model: torch.nn.Module | None = None
                     ) -> list[tuple[str, dict[str, Any]]]:
        """The int8 realisations to build and compare for ``config`` (and ``model``, where
        the choice depends on it): (name, QuantConfig changes); one entry ``(name, {})``
        where the runtime has a single one."""
        ...

    def int8_alternatives(self, config: Any, model: torch.nn.Module, *,
                          sources_compared: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """(name, QuantConfig changes) for the runtime's cheap alternatives to ``config``,
        tried when it misses the accuracy gate (with the fallback off too: each keeps every
        layer int8) or is not faster than fp32 (those that only change ``range_method``
        skipped: the same ops); with ``sources_compared`` none that switches a source
        :meth:`int8_sources` compared already."""
        ...

    def inspect(self, path: Path) -> Artifact:
        """An :class:`Artifact` for a lone file of this runtime (I/O specs and precision read
        from the file); BundleError naming the file when it is not valid."""
        ...

    def check_file(self, path: Path) -> None:
        """The format checks on ``path`` before the runtime opens it (bytes only; BundleError
        naming the file)."""
        ...

    def device_unavailable_reason(self, device: str) -> str | None:
        """None when this runtime can run on ``device`` ("cpu", "cuda", ...) here, else why
        not (one line)."""
        ...

    def load_on_device(self, artifact: Artifact, device: str, *, threads: int,
                       options: dict[str, Any]) -> Session:
        """Load on a non-CPU ``device``; DeviceUnavailableError when the runtime would fall
        back to the CPU."""
        ...

    def import_runtime(self) -> None:
        """Import the runtime's Python module (so a memory baseline does not count it)."""
        ...

    def load(self, artifact: Artifact, *, threads: int, options: dict[str, Any]) -> Session: ...
