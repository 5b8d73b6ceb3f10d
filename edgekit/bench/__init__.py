"""Benchmark harness: latency, accuracy and reports, measured the same way for every runtime."""

from .accuracy import evaluate_session, split_batches
from .latency import LatencyStats, time_interleaved
from .reference import TorchSession

__all__ = ["LatencyStats", "TorchSession", "evaluate_session", "split_batches", "time_interleaved"]
