"""One error tree for everything edgekit raises on purpose.

    EdgekitError                 base; every message says what, where and what to do
    ├── UsageError               bad command line or API arguments        (exit code 2)
    │   ├── UnknownNameError     unknown model / target / backend name, with suggestions
    │   ├── DeviceUnavailableError  the requested device (GPU) is not there for a runtime
    │   └── ShapeError           example inputs or data that do not fit the model
    ├── ConfigError              malformed target profile or recipe       (exit code 2)
    ├── DataError                unreadable or malformed user data        (exit code 2)
    ├── BackendMissingError      an optional runtime is not installed     (exit code 2)
    ├── ExportError              a conversion failed; names the op and layer
    ├── ModelRunError            a runtime failed running a model; names the op and node
    ├── VerificationError        an artifact disagrees with the reference beyond tolerance
    │   └── QuantizationError    an int8 build misses its accuracy budget (per-layer table)
    ├── BundleError              a bundle cannot be written, read or trusted
    │   └── OutputPathError      the output folder cannot be created or written (exit code 2)
    └── NotSupportedError        a feature this version does not provide yet

The CLI maps ``exit_code`` to the process exit status: 2 for bad usage, 1 for a failed job.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "EdgekitError",
    "UsageError",
    "UnknownNameError",
    "ShapeError",
    "ConfigError",
    "DataError",
    "BackendMissingError",
    "ExportError",
    "VerificationError",
    "BundleError",
    "OutputPathError",
    "NotSupportedError",
    "QuantizationError",
    "ModelRunError",
    "DeviceUnavailableError",
]


class EdgekitError(Exception):
    """Base of all edgekit errors. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")

    def extend(self, text: str) -> EdgekitError:
        """Append ``text`` to the message (what else was tried, and how it failed); returns
        the error, to raise."""
        self.message += text
        self.args = (self.message if not self.hint else f"{self.message}\n  hint: {self.hint}",)
        return self


class UsageError(EdgekitError):
    exit_code = 2


class UnknownNameError(UsageError):
    """An unknown name; the message lists the closest known names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None
        super().__init__(
            f"unknown {kind} {name!r}; known: {', '.join(known)}", hint=hint
        )
        self.name = name
        self.suggestions = close


class DeviceUnavailableError(UsageError):
    """The requested device is not present for a runtime, or the runtime would fall back to
    the CPU (CPU numbers are never reported as GPU numbers)."""


class ShapeError(UsageError):
    pass


class ConfigError(EdgekitError):
    exit_code = 2


class DataError(EdgekitError):
    exit_code = 2


class BackendMissingError(EdgekitError):
    exit_code = 2

    def __init__(self, backend: str, detail: str, extra: str) -> None:
        super().__init__(
            f"the {backend} backend cannot be used: {detail}",
            hint=f'pip install "edgekit[{extra}]" -c constraints.txt',
        )
        self.backend = backend
        self.extra = extra


class ExportError(EdgekitError):
    """A conversion failed. ``op`` and ``layer`` name the culprit where it could be found."""

    def __init__(
        self,
        message: str,
        *,
        backend: str,
        op: str | None = None,
        layer: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ", ".join(
            part for part in (f"op {op}" if op else "", f"layer {layer}" if layer else "") if part
        )
        super().__init__(
            f"{backend} export failed{f' at {where}' if where else ''}: {message}", hint=hint
        )
        self.backend = backend
        self.op = op
        self.layer = layer


class VerificationError(EdgekitError):
    pass


class ModelRunError(EdgekitError):
    """A model failed when a runtime ran it (e.g. a node allocates more memory than there is).

    ``op`` and ``node`` name the graph node where the runtime said; ``requested_bytes`` is the
    allocation that failed, when known.
    """

    def __init__(self, message: str, *, backend: str, op: str | None = None,
                 node: str | None = None, requested_bytes: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.backend = backend
        self.op = op
        self.node = node
        self.requested_bytes = requested_bytes


class BundleError(EdgekitError):
    pass


class OutputPathError(BundleError):
    exit_code = 2


class NotSupportedError(EdgekitError):
    exit_code = 2


class QuantizationError(VerificationError):
    """An int8 build missed its accuracy budget (or produced NaN/constant outputs).

    ``table`` holds one row per layer (name, kind, SQNR in dB when only that layer is
    quantized, and whether it stayed in float); ``suggested_float`` names the layers to keep in
    float (pass them as ``quantization={"keep_float": [...]}``).
    """

    def __init__(self, message: str, *, table: list[dict] | None = None,
                 suggested_float: list[str] | None = None, hint: str | None = None) -> None:
        self.table = list(table or [])
        self.suggested_float = list(suggested_float or [])
        if self.table:
            message = f"{message}\n{format_layer_table(self.table)}"
        if self.suggested_float and hint is None:
            hint = ("keep these layers in float: quantization={'keep_float': "
                    f"{self.suggested_float!r}}} (or raise the profile's [accuracy] max_drop)")
        super().__init__(message, hint=hint)


def format_layer_table(rows: list[dict]) -> str:
    """A plain-text per-layer table: layer, kind, SQNR (dB), precision."""
    lines = [f"  {'layer':<32} {'kind':<12} {'sqnr_db':>8}  precision"]
    for r in rows:
        sq = r.get("sqnr_db")
        sq_s = "-" if sq is None else f"{sq:8.2f}"
        lines.append(f"  {str(r.get('layer')):<32} {str(r.get('kind')):<12} {sq_s:>8}  "
                     f"{r.get('precision', 'int8')}")
    return "\n".join(lines)
