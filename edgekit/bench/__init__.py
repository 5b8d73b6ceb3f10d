"""Benchmark harness: latency, accuracy, fidelity, memory and reports, measured the same way
for every runtime.

The package is callable: ``edgekit.bench("build/cnn", runs=300)`` is
:func:`edgekit.bench.harness.bench` (see there for every option); it returns the report dict.
"""

import sys as _sys
import types as _types
from typing import Any as _Any

from ..measure.scoring import evaluate_session, split_batches
from ..measure.timing import LatencyStats, time_interleaved
from .arguments import check_bench_args
from .candidates import Candidate, artifact_from_file, collect_candidates
from .evaldata import check_data_fits
from .reference import TorchSession
from .summary import SCHEMA_VERSION, pareto_front

__all__ = ["SCHEMA_VERSION", "Candidate", "LatencyStats", "TorchSession", "artifact_from_file",
           "bench", "check_bench_args", "check_data_fits", "collect_candidates",
           "evaluate_session", "pareto_front", "split_batches", "time_interleaved"]


def bench(*args: _Any, **kwargs: _Any) -> dict:
    """Benchmark bundles / artifact files; see :func:`edgekit.bench.harness.bench`."""
    from .harness import bench as _bench

    return _bench(*args, **kwargs)


class _CallableModule(_types.ModuleType):
    def __call__(self, *args: _Any, **kwargs: _Any) -> dict:
        return bench(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
