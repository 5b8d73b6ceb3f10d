import numpy as np
import pytest

from edgekit.bench.report import markdown_table, text_table
from edgekit.measure.timing import LatencyStats, time_interleaved


def test_stats_on_known_timings():
    stats = LatencyStats.from_seconds([0.001, 0.002, 0.003, 0.004, 0.010])
    assert stats.n == 5
    assert stats.median_ms == pytest.approx(3.0)
    assert stats.mean_ms == pytest.approx(4.0)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(10.0)
    # numpy's linear interpolation: p90 of [1,2,3,4,10] = 4 + 0.6 * 6
    assert stats.p90_ms == pytest.approx(7.6)
    assert stats.std_ms == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    assert stats.cv == pytest.approx(stats.std_ms / 4.0)
    assert stats.noisy  # cv ~ 0.86
    assert not LatencyStats.from_seconds([0.001] * 10).noisy
    with pytest.raises(ValueError):
        LatencyStats.from_seconds([])


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, feeds):
        self.log.append(self.name)
        return feeds


def test_interleaving_alternates_and_rotates():
    log: list[str] = []
    sessions = {n: _Recorder(n, log) for n in "abc"}
    stats = time_interleaved(sessions, {n: [] for n in "abc"}, warmup=2, runs=3)
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    timed = log[6:]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(s.n == 3 for s in stats.values())


def test_tables():
    rows = [{"name": "x", "ms": 1.23456, "acc": None}]
    cols = [("name", "name", ""), ("ms", "ms", ".2f"), ("acc", "acc", ".1f")]
    assert markdown_table(rows, cols).splitlines() == ["| name | ms | acc |", "|---|---:|---:|",
                                                        "| x | 1.23 | - |"]
    text = text_table(rows, cols).splitlines()
    assert text[0].split() == ["name", "ms", "acc"] and text[2].split() == ["x", "1.23", "-"]
