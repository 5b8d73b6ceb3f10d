"""What every runtime's int8 path says when calibration fails: the runtime, the inputs with
the shapes and dtypes fed, and the runtime's own first line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import QuantizationError

__all__ = ["calibration_failure", "describe_feeds"]


def describe_feeds(feed: Sequence[np.ndarray], names: Sequence[str]) -> str:
    """``image [1, 3, 32, 32] float32, tokens [4, 8] int64``: one feed, for messages."""
    return ", ".join(f"{n} {list(np.shape(a))} {np.asarray(a).dtype}"
                     for n, a in zip(names, feed))


def calibration_failure(runtime: str, batches: Sequence[Sequence[np.ndarray]],
                        input_names: Sequence[str], exc: BaseException) -> QuantizationError:
    """The error for a runtime quantizer that failed while calibrating."""
    first = (str(exc).splitlines() or [""])[0][:400]
    feed = describe_feeds(batches[0], input_names) if batches else "no batches"
    return QuantizationError(
        f"int8 calibration on {runtime} failed ({len(batches)} calibration batch(es) of "
        f"{feed}): {type(exc).__name__}: {first}",
        hint="check that each calibration input is shaped and typed like its example input; "
        "if it is, the runtime's quantizer rejects an op: keep that layer in float "
        "(quantization={'keep_float': [...]})")
