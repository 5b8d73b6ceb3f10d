"""Comparing two suite runs cell by cell (benchmarks/suite_compare.py)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.suite_compare import compare, compare_cell, markdown


def _cell(metric: float, median: float, speedup: float = 1.0) -> dict:
    return {"status": "ok", "metric": metric, "median_ms": median, "speedup_vs_fp32": speedup}


def test_speedup_change_within_the_native_flows_noise_reproduces() -> None:
    r = compare_cell(_cell(98.6, 0.0125, 1.2), _cell(98.6, 0.0138, 1.08), noise=0.15)
    assert (r["verdict"], r["speedup_change_pct"], r["delta_pct"]) == ("reproduces", 10.0, 10.4)


def test_speedup_change_beyond_the_noise_is_reported() -> None:
    r = compare_cell(_cell(98.6, 1.0, 2.0), _cell(98.6, 1.6, 1.25), noise=0.15)
    assert r["verdict"] == "speed-up outside noise"


def test_a_different_metric_is_not_noise() -> None:
    r = compare_cell(_cell(98.6, 1.0), _cell(97.9, 1.0), noise=1.0)
    assert r["verdict"] == "metric differs"


def test_a_different_latency_choice_is_named() -> None:
    a = {**_cell(98.6, 1.0), "openvino_source": "nncf"}
    b = {**_cell(98.3, 1.0), "openvino_source": "qdq"}
    r = compare_cell(a, b, noise=1.0)
    assert r["verdict"] == "another latency-driven choice"
    assert r["choices"] == (("nncf", None, ()), ("qdq", None, ()))


def test_failed_cells_compare_by_status() -> None:
    assert compare_cell({"status": "failed"}, {"status": "failed"})["verdict"] == "same status"
    assert compare_cell({"status": "failed"}, _cell(1, 1))["verdict"] == "status differs"


def test_noise_is_read_from_the_native_cells(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "_meta.json").write_text("{}")
    (a / "cnn.json").write_text(json.dumps({"model": "cnn", "cells": {
        "native_int8/tflite": _cell(98.0, 0.010, 1.0),
        "int8/tflite": _cell(98.0, 0.010, 1.5),
        "pruned/tflite": _cell(97.0, 0.010, 1.5)}}))
    (b / "cnn.json").write_text(json.dumps({"model": "cnn", "cells": {
        "native_int8/tflite": _cell(98.0, 0.011, 1.1),
        "int8/tflite": _cell(98.0, 0.020, 0.75)}}))
    result = compare(a, b)
    assert result["noise_pct"] == {"cnn": 10.0}
    assert list(result["cells"]) == ["cnn/int8/tflite", "cnn/native_int8/tflite"]
    assert result["counts"] == {"control (sets the noise)": 1, "speed-up outside noise": 1}
    assert "| cnn/int8/tflite | 98.0 / 98.0 | 0.01 / 0.02 | 100.0% | 1.5 / 0.75 | 50.0% | 10.0%" \
        in markdown(result, "")
