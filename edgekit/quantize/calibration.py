"""Calibration data for post-training quantization.

:func:`calibration_batches` turns what the user has into a list of feeds (one list of numpy
arrays per batch, in model input order, each batch shaped like the example inputs):

* a ``torch.utils.data.DataLoader`` (or any iterable) yielding tensors, tuples of tensors,
  ``(inputs, targets)`` pairs, or dicts keyed by input name;
* an iterable / list of numpy arrays (one array per sample batch; a tuple per batch for
  several inputs);
* a ``.npz`` file (keys = input names, or ``x``, or ``arr_0``...; dim 0 is the sample);
* a :class:`~edgekit.data.task.Task` (its train split) or a :class:`~edgekit.data.task.Split`.

At most ``limit`` samples are taken. Empty data, a wrong shape, dtype or layout raise an error
naming the input; values far outside the range of the example inputs / reference data warn with
the statistics (e.g. 0..255 images for a model trained on 0..1).

Example::

    batches = calibration_batches("calib.npz", example_inputs=(torch.zeros(1, 1, 8, 8),),
                                  input_names=["image"], limit=300)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends._calibration import calibration_failure, describe_feeds
from ..errors import DataError, ShapeError

__all__ = ["DEFAULT_LIMIT", "CalibrationRangeWarning", "calibration_batches",
           "calibration_failure", "check_calibration_feeds", "describe_feeds",
           "range_statistics"]

DEFAULT_LIMIT = 300


class CalibrationRangeWarning(UserWarning):
    """Calibration values look out of the range the model was trained on."""


def _np(x: Any, where: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover - odd objects
        raise DataError(f"{where}: cannot read {type(x).__name__} as an array: {exc}") from exc
    if a.dtype == object or a.dtype.kind in "USV":
        raise DataError(f"{where} holds {a.dtype} data, not numbers",
                        hint="calibration data must be numeric arrays or tensors")
    return a


def _items(item: Any, names: list[str]) -> list[Any]:
    """One batch from a loader: a tensor, a tuple of inputs, (inputs, targets), or a dict."""
    n = len(names)
    if isinstance(item, Mapping):
        missing = [k for k in names if k not in item]
        if missing:
            raise DataError(f"calibration batch is a dict without input(s) {missing} "
                            f"(keys: {sorted(map(str, item))})")
        return [item[k] for k in names]
    if isinstance(item, (tuple, list)):
        if n == 1 and len(item) >= 1 and not isinstance(item[0], (tuple, list)):
            return [item[0]]  # (x, y) pairs or (x,)
        if len(item) >= 1 and isinstance(item[0], (tuple, list)) and len(item[0]) == n:
            return list(item[0])  # ((x1, x2), y)
        if len(item) >= n:
            return list(item[:n])
        raise DataError(f"calibration batch has {len(item)} element(s), the model takes {n} "
                        f"input(s) {names}")
    if n != 1:
        raise DataError(f"calibration batch is one {type(item).__name__}, the model takes {n} "
                        f"inputs {names}; yield a tuple per batch")
    return [item]


def _from_npz(path: Path, names: list[str]) -> list[np.ndarray]:
    if not path.exists():
        raise DataError(f"calibration file {path} does not exist")
    from .._npz import check_npz

    check_npz(path, "calibration file", error=DataError)  # FIFO, declared sizes, objects
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataError(f"cannot read calibration file {path}: {exc}") from exc
    if not arrays:
        raise DataError(f"calibration file {path} holds no arrays")
    if all(k in arrays for k in names):
        return [arrays[k] for k in names]
    if len(names) == 1:
        for key in ("x", "input", "inputs", "arr_0"):
            if key in arrays:
                return [arrays[key]]
        if len(arrays) == 1:
            return [next(iter(arrays.values()))]
    raise DataError(f"calibration file {path} has keys {sorted(arrays)}; expected the input "
                    f"name(s) {names}")


def _task_split(task: Any, examples: Sequence[torch.Tensor]) -> Any:
    """A task's train split, or its validation split where only that one is shaped like the
    model's inputs (a model trained on shorter sequences than it is deployed at: the train
    split holds the short ones, validation and test the deployed length)."""
    def fits(split: Any) -> bool:
        return len(split.inputs) == len(examples) and all(
            tuple(t.shape[1:]) == tuple(e.shape[1:]) for t, e in zip(split.inputs, examples))

    return task.val if not fits(task.train) and fits(task.val) else task.train


def _sample_arrays(source: Any, names: list[str], examples: Sequence[torch.Tensor]
                   ) -> list[list[np.ndarray]] | list[np.ndarray]:
    """Either per-input stacked arrays (``list[np.ndarray]``, dim 0 = samples) or a list of
    per-batch feeds."""
    from ..data.task import Split, Task

    if isinstance(source, Task):
        source = _task_split(source, examples)
    if isinstance(source, Split):
        if len(source.inputs) != len(names):
            raise ShapeError(f"calibration split has {len(source.inputs)} inputs, the model "
                             f"takes {len(names)} {names}")
        return [t.numpy() for t in source.inputs]
    if isinstance(source, (str, Path)):
        return _from_npz(Path(source), names)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if len(names) != 1:
            raise DataError(f"one calibration array given, the model takes {len(names)} inputs")
        return [_np(source, f"calibration input {names[0]!r}")]
    if isinstance(source, Iterable):
        return source  # type: ignore[return-value]
    raise DataError(f"unsupported calibration data {type(source).__name__}",
                    hint="pass a DataLoader, an iterable of arrays, a .npz path or a Task")


def calibration_batches(
    source: Any,
    *,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    limit: int = DEFAULT_LIMIT,
    reference: Sequence[np.ndarray] | None = None,
) -> list[list[np.ndarray]]:
    """Read ``source`` into feeds shaped like the example inputs, each input with its own batch
    size; at most ``limit`` samples (counted on the first input: ``limit // batch`` calls).

    ``reference``: arrays the model was trained on (per input), used for the range check;
    without it the example inputs are used when they are not all zeros.
    """
    names = list(input_names)
    examples = list(example_inputs)
    if limit < 1:
        raise DataError(f"calibration sample limit must be >= 1, got {limit}")
    batches = [int(e.shape[0]) if e.dim() else 1 for e in examples]
    calls = max(1, limit // batches[0])
    data = _sample_arrays(source, names, examples)
    per_input: list[list[np.ndarray]] = [[] for _ in names]
    if isinstance(data, list) and data and all(isinstance(a, np.ndarray) for a in data) and \
            len(data) == len(names) and not isinstance(source, (list, tuple)):
        per_input = [[np.asarray(a)[:calls * b]] for a, b in zip(data, batches)]
    else:
        rows = 0  # of the first input
        for k, item in enumerate(data):
            parts = _items(item, names)
            arrays = [_np(p, f"calibration batch {k}, input {n!r}") for p, n in zip(parts, names)]
            for i, (a, ex) in enumerate(zip(arrays, examples)):
                if a.ndim == ex.dim() - 1:  # one sample without the batch dim
                    arrays[i] = a[None]
            for lst, a in zip(per_input, arrays):
                lst.append(a)
            rows += int(arrays[0].shape[0]) if arrays[0].ndim else 1
            if rows >= calls * batches[0]:
                break
    if not per_input[0] or not any(len(a) for a in per_input[0]):
        raise DataError("calibration data is empty",
                        hint="pass at least one sample (a few hundred representative ones is best)")
    stacked = []
    for name, parts, ex in zip(names, per_input, examples):
        want = tuple(ex.shape[1:])
        for p in parts:
            if p.ndim != ex.dim() or tuple(p.shape[1:]) != want:
                layout = ""
                if p.ndim == ex.dim() and sorted(p.shape[1:]) == sorted(want):
                    layout = " (same sizes in another order: a layout mismatch, e.g. NHWC vs NCHW?)"
                raise ShapeError(
                    f"calibration input {name!r}: samples of shape {list(p.shape[1:])}, the model "
                    f"takes {list(want)}{layout}",
                    hint="give calibration data shaped like the example inputs, sample on dim 0")
        a = np.concatenate(parts)
        ek = str(ex.dtype).replace("torch.", "")
        want_kind = "f" if ex.is_floating_point() else "iu"
        if a.dtype.kind not in want_kind and not (want_kind == "iu" and a.dtype.kind == "b"):
            raise ShapeError(f"calibration input {name!r} has dtype {a.dtype}, "
                             f"the model takes {ek}",
                             hint="convert the calibration data to the model's input dtype")
        a = a.astype(np.float32 if ex.is_floating_point() else ex.numpy().dtype, copy=False)
        if ex.is_floating_point() and not np.isfinite(a).all():
            raise DataError(f"calibration input {name!r} contains NaN or infinite values "
                            f"({int((~np.isfinite(a)).sum())} of {a.size})")
        stacked.append(a)
    if all(len(a) == 0 for a in stacked):
        raise DataError("calibration data is empty",
                        hint="pass at least one sample (a few hundred representative ones is best)")
    _check_ranges(names, stacked, reference if reference is not None else
                  [e.numpy() for e in examples])
    short = [(name, len(a), b, list(ex.shape)) for name, a, b, ex in
             zip(names, stacked, batches, examples) if len(a) < b]
    if short:
        name, rows, b, shape = short[0]
        raise DataError(f"calibration input {name!r} has {rows} sample(s), fewer than one batch "
                        f"of {b} (the example input is shaped {shape})",
                        hint="give each input at least one batch shaped like its example input")
    n = min(calls, *(len(a) // b for a, b in zip(stacked, batches)))
    return [[np.ascontiguousarray(a[i * b:(i + 1) * b]) for a, b in zip(stacked, batches)]
            for i in range(n)]


def check_calibration_feeds(batches: Sequence[Sequence[np.ndarray]],
                            example_inputs: Sequence[torch.Tensor],
                            input_names: Sequence[str]) -> None:
    """Every calibration feed has one array per input, shaped like its example input (the
    batch dimension included: each input keeps its own); a :class:`ShapeError` names the batch,
    the input and both shapes."""
    names, examples = list(input_names), list(example_inputs)
    if not batches:
        raise DataError("calibration data is empty",
                        hint="pass at least one sample (a few hundred representative ones is best)")
    for k, feed in enumerate(batches):
        if len(feed) != len(names):
            raise ShapeError(f"calibration batch {k} has {len(feed)} array(s), the model takes "
                             f"{len(names)} input(s) {names}")
        for name, a, ex in zip(names, feed, examples):
            if tuple(np.shape(a)) != tuple(ex.shape):
                raise ShapeError(
                    f"calibration batch {k}, input {name!r}: shape {list(np.shape(a))}, the "
                    f"example input is shaped {list(ex.shape)}",
                    hint="each input's calibration batches must match its example input, "
                    "batch dimension included (build them with calibration_batches)")


def range_statistics(a: np.ndarray) -> dict[str, float]:
    a = np.asarray(a, dtype=np.float64)
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
            "std": float(a.std()), "p1": float(np.percentile(a, 1)),
            "p99": float(np.percentile(a, 99))}


def _check_ranges(names: list[str], data: list[np.ndarray], reference: Sequence[np.ndarray]
                  ) -> None:
    for name, a, ref in zip(names, data, reference):
        if a.dtype.kind != "f" or ref is None:
            continue
        ref = np.asarray(ref, dtype=np.float64)
        if ref.size == 0 or float(np.abs(ref).max()) == 0.0:
            continue
        got, want = range_statistics(a), range_statistics(ref)
        span_ref = max(want["max"] - want["min"], 1e-6)
        span = got["max"] - got["min"]
        if span > 8 * span_ref or got["max"] > want["max"] + 4 * span_ref or \
                got["min"] < want["min"] - 4 * span_ref or \
                (want["max"] > want["min"] and span < span_ref / 8):  # a constant reference
            # (a full attention mask as the example input) says nothing about the spread
            warnings.warn(
                f"calibration input {name!r} has values in [{got['min']:.4g}, {got['max']:.4g}] "
                f"(mean {got['mean']:.4g}, std {got['std']:.4g}), but the reference data spans "
                f"[{want['min']:.4g}, {want['max']:.4g}] (mean {want['mean']:.4g}); e.g. 0..255 "
                "pixels for a model trained on 0..1? Scale the calibration data like the "
                "training data",
                CalibrationRangeWarning, stacklevel=3)
