"""The evaluation data of a benchmark run and the inputs fed to each artifact: a user ``.npz``
or the bundle's zoo task, checked against every artifact's inputs before any work; example
feeds for timing; the bundle's stored PyTorch reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError, ShapeError
from ..measure.scoring import plain_metric
from .candidates import Candidate

__all__ = ["EvalData", "batch_size", "check_data_fits", "example_feeds", "load_eval_data",
           "reference_data", "run_all"]


@dataclass
class EvalData:
    """Labelled evaluation data and how to score it."""

    inputs: list[np.ndarray]  # one per model input, samples on axis 0
    targets: np.ndarray | None
    score: Callable[..., float] | None
    metric: str | None
    higher_is_better: bool
    classifier: bool
    source: str


def _task_for(cands: list[Candidate]) -> tuple[Any, str] | None:
    for c in cands:
        if c.bundle is not None:
            model = (c.bundle.manifest.recipe or {}).get("model")
            if model and ":" not in str(model):
                from ..models import get_spec

                try:
                    return get_spec(model).task(), f"zoo task of {model}"
                except EdgekitError:
                    return None
    return None


def load_eval_data(cands: list[Candidate], data: str | Path | None, *, input_keys: Sequence[str],
                   target_key: str, metric: str | None, limit: int | None) -> EvalData | None:
    """The labelled evaluation data: a user .npz, else the bundle's zoo task (test split)."""
    if data is not None and str(data) == "none":
        return None
    if data is not None:
        from ..data.loaders import load_npz

        split = load_npz(data, input_keys=tuple(input_keys), target_key=target_key)
        task_info = _task_for(cands) if metric is None else None
        if task_info is not None:
            task = task_info[0]
            score, hib, cls = task.score, task.higher_is_better, task.kind == "classification"
            metric = task.metric
        else:
            metric = metric or "top1"
            score, hib, cls = plain_metric(metric)
        source = str(data)
    else:
        task_info = _task_for(cands)
        if task_info is None:
            return None
        task, source = task_info
        split = task.test
        if metric is not None and metric != task.metric:
            score, hib, cls = plain_metric(metric)
        else:
            score, hib, cls, metric = (task.score, task.higher_is_better,
                                       task.kind == "classification", task.metric)
        source = f"{source} ({task.name}, test split)"
    n = len(split) if limit is None else min(limit, len(split))
    inputs = [t[:n].detach().cpu().numpy() for t in split.inputs]
    return EvalData(inputs, split.targets[:n].detach().cpu().numpy(), score, metric, hib, cls,
                    source)


def check_data_fits(cand: Candidate, inputs: Sequence[np.ndarray], what: str) -> None:
    """ShapeError naming the input and both shapes when the data does not fit the artifact."""
    specs = cand.inputs
    if len(inputs) != len(specs):
        raise ShapeError(
            f"{what} has {len(inputs)} input array(s) but {cand.name} takes {len(specs)} "
            f"({', '.join(s.name for s in specs)})",
            hint="pass one --input-key per model input, in model order")
    for s, x in zip(specs, inputs):
        want = tuple(s.shape[1:])
        got = tuple(x.shape[1:])
        if len(want) != len(got) or any(w > 0 and w != g for w, g in zip(want, got)):
            layout = ""
            if len(want) == len(got) and sorted(want) == sorted(got):
                layout = " (same sizes in another order: a layout mismatch, e.g. NHWC vs NCHW?)"
            raise ShapeError(
                f"{what}: input {s.name!r} of {cand.name} expects samples of shape "
                f"{list(want)} (artifact shape {list(s.shape)}), the data has {list(got)} "
                f"(array shape {list(x.shape)}){layout}",
                hint="give data laid out as the model's input, samples on axis 0")
        want_dt, got_dt = np.dtype(s.dtype), np.asarray(x).dtype
        if got_dt.kind not in "biuf" or (want_dt.kind in "iub" and got_dt.kind == "f"):
            raise ShapeError(
                f"{what}: input {s.name!r} of {cand.name} takes {want_dt}, the data is "
                f"{got_dt}, which does not convert safely",
                hint=f"store the data as {want_dt} (e.g. token ids as integers)")
        if got_dt.kind == "f" and x.size and not np.isfinite(x).all():
            from ..errors import DataError

            raise DataError(
                f"{what}: input {s.name!r} holds {int((~np.isfinite(x)).sum())} NaN or "
                f"infinite value(s) of {x.size}",
                hint="clean the evaluation data; a NaN makes every metric meaningless")


def batch_size(cand: Candidate) -> int:
    """The batch an artifact takes (its first input's leading dimension; 1 when dynamic)."""
    dims = [s.shape[0] for s in cand.inputs if s.shape]
    return max(1, dims[0]) if dims and dims[0] > 0 else 1


def run_all(session: Any, inputs: Sequence[np.ndarray], batch: int
            ) -> tuple[list[np.ndarray], int]:
    """Every whole batch of ``inputs`` through ``session``: the concatenated outputs and the
    number of samples run."""
    n = (len(inputs[0]) // batch) * batch
    outs: list[list[np.ndarray]] = []
    for i in range(0, n, batch):
        res = session.run([x[i:i + batch] for x in inputs])
        if not outs:
            outs = [[] for _ in res]
        for k, r in enumerate(res):
            outs[k].append(np.asarray(r))
    return [np.concatenate(o, axis=0) for o in outs], n


def example_feeds(cand: Candidate, data: EvalData | None, ref: dict[str, np.ndarray] | None
                  ) -> list[np.ndarray]:
    """One batch of inputs for ``cand``: from the eval data, else the stored reference inputs,
    else seeded random values of the right shape and dtype."""
    b = batch_size(cand)
    if data is not None and len(data.inputs[0]) >= b:
        return [np.ascontiguousarray(x[:b]).astype(s.dtype, copy=False)
                for x, s in zip(data.inputs, cand.inputs)]
    if ref is not None:
        return [np.ascontiguousarray(ref[f"input.{s.name}"][0]).astype(s.dtype, copy=False)
                for s in cand.inputs]
    rng = np.random.default_rng(0)
    feeds = []
    for s in cand.inputs:
        shape = [d if d > 0 else 1 for d in s.shape]
        if np.dtype(s.dtype).kind == "f":
            feeds.append(rng.random(shape, dtype=np.float64).astype(s.dtype))
        else:
            feeds.append(rng.integers(0, 10, shape).astype(s.dtype))
    return feeds


def reference_data(cand: Candidate) -> dict[str, np.ndarray] | None:
    """The bundle's stored PyTorch fp32 inputs/outputs (``reference.npz``), if it has them."""
    if cand.bundle is None or cand.bundle.manifest.reference is None:
        return None
    from ..bundle import REFERENCE

    path = Path(cand.bundle.root) / REFERENCE
    if not path.is_file():
        return None
    from .._npz import check_npz

    check_npz(path, "reference data")  # declared sizes before numpy allocates
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
