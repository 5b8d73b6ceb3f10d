"""The pruned and pruned+int8 cells of ``benchmarks/deploy.py``: the pruned copy meets the MAC
target without touching the timed model, the ratios and aims are computed from the cells, and
(slow) one small model builds and times every pruned cell on the three runtimes."""

from __future__ import annotations

import pytest
import torch

from benchmarks.deploy import (
    RUNTIMES,
    _pruned_ratios,
    accuracy_markdown,
    markdown,
    prune_copy,
    pruned_markdown,
)
from edgekit.models.deploy import build_deploy, deploy_inputs


def test_prune_copy_halves_the_macs_and_leaves_the_model_alone():
    model, x = build_deploy("ds_cnn_kws"), deploy_inputs("ds_cnn_kws")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, info = prune_copy("ds_cnn_kws", model, x)
    assert info["macs_reduction_x"] >= 2.0 and info["plan"]["round_to"] == 8
    assert info["macs"] * info["macs_reduction_x"] == pytest.approx(info["macs_counted_before"],
                                                                    rel=1e-3)
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 and c.out_channels < 64 for c in convs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the timed model unchanged
    with torch.no_grad():
        assert pruned(*x).shape == model(*x).shape


def _cells(fp32: float, pruned: float, int8: float, pruned_int8: float) -> dict:
    cells = {}
    for rt in RUNTIMES:
        cells.update({f"{rt}/fp32": {"median_ms": fp32}, f"{rt}/pruned": {"median_ms": pruned},
                      f"{rt}/int8": {"median_ms": int8},
                      f"{rt}/pruned_int8": {"median_ms": pruned_int8, "bytes": 2048,
                                            "fidelity": {"sqnr_db": 30.5}}})
    return cells


def test_pruned_ratios_are_over_fp32_int8_and_the_mac_reduction():
    cells = _cells(10.0, 4.0, 3.0, 2.0)
    info = {"macs_reduction_x": 2.5}
    _pruned_ratios(cells, "onnxruntime", 10.0, info)
    assert cells["onnxruntime/pruned"]["speedup_over_fp32"] == 2.5
    assert cells["onnxruntime/pruned"]["speedup_per_mac_reduction"] == 1.0
    assert cells["onnxruntime/pruned_int8"]["speedup_over_fp32"] == 5.0
    assert cells["onnxruntime/pruned_int8"]["speedup_over_int8"] == 1.5
    assert "speedup_over_fp32" not in cells["openvino/pruned"]  # only the runtime asked for


def _report(model: str, cells: dict, reduction: float) -> dict:
    return {"machine": {"cpu": "test cpu", "cores": 2}, "threads": 1,
            "peak": {"fp32": 1e11, "int8": 4e11},
            "models": [{"model": model, "cells": cells,
                        "pruned": {"macs_reduction_x": reduction}}]}


def test_pruned_markdown_reports_both_aims_per_runtime():
    cells = _cells(10.0, 4.0, 3.0, 2.0)
    for rt in RUNTIMES:
        _pruned_ratios(cells, rt, 10.0, {"macs_reduction_x": 2.0})
    cells["tflite/pruned"]["median_ms"] = 9.0  # one runtime gains little from pruning
    _pruned_ratios(cells, "tflite", 10.0, {"macs_reduction_x": 2.0})
    text = "\n".join(pruned_markdown(_report("resnet18_224", cells, 2.0)))
    assert "| resnet18_224 | onnxruntime | 2.0x | 10.000 | 4.000 | 2.5x | 1.25 | 3.000 | " \
           "2.000 | 5.0x | 1.5x | 30.5 | 2 |" in text
    assert ("resnet18_224 pruned+int8 >= 4.0x over fp32 on every runtime: **met** "
            "(onnxruntime 5.0, openvino 5.0, tflite 5.0)") in text
    assert ("pruned speed-up >= 0.6 x the MAC reduction (2.0x) on every runtime: **missed** "
            "(onnxruntime 1.25, openvino 1.25, tflite 0.56)") in text
    # the full report carries the section; a report without pruned cells has none
    assert "## Pruned and pruned+int8" in markdown(_report("resnet18_224", cells, 2.0))
    plain = _report("resnet18_224", {}, 2.0)
    del plain["models"][0]["pruned"]
    assert "Pruned" not in markdown(plain)


def test_pruned_markdown_no_int8_aim_outside_image_models_and_failures_named():
    cells = _cells(1.0, 0.5, 0.8, 0.4)
    for rt in RUNTIMES:
        _pruned_ratios(cells, rt, 1.0, {"macs_reduction_x": 2.0})
    text = "\n".join(pruned_markdown(_report("gru_kws", cells, 2.0)))
    assert "gru_kws pruned+int8 over fp32 (no aim: not an image model): onnxruntime 2.5x" in text
    failed = _report("unet_128", {}, 2.0)
    failed["models"][0]["pruned"] = {"error": "NotSupportedError: pruning failed at layer 'x'"}
    text = "\n".join(pruned_markdown(failed))
    assert "pruning failed: NotSupportedError: pruning failed at layer 'x'" in text
    assert "- unet_128: pruning failed, aims not measured" in text


def test_accuracy_markdown_pruned_table_and_verdict():
    def row(pruned_scores: dict[str, float]) -> dict:
        cells = {"pytorch/fp32": {"top1": 80.0, "macro_recall": 79.0, "macro_f1": 78.0},
                 "pytorch/pruned": {"top1": pruned_scores["pytorch"]},
                 "pytorch/fp32_trained_longer": {"top1": 85.0}}
        for rt in RUNTIMES:
            cells[f"{rt}/fp32"] = {"top1": 80.0}
            cells[f"{rt}/int8"] = {"top1": 79.5}
            cells[f"{rt}/pruned"] = {"top1": pruned_scores.get(rt, 79.5)}
            cells[f"{rt}/pruned_int8"] = {"top1": pruned_scores.get(rt, 79.5)}
        return {"model": "resnet18_224", "task": "glyphs", "input": [[1, 64, 64]],
                "metric": "top1", "train_epochs": 1, "train_seconds": 200.0, "cells": cells,
                "pruning": {"macs_reduction_x": 2.1, "fine_tune_epochs": 1,
                            "prune_fine_tune_seconds": 210.0, "metric_after_prune": 2.56}}

    text = "\n".join(accuracy_markdown([row({"pytorch": 81.0})]))
    assert "### Pruned (>= 2x fewer MACs) and fine-tuned with distillation" in text
    assert "| resnet18_224 | 2.1x | 1 ep, 210.0 s | 2.56 | 81.00 | 85.00 | 79.50 |" in text
    assert "**met** (worst -0.50; -5.50 against the unpruned model trained as long)" in text
    text = "\n".join(accuracy_markdown([row({"pytorch": 81.0, "tflite": 77.0})]))
    assert "**missed** (worst -3.00; -8.00 against" in text
    plain = row({"pytorch": 81.0})
    del plain["pruning"]
    assert "Pruned" not in "\n".join(accuracy_markdown([plain]))


@pytest.mark.slow
def test_run_model_builds_and_times_pruned_cells_on_every_runtime(tmp_path):
    from benchmarks.deploy import run_model

    torch.set_num_threads(1)
    peak = {"fp32": {"ops_per_s": 1e11}, "int8": {"ops_per_s": 4e11}}
    res = run_model("ds_cnn_kws", tmp_path, runs=3, calib_n=8, peak=peak)
    assert res["pruned"]["macs_reduction_x"] >= 2.0
    cells = res["cells"]
    for rt in RUNTIMES:
        for key in (f"{rt}/pruned", f"{rt}/pruned_int8"):
            c = cells[key]
            assert "error" not in c, (key, c.get("error"))
            assert c["n"] == 3 and c["median_ms"] > 0 and c["speedup_over_fp32"] > 0
            # against the pruned PyTorch model: fp32 exact, int8 of a random-weight spotter
            # whose BatchNorm statistics come from 8 calibration inputs (measured 15-16 dB)
            assert c["fidelity"]["sqnr_db"] > (40 if key.endswith("/pruned") else 10)
            assert c["bytes"] < cells[f"{rt}/fp32"]["bytes"]
        assert cells[f"{rt}/pruned_int8"]["bytes"] < cells[f"{rt}/pruned"]["bytes"]
        assert cells[f"{rt}/pruned"]["speedup_per_mac_reduction"] == pytest.approx(
            cells[f"{rt}/pruned"]["speedup_over_fp32"] / res["pruned"]["macs_reduction_x"],
            abs=0.01)
    assert "## Pruned and pruned+int8" in markdown(
        {"machine": {"cpu": "x", "cores": 2}, "threads": 1, "peak": {"fp32": 1e11, "int8": 4e11},
         "models": [res]})


def test_accuracy_markdown_sets_each_default_flow_beside_edgekit_and_names_the_machine():
    cells = {"pytorch/fp32": {"top1": 42.0}}
    for rt in RUNTIMES:
        cells[f"{rt}/fp32"] = {"top1": 42.0}
        cells[f"{rt}/int8"] = {"top1": 41.5}
    cells["onnxruntime/native_int8"] = {"top1": 12.25}
    cells["openvino/native_int8"] = {"error": "RuntimeError: nncf failed"}
    row = {"model": "bert_mini_128", "task": "docstrings", "input": [[128], [128]],
           "metric": "top1", "train_epochs": 2, "train_seconds": 300.0, "cells": cells,
           "machine": {"cpu": "Some CPU", "cores": 2, "int8_kernels": "x86_64 with avx512_vnni"}}
    other = dict(row, model="unet_128", cells={"pytorch/fp32": {"top1": 1.0}})
    del other["machine"]
    text = "\n".join(accuracy_markdown([row, other]))
    assert "| bert_mini_128 | 12.25 | 41.50 | failed: RuntimeError: nncf failed | 41.50 | - | " \
        "41.50 |" in text
    assert "| unet_128 |" in text.split("default int8 flow")[0]  # the main table only
    assert ("Measured on: bert_mini_128 on Some CPU (2 cores; x86_64 with avx512_vnni) (rows "
            "without a machine: the latency tables' machine).") in text


def test_prune_latency_markdown_reports_each_cell_against_the_aim():
    from benchmarks.prune_latency import markdown

    ok = {"unpruned_ms": 40.0, "goal_ms": 20.0, "pruned_ms": 18.0, "steps": 5,
          "macs_reduction_x": 2.5, "speedup_x": 40 / 18, "speedup_over_macs": 40 / 18 / 2.5,
          "meets_aim": True}
    slow = dict(ok, pruned_ms=30.0, speedup_x=4 / 3, speedup_over_macs=4 / 3 / 2.5,
                meets_aim=False)
    failed = {"unpruned_ms": 40.0, "goal_ms": 20.0,
              "error": "ConfigError: latency goal 20.0 ms not met"}
    text = "\n".join(markdown({"machine": {"cpu": "Some CPU", "cores": 2}, "goal": 0.5,
                               "runs": 30, "models": {"resnet18_224": {
                                   "onnxruntime": ok, "openvino": slow, "tflite": failed}}}))
    assert "on Some CPU (2 cores)" in text
    assert "| resnet18_224 | onnxruntime | 40.00 | 20.00 | 18.00 | 5 | 2.50x | 2.22x | 0.89 | " \
        "**met** |" in text
    assert "| resnet18_224 | openvino | 40.00 | 20.00 | 30.00 | 5 | 2.50x | 1.33x | 0.53 | " \
        "**missed** |" in text
    assert "| resnet18_224 | tflite | 40.00 | 20.00 | failed: ConfigError: latency goal" in text


def test_int8_switches_markdown_lists_each_switch_against_fp32():
    from benchmarks.int8_switches import markdown

    row = {"model": "bert_mini_128", "target": "x86-onnxruntime-int8", "metric": "top1",
           "test_samples": 1707, "machine": {"cpu": "Some CPU", "int8_kernels": "x86_64 with "
                                             "avx512_vnni: VPDPBUSD sums into int32"},
           "cells": {"pytorch/fp32": {"top1": 42.36},
                     "edgekit defaults": {"top1": 42.41, "seconds": 30.0},
                     "int8_bias_correction on": {"top1": 42.00, "sqnr_db": 21.456},
                     "softmax_ranges off": {"error": "QuantizationError: held-out fidelity",
                                            "seconds": 20.0},
                     "runtime default flow": {"top1": 27.48}}}
    text = "\n".join(markdown([row]))
    assert "## bert_mini_128 on x86-onnxruntime-int8 (top1, 1707 test samples; Some CPU" in text
    assert text.startswith("# int8 switches, each changed in turn")
    assert "| edgekit defaults | 42.41 | +0.05 | - | 30.0 |" in text
    assert "| int8_bias_correction on | 42.00 | -0.36 | 21.46 | - |" in text
    assert "| softmax_ranges off | failed: QuantizationError: held-out fidelity | | | |" in text
    assert "| runtime default flow | 27.48 | -14.88 | - | - |" in text
    row.update(calibration_samples=300, base={"fallback": False})
    assert "(top1, 1707 test samples, 300 calibration samples, every build from " \
        "{'fallback': False}; Some CPU" in "\n".join(markdown([row]))
