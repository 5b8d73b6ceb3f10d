"""The benchmark suite's quick mode end to end (the CI smoke run of `make bench`), and its
report logic on the JSON it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("onnxruntime", "openvino", "tflite")
VARIANTS = ("fp32", "pruned", "int8", "pruned_int8", "native_fp32", "native_int8",
            "native_pruned")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(out / "cache")}  # a cold run: trains too
    proc = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--quick", "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_quick_suite_fills_the_whole_matrix(quick: Path) -> None:
    doc = json.loads((quick / "suite.json").read_text())
    assert doc["schema"] == "edgekit.suite" and doc["meta"]["mode"] == "quick"
    assert [m["model"] for m in doc["models"]] == ["cnn", "lstm"]
    for rep in doc["models"]:
        cells = rep["cells"]
        assert set(cells) == {f"{v}/{rt}" for v in VARIANTS for rt in RUNTIMES}
        for key, cell in cells.items():
            assert cell["status"], key  # never blank
            if cell["status"] == "ok":
                assert cell["median_ms"] > 0, key
                assert cell["metric"] is not None and cell["size_bytes"] > 0, key
                assert 0 < cell["percent_of_peak"] < 100, key
                assert cell["speedup_vs_fp32"] > 0, key
        # edgekit's own cells were all built on these two models
        for v in ("fp32", "pruned", "int8", "pruned_int8"):
            for rt in RUNTIMES:
                assert cells[f"{v}/{rt}"]["status"] == "ok", (rep["model"], v, rt)
        for rt in RUNTIMES:
            assert cells[f"fp32/{rt}"]["speedup_vs_fp32"] == 1.0
            assert cells[f"fp32/{rt}"]["metric_drop"] == pytest.approx(0.0, abs=0.3)
        # pruning really shrank the model; int8 shrank the CNN's files
        assert rep["pruning"]["macs"][1] < rep["pruning"]["macs"][0]
    cnn = doc["models"][0]["cells"]
    for rt in RUNTIMES:
        assert cnn[f"int8/{rt}"]["size_bytes"] < 0.5 * cnn[f"fp32/{rt}"]["size_bytes"], rt
        assert cnn[f"native_int8/{rt}"]["status"] == "ok", rt
    assert cnn["native_fp32/onnxruntime"]["same_as"] == "fp32/onnxruntime"
    # the LSTM is not a plain conv net: the hand-pruning cell says why instead of a number
    lstm = doc["models"][1]["cells"]
    assert lstm["native_pruned/onnxruntime"]["status"].startswith("not measured")
    peak = doc["peak"]
    assert peak["fp32"]["ops_per_s"] > 1e9 and peak["int8"]["ops_per_s"] > 1e9


@pytest.mark.slow
def test_quick_suite_writes_tables_and_plot(quick: Path) -> None:
    md = (quick / "suite.md").read_text()
    for heading in ("## Hardware limit", "## Overview", "## Where edgekit loses",
                    "### cnn", "### lstm", "beside each runtime's default int8 flow"):
        assert heading in md
    assert (quick / "suite_speedup.png").stat().st_size > 1000
    assert sorted(p.name for p in (quick / "suite").glob("*.json")) == [
        "_meta.json", "cnn.json", "lstm.json"]


@pytest.mark.slow
def test_report_rerenders_from_json_and_marks_missing_models(quick: Path, tmp_path) -> None:
    import shutil

    out = tmp_path / "r"
    shutil.copytree(quick / "suite", out / "suite")
    meta = json.loads((out / "suite" / "_meta.json").read_text())
    meta["models"].append("ds_cnn")  # planned but never measured
    (out / "suite" / "_meta.json").write_text(json.dumps(meta))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--report", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "suite.json").read_text())
    assert doc["models"][-1]["model"] == "ds_cnn"
    assert doc["models"][-1]["error"].startswith("not measured yet: the run stopped before")
    assert "| ds_cnn | - | all | not run: not measured yet" in (out / "suite.md").read_text()


def _suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite_report

    return suite_report


def test_losses_name_slower_int8_and_worse_accuracy() -> None:
    suite = _suite()
    rep = {"model": "m", "metric": "top1", "cells": {
        "int8/onnxruntime": {"speedup_vs_fp32": 0.8, "median_ms": 0.2, "metric_drop": 1.0},
        "native_int8/onnxruntime": {"median_ms": 0.1, "metric_drop": 0.5},
        "int8/openvino": {"speedup_vs_fp32": 1.5, "median_ms": 0.1, "metric_drop": 0.0},
        "native_int8/openvino": {"median_ms": 0.2, "metric_drop": 40.0},
    }}
    lost = suite.losses([rep])
    assert len(lost) == 3 and all("ONNX Runtime" in s for s in lost)
    assert "0.80x its fp32" in lost[0] and "2.00x slower" in lost[1] and "loses 1" in lost[2]


def test_unknown_model_is_refused_before_any_work(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--quick", "--models",
                           "cnn,nope", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown model(s) ['nope']" in proc.stderr
    assert not (tmp_path / "suite").exists()
