"""The benchmark suite: every zoo model on its real task x {fp32, pruned, int8, pruned + int8}
x {ONNX Runtime, OpenVINO, TFLite}, beside each runtime's own default flow, against this
machine's measured arithmetic peak.

    python -m benchmarks.suite --full      # the committed results (make bench)
    python -m benchmarks.suite --quick     # a smoke run: two models, few epochs and runs
    python -m benchmarks.suite --report    # re-render the tables from the per-model JSON

Per model, all sessions (edgekit's and the native flows', all three runtimes) are timed side
by side in one interleaved run with the same thread count; accuracy is the task's metric on
the test split; fidelity compares every artifact's test outputs with the fp32 PyTorch model's.
Writes ``<out>/suite/<model>.json`` as each model finishes (a rerun with ``--resume`` skips
finished models), then ``<out>/suite.{json,md}`` and ``<out>/suite_*.png``; ``--readme``
rewrites the README's performance section from them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import native  # noqa: E402
from _readme import RESULTS, update_readme_section  # noqa: E402
from common import FP32, INT8, RUNTIMES, artifact_size, log, pruned, trained  # noqa: E402

from edgekit.bench.peak import measure_peak, percent_of_peak  # noqa: E402
from edgekit.errors import EdgekitError, QuantizationError  # noqa: E402
from edgekit.measure.metrics import compare_outputs  # noqa: E402
from edgekit.measure.scoring import session_outputs  # noqa: E402
from edgekit.measure.timing import time_interleaved  # noqa: E402
from edgekit.models import get_spec, list_models  # noqa: E402
from edgekit.models.zoo import count_macs  # noqa: E402
from edgekit.pipeline import compress  # noqa: E402
from edgekit.train import evaluate, predict  # noqa: E402

VARIANTS = ("fp32", "pruned", "int8", "pruned_int8")
NATIVE = ("native_fp32", "native_int8", "native_pruned")
#: Models in the order the full run takes them (the ones the README leans on first).
ORDER = ("cnn", "mobilenet_v2", "ds_cnn", "lstm", "transformer", "resnet8", "image_text",
         "image_audio", "embedding", "vae", "gan", "autoencoder")
#: Pruning per model: prune_and_fine_tune arguments (macs_reduction 0.55 = 2.2x fewer MACs).
PLANS: dict[str, dict[str, Any]] = {
    "cnn": dict(macs_reduction=0.55, round_to=8, importance="l2"),
    "mobilenet_v2": dict(macs_reduction=0.55, round_to=8, importance="l2", steps=2),
    "ds_cnn": dict(macs_reduction=0.55, round_to=8, importance="l2"),
    "resnet8": dict(macs_reduction=0.55, round_to=8, importance="l2"),
    "transformer": dict(macs_reduction=0.5, round_to=4, importance="l2"),
}
DEFAULT_PLAN = dict(macs_reduction=0.5, round_to=8, importance="l2")
#: Models the hand-made torch-pruning baseline is run on (plain convolutional networks).
NATIVE_PRUNE = ("cnn", "mobilenet_v2", "ds_cnn", "resnet8")
#: The hand-measured baseline (development machine, 2026-11-22; same data, 1 thread): native
#: int8 accuracy change in points and speed-up over the same runtime's fp32.
HAND_BASELINE = {
    ("cnn", "onnxruntime"): (-0.3, 0.68), ("cnn", "openvino"): (0.0, 0.90),
    ("cnn", "tflite"): (0.0, 1.32),
    ("mobilenet_v2", "onnxruntime"): (0.0, 0.68), ("mobilenet_v2", "openvino"): (-0.6, 1.00),
    ("mobilenet_v2", "tflite"): (-0.3, 1.64),
    ("lstm", "onnxruntime"): (0.0, 0.96), ("lstm", "openvino"): (-38.1, 0.85),
    ("lstm", "tflite"): (0.0, 0.99),
    ("ds_cnn", "onnxruntime"): (0.3, 1.14), ("ds_cnn", "openvino"): (-0.6, 1.03),
    ("ds_cnn", "tflite"): (0.0, 1.50),
}
#: Which model's MACs a variant runs (int8 and native flows run the unpruned model).
MACS_OF = {"pruned": "pruned", "pruned_int8": "pruned", "native_pruned": "native_pruned"}
RT_LABEL = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tflite": "TFLite"}


@dataclass
class Mode:
    name: str
    models: tuple[str, ...]
    runs: int
    warmup: int
    epochs_scale: float  # of each model's default training epochs
    prune_epochs_scale: float
    calibration: int
    verify_samples: int
    threads: int = 1
    quantization: dict[str, Any] = field(default_factory=dict)


MODES = {
    "full": Mode("full", ORDER, runs=300, warmup=30, epochs_scale=1.0, prune_epochs_scale=0.5,
                 calibration=300, verify_samples=64),
    "quick": Mode("quick", ("cnn", "lstm"), runs=15, warmup=3, epochs_scale=0.1,
                  prune_epochs_scale=0.05, calibration=32, verify_samples=16),
}


def _say(msg: str) -> None:
    log("suite", msg)


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, QuantizationError):
        kind = "accuracy gate failed"
    elif isinstance(exc, EdgekitError):
        kind = type(exc).__name__
    else:
        kind = f"failed ({type(exc).__name__})"
    return f"{kind}: {first}"[:400]


class ModelRun:
    """Everything measured for one zoo model."""

    def __init__(self, name: str, mode: Mode, tmp: Path, peak: dict[str, Any]) -> None:
        self.name, self.mode, self.tmp, self.peak = name, mode, tmp, peak
        self.spec = get_spec(name)
        self.task = self.spec.task()
        self.x = self.spec.example_inputs(1)
        self.io = dict(input_names=self.spec.input_names, output_names=self.spec.output_names)
        self.cells: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self.macs: dict[str, int] = {}

    # ------------------------------------------------------------------ building
    def _mark(self, variant: str, runtimes, reason: str) -> None:
        for rt in runtimes:
            self.cells.setdefault(f"{variant}/{rt}", {"status": reason})

    def _bundle(self, variant: str, model: torch.nn.Module, targets: dict[str, str],
                **extra: Any) -> None:
        out = self.tmp / f"{self.name}-{variant}-{'-'.join(targets)}"
        t0 = time.perf_counter()
        try:
            bundle = compress(model, self.x, targets=list(targets.values()), out_dir=out,
                              task=self.task, verify_samples=self.mode.verify_samples,
                              progress=False, **self.io, **extra)
        except Exception as exc:  # the cell says why; the rest of the matrix goes on
            _say(f"{self.name} {variant} {'/'.join(targets)}: {_reason(exc)}")
            self._mark(variant, targets, _reason(exc))
            return
        man = json.loads((out / "manifest.json").read_text())
        for rt, target in targets.items():
            entry = man["targets"][target]
            q = entry.get("quantization") or {}
            qi = entry.get("artifact_info", {}).get("quantization") or {}
            self.sessions[f"{variant}/{rt}"] = bundle.load(target, threads=self.mode.threads)
            self.cells[f"{variant}/{rt}"] = {
                "status": "ok", "size_bytes": artifact_size(out / target),
                "executed_precision": entry["runtime"].get("precision"),
                "build_seconds": round(time.perf_counter() - t0, 1),
                **({"float_layers": q.get("float_layers"),
                    "int8_compute_ops": qi.get("int8_layers"),
                    "float_compute_ops": qi.get("float_layers"),
                    "dynamic_range_nodes": qi.get("dynamic_range_nodes"),
                    "latency_check": q.get("latency_check"),
                    **({"openvino_source": (q.get("config") or {}).get("openvino_source"),
                        "openvino_source_choice": q.get("openvino_source_choice")}
                       if rt == "openvino" else {}),
                    } if "int8" in variant else {}),
            }

    def _native(self, variant: str, rt: str, make) -> None:
        key = f"{variant}/{rt}"
        try:
            sess, size = make()
        except Exception as exc:
            _say(f"{self.name} {key}: {_reason(exc)}")
            self.cells[key] = {"status": _reason(exc)}
            return
        self.sessions[key] = sess
        self.cells[key] = {"status": "ok", "size_bytes": int(size),
                           "executed_precision": sess.info.get("precision")}

    def build(self) -> dict[str, Any]:
        mode, name, spec, task = self.mode, self.name, self.spec, self.task
        epochs = max(1, round(spec.default_epochs * mode.epochs_scale))
        model, train_meta = trained(name, epochs)
        report: dict[str, Any] = {"model": name, "task": task.name, "metric": task.metric,
                                  "higher_is_better": task.higher_is_better,
                                  "train": train_meta}
        report["pytorch_fp32"] = evaluate(model, task.test, task)
        self.reference = predict(model, task.test)
        self.macs["fp32"] = count_macs(model, self.x)
        _say(f"{name}: trained ({epochs} epochs), test {task.metric} "
             f"{report['pytorch_fp32']:.4g}")
        self._bundle("fp32", model, FP32)
        for rt in RUNTIMES:
            self._bundle("int8", model, {rt: INT8[rt]}, quantization=self._quant())
        plan = {**PLANS.get(name, DEFAULT_PLAN), "epochs_scale": mode.prune_epochs_scale}
        try:
            small, meta = pruned(name, model, plan)
            report["pruning"] = {k: v for k, v in meta.items() if k != "history"}
            report["pruning"]["plan"] = plan
            self.macs["pruned"] = count_macs(small, self.x)
            _say(f"{name}: pruned {meta['macs_reduction_x']:.2f}x fewer MACs, "
                 f"{task.metric} {meta['metric_before']:.4g} -> "
                 f"{meta['metric_after_fine_tune']:.4g}")
            self._bundle("pruned", small, FP32, history=[meta["history"]])
            for rt in RUNTIMES:
                self._bundle("pruned_int8", small, {rt: INT8[rt]}, quantization=self._quant(),
                             history=[meta["history"]])
        except Exception as exc:
            traceback.print_exc()
            report["pruning"] = {"error": _reason(exc)}
            self._mark("pruned", RUNTIMES, f"pruning failed: {_reason(exc)}")
            self._mark("pruned_int8", RUNTIMES, f"pruning failed: {_reason(exc)}")
        self._natives(model, report)
        return report

    def _quant(self) -> dict[str, Any]:
        return {"samples": self.mode.calibration, **self.mode.quantization}

    def _natives(self, model: torch.nn.Module, report: dict[str, Any]) -> None:
        spec, mode, tmp = self.spec, self.mode, self.tmp / f"{self.name}-native"
        calib = native.calibration_batches(self.task, mode.calibration)
        fp32_ort = self.sessions.get("fp32/onnxruntime")
        for rt in ("onnxruntime", "tflite"):  # the same converter call as edgekit's fp32
            if f"fp32/{rt}" in self.sessions:
                self.aliases[f"native_fp32/{rt}"] = f"fp32/{rt}"
                self.cells[f"native_fp32/{rt}"] = {
                    **self.cells[f"fp32/{rt}"], "same_as": f"fp32/{rt}"}
            else:
                self._mark("native_fp32", [rt], "edgekit's fp32 (the same converter call) "
                           "failed: " + self.cells[f"fp32/{rt}"]["status"])
        if fp32_ort is None:
            self._mark("native_int8", ["onnxruntime"], "no fp32 ONNX to quantize: "
                       + self.cells["fp32/onnxruntime"]["status"])
            self._mark("native_fp32", ["openvino"], "not run: fp32 export failed")
        else:
            onnx_path = self.tmp / f"{self.name}-fp32-{'-'.join(FP32)}" / FP32[
                "onnxruntime"] / "model.onnx"
            self._native("native_int8", "onnxruntime", lambda: native.ort_int8(
                onnx_path, tmp / "ort-int8", calib, list(spec.input_names), fp32_ort.inputs,
                fp32_ort.outputs, mode.threads))
            self._native("native_fp32", "openvino", lambda: native.openvino_fp32(
                model, self.x, tmp / "ov-fp32", fp32_ort.inputs, fp32_ort.outputs,
                mode.threads))
            self._native("native_int8", "openvino", lambda: native.openvino_int8(
                model, self.x, tmp / "ov-int8", calib, fp32_ort.inputs, fp32_ort.outputs,
                mode.threads))
        self._native("native_int8", "tflite", lambda: native.tflite_int8(
            model, self.x, tmp / "tfl-int8", calib, spec.input_names, spec.output_names,
            mode.threads))
        if self.name not in NATIVE_PRUNE:
            self._mark("native_pruned", RUNTIMES, "not measured: the hand-made torch-pruning "
                       "baseline is defined for the plain convolutional models "
                       f"({', '.join(NATIVE_PRUNE)})")
            return
        try:
            hand = native.torch_pruning_by_hand(model, self.x, self.task,
                                                epochs=max(1, round(3 * mode.epochs_scale)))
            report["native_pruning"] = {k: v for k, v in hand.items() if k != "model"}
            self.macs["native_pruned"] = hand["macs"][1]
            self._bundle("native_pruned", hand["model"], FP32)
        except Exception as exc:
            traceback.print_exc()
            self._mark("native_pruned", RUNTIMES, f"torch-pruning by hand: {_reason(exc)}")

    # ------------------------------------------------------------------ measuring
    def measure(self, report: dict[str, Any]) -> None:
        task, mode = self.task, self.mode
        classifier = task.kind == "classification"
        for key, sess in self.sessions.items():
            try:
                outs = session_outputs(sess, task.test)
                acc = float(task.score(outs, task.test.targets.numpy(),
                                       [t.numpy() for t in task.test.inputs]))
                fid = compare_outputs(self.reference, outs, list(self.spec.output_names),
                                      classifier=classifier)
                self.cells[key].update({
                    "metric": round(acc, 4),
                    "metric_drop": round(task.drop(report["pytorch_fp32"], acc), 4),
                    "fidelity": {"top1_agreement": fid["top1_agreement"],
                                 "cosine_min": round(fid["cosine_min"], 6),
                                 "sqnr_db": fid["sqnr_db"] if isinstance(fid["sqnr_db"], str)
                                 else round(fid["sqnr_db"], 2)}})
            except Exception as exc:
                self.cells[key]["status"] = f"runs but its outputs cannot be scored: {_reason(exc)}"
        timed, feeds = {}, {}
        feed0 = [t.numpy() for t in self.x]
        for key, sess in self.sessions.items():
            if self.cells[key]["status"] != "ok":
                continue
            timed[key], feeds[key] = sess, feed0
        _say(f"{self.name}: timing {len(timed)} sessions side by side, {mode.runs} rounds")
        before = _cpu_use()
        stats = time_interleaved(timed, feeds, warmup=mode.warmup, runs=mode.runs)
        # Other work on the machine distorts some runtimes more than others (OpenVINO's
        # worker thread most): record how many cores other processes kept busy meanwhile.
        report["timing_load"] = _other_cores(before, _cpu_use())
        for key, st in stats.items():
            variant = key.split("/")[0]
            base = "native_fp32" if variant == "native_int8" else "fp32"
            macs = self.macs[MACS_OF.get(variant, "fp32")]
            peak = self.peak["int8" if "int8" in variant else "fp32"]["ops_per_s"]
            self.cells[key].update({
                "median_ms": round(st.median_ms, 4), "p90_ms": round(st.p90_ms, 4),
                "noisy": st.noisy, "macs": macs,
                "gops": round(2 * macs / (st.median_ms / 1e3) / 1e9, 3),
                "percent_of_peak": _round(percent_of_peak(macs, st.median_ms, peak), 3),
                "speedup_base": base})
        for alias, source in self.aliases.items():
            src = self.cells[source]
            self.cells[alias].update({k: src[k] for k in ("metric", "metric_drop", "fidelity",
                                                          "median_ms", "p90_ms", "noisy", "macs",
                                                          "gops", "percent_of_peak")
                                      if k in src})
        for key, cell in self.cells.items():
            base = self.cells.get(f"{cell.get('speedup_base', 'fp32')}/{key.split('/')[1]}", {})
            if cell.get("median_ms") and base.get("median_ms"):
                cell["speedup_vs_fp32"] = round(base["median_ms"] / cell["median_ms"], 3)
        # every cell of the matrix is present, with a reason when it has no numbers
        for variant in VARIANTS + NATIVE:
            for rt in RUNTIMES:
                self.cells.setdefault(f"{variant}/{rt}", {"status": "not run"})


def _threads(rt: str) -> str:
    """The thread count the int8 profile (and so the build's latency check) uses."""
    from edgekit.profiles import load_profile

    return f"{load_profile(INT8[rt]).threads} threads"


def _cpu_use() -> tuple[float, float, float] | None:
    """(wall s, CPU s busy on the whole machine, CPU s of this process), Linux only."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def _other_cores(a, b) -> dict[str, Any] | None:
    """Cores kept busy by other processes between two :func:`_cpu_use` readings."""
    if a is None or b is None or b[0] <= a[0]:
        return None
    other = max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0])
    return {"other_cores": round(other, 2), "cores": os.cpu_count(),
            "seconds": round(b[0] - a[0], 1)}


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)


def run_model(name: str, mode: Mode, tmp: Path, peak: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = ModelRun(name, mode, tmp, peak)
    report = run.build()
    run.measure(report)
    report["cells"] = dict(sorted(run.cells.items()))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


# ---------------------------------------------------------------------- the report
def machine() -> dict[str, Any]:
    import onnxruntime
    import openvino

    from edgekit.bench.harness import _machine

    try:
        import ai_edge_litert
        litert = getattr(ai_edge_litert, "__version__", "installed")
    except ImportError:
        litert = "missing"
    return {**_machine(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.get_version().split("-")[0], "ai_edge_litert": litert}


def _fmt(v: Any, spec: str = ".2f", none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, str):
        return v
    return format(v, spec)


def _metric_fmt(report: dict[str, Any], v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) < 5e-5:  # no "-0.00"
        v = 0.0
    return f"{v:.2f}" if report["metric"] in ("top1", "retrieval_top1") else f"{v:.4g}"


def losses(models: list[dict[str, Any]]) -> list[str]:
    """Where edgekit loses: int8 slower than fp32, slower than the native int8, or more
    accurate natively; with what we will do about each kind."""
    out = []
    for rep in models:
        cells = rep.get("cells", {})
        for rt in RUNTIMES:
            e, n = cells.get(f"int8/{rt}", {}), cells.get(f"native_int8/{rt}", {})
            sp = e.get("speedup_vs_fp32")
            if sp is not None and sp < 0.97:
                lc = e.get("latency_check") or {}
                if lc.get("below_min_speedup"):
                    built = (f"the build flagged it (Int8SlowerWarning, {lc['speedup']:.2f}x "
                             f"at {_threads(rt)}; {len(lc.get('variants_tried', []))} variants "
                             "tried) and advises the fp32 target")
                elif lc.get("speedup"):
                    built = (f"the build's own check measured {lc['speedup']:.2f}x at "
                             f"{_threads(rt)} and kept '{lc.get('chosen')}'; with 1 thread it "
                             "loses")
                else:
                    built = "the build did not time it (" + str(lc.get("skipped") or
                                                               "no latency check") + ")"
                why = (" Calls this short are dominated by per-op overhead that int8 does not "
                       "shrink." if e["median_ms"] < 0.2 else "")
                out.append(f"{rep['model']} int8 on {RT_LABEL[rt]} is {sp:.2f}x its fp32 "
                           f"(slower): {built}.{why} Next: per-op timing from the runtime's "
                           "profiler to choose which ops stay float, and the latency check at "
                           "the deployment's thread count.")
            if e.get("median_ms") and n.get("median_ms") and e["median_ms"] > 1.05 * n[
                    "median_ms"]:
                out.append(f"{rep['model']} int8 on {RT_LABEL[rt]}: edgekit "
                           f"{e['median_ms']:.4f} ms vs native {n['median_ms']:.4f} ms "
                           f"({e['median_ms'] / n['median_ms']:.2f}x slower)"
                           + (f"; edgekit keeps {', '.join(e['float_layers'])} in float"
                              if e.get("float_layers") else "")
                           + ". Next: weigh latency in the fallback choice.")
            if e.get("metric_drop") is not None and n.get("metric_drop") is not None and \
                    e["metric_drop"] > n["metric_drop"] + 1e-9 and e["metric_drop"] > 0:
                out.append(f"{rep['model']} int8 on {RT_LABEL[rt]}: edgekit loses "
                           f"{e['metric_drop']:.3g} vs native {n['metric_drop']:.3g} "
                           f"({rep['metric']}). Next: compare calibration methods per model "
                           "and keep the better one.")
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    meta, peak = doc["meta"], doc["peak"]
    m = meta["machine"]
    lines = [
        "# edgekit benchmark suite", "",
        f"Mode **{meta['mode']}**; generated by `python -m benchmarks.suite --{meta['mode']}` "
        f"on {m['cpu']} ({m['cores']} cores), {meta['threads']} thread per runtime, batch 1; "
        f"onnxruntime {m['onnxruntime']}, openvino {m['openvino']}, ai-edge-litert "
        f"{m['ai_edge_litert']}, torch {m['torch']}. Latency: median and p90 of "
        f"{meta['runs']} interleaved calls per artifact after {meta['warmup']} warm-up calls; "
        "all artifacts of one model (edgekit's and the native flows', all three runtimes) "
        "timed side by side in one run. Accuracy: the task's metric on the test split "
        "(digits: 360 images, one image = 0.28 points); drop = PyTorch fp32 minus the "
        "artifact (positive = worse). Fidelity: worst-sample cosine and SQNR of the test "
        "outputs against the fp32 PyTorch model. Sizes: weight-bearing files. OpenVINO runs "
        "edgekit's artifacts with an f32 precision hint; the native OpenVINO flow compiles "
        "with defaults (its executed precision is listed).", "",
        "## Hardware limit", "",
        f"{peak['threads']} thread, {peak['n']}x{peak['n']} matrix multiply, fastest of "
        f"{peak['repeats']} calls per kernel: fp32 **{peak['fp32']['ops_per_s'] / 1e9:.1f} "
        f"GFLOP/s** ({peak['fp32']['kernel']}), int8 **{peak['int8']['ops_per_s'] / 1e9:.1f} "
        f"GOP/s** ({peak['int8']['kernel']}). Each artifact's `% peak` = 2 x MACs / median "
        "latency, over the peak of its precision (int8 artifacts against the int8 peak). "
        "Batch-1 models this small are bound by per-call and per-op overhead, not arithmetic, "
        "so their percentages are low; the column is there to compare machines and devices.",
        *[f"Peak {k}: {peak[k]['note']}." for k in ("fp32", "int8") if peak[k].get("note")],
        "",
        "## Overview: speed-up over the same runtime's fp32 (accuracy drop)", "",
        "| model | metric (fp32) | runtime | pruned | int8 | pruned + int8 | native int8 "
        "| native pruned |", "|---|---|---|---|---|---|---|---|"]
    for rep in doc["models"]:
        if "cells" not in rep:
            lines.append(f"| {rep['model']} | - | all | not run: {rep.get('error', '?')} "
                         "| | | | |")
            continue
        for rt in RUNTIMES:
            row = [rep["model"], f"{rep['metric']} {_metric_fmt(rep, rep['pytorch_fp32'])}",
                   RT_LABEL[rt]]
            for variant in ("pruned", "int8", "pruned_int8", "native_int8", "native_pruned"):
                c = rep["cells"].get(f"{variant}/{rt}", {})
                if c.get("status") != "ok" or c.get("median_ms") is None:
                    row.append(_short(c.get("status", "not run")))
                else:
                    row.append(f"{_fmt(c.get('speedup_vs_fp32'))}x "
                               f"({_metric_fmt(rep, c.get('metric_drop'))})")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "`native int8` speed-up is over the native fp32 flow of the same runtime "
              "(OpenVINO: its default precision); `native pruned` is torch-pruning by hand "
              "(ratio 0.5, plain 3-epoch fine-tune).", ""]
    lines += _native_section(doc)
    lines += ["## Where edgekit loses", ""]
    lost = losses(doc["models"])
    lines += [f"- {s}" for s in lost] or ["- nowhere in this run."]
    lines += ["", "## Per model", ""]
    for rep in doc["models"]:
        lines += _model_section(rep)
    return "\n".join(lines) + "\n"


def _short(status: str, width: int = 90) -> str:
    """A cell's status for a table: a failed gate reduced to its numbers, cut at a word."""
    gate = re.match(r"accuracy gate failed: target \S+: (.*?) \(tried", status)
    if gate:
        why = gate.group(1)
        tol = re.fullmatch(r"it misses the profile's tolerance \(logits: (.*)\)", why)
        drop = re.search(r"a drop of (\S+) points?, over the budget of (\S+)", why)
        why = (tol.group(1) if tol else
               f"drop {drop.group(1)} > budget {drop.group(2)}" if drop else why)
        status = "gate failed: " + re.sub(r"(\d\.\d\d)\d+", r"\1", why.replace("tolerance ", ""))
    status = status.replace("|", "/")
    return status if len(status) <= width else status[: width - 1].rsplit(" ", 1)[0] + " ..."


def _native_section(doc: dict[str, Any]) -> list[str]:
    lines = ["## edgekit int8 beside each runtime's default int8 flow", "",
             "Ratios edgekit / native: latency (below 1 = edgekit faster) and accuracy drop "
             "(points; lower is better). `hand baseline` = the same native flow measured by "
             "hand on the development machine kind (AMD EPYC Zen 5 with AVX-512 VNNI + BF16, 1 "
             "thread): its accuracy effects are what the native column must reproduce "
             "(`same drop` = within one point); its speed-ups belong to that CPU, so on another "
             "CPU they are context, not a target.", "",
             "| model | runtime | edgekit int8: drop, speed-up | native int8: drop, speed-up "
             "| hand baseline | same drop | latency edgekit / native |",
             "|---|---|---|---|---|---|---|"]
    for rep in doc["models"]:
        cells = rep.get("cells", {})
        for rt in RUNTIMES:
            e, n = cells.get(f"int8/{rt}", {}), cells.get(f"native_int8/{rt}", {})
            hand = HAND_BASELINE.get((rep["model"], rt))
            ratio = (f"{e['median_ms'] / n['median_ms']:.2f}" if e.get("median_ms")
                     and n.get("median_ms") else "-")
            same = "-"
            if hand and n.get("metric_drop") is not None:
                same = "yes" if abs(n["metric_drop"] - (0.0 - hand[0])) <= 1.0 else "no"
            lines.append(
                f"| {rep['model']} | {RT_LABEL[rt]} | {_pair(rep, e)} | {_pair(rep, n)} | "
                + (f"{0.0 - hand[0]:+.1f} drop, {hand[1]:.2f}x" if hand else "-")
                + f" | {same} | {ratio} |")
    return lines + [""]


def _pair(rep: dict[str, Any], c: dict[str, Any]) -> str:
    if c.get("status") != "ok" or c.get("median_ms") is None:
        return _short(c.get("status", "not run"))
    return f"{_metric_fmt(rep, c.get('metric_drop'))}, {_fmt(c.get('speedup_vs_fp32'))}x"


def _model_section(rep: dict[str, Any]) -> list[str]:
    if "cells" not in rep:
        return [f"### {rep['model']}", "", f"Not run: {rep.get('error')}", ""]
    pr = rep.get("pruning", {})
    head = [f"### {rep['model']} ({rep['task']}, {rep['metric']}; PyTorch fp32 "
            f"{_metric_fmt(rep, rep['pytorch_fp32'])}, {rep['train']['epochs']} epochs)", ""]
    if "macs" in pr:
        head.append(f"Pruning: {pr['macs'][0] / 1e6:.3f} M -> {pr['macs'][1] / 1e6:.3f} M MACs "
                    f"({pr['macs_reduction_x']:.2f}x), params {pr['params'][0] / 1e3:.1f} k -> "
                    f"{pr['params'][1] / 1e3:.1f} k; {rep['metric']} "
                    f"{_metric_fmt(rep, pr['metric_before'])} before, "
                    f"{_metric_fmt(rep, pr['metric_after_prune'])} right after pruning, "
                    f"{_metric_fmt(rep, pr['metric_after_fine_tune'])} after "
                    f"{pr['fine_tune_epochs']} epochs of distillation fine-tune.")
    elif pr.get("error"):
        head.append(f"Pruning failed: {pr['error']}")
    load = rep.get("timing_load")
    if load:
        busy = load["other_cores"] >= 0.25
        head.append(f"While timing ({load['seconds']} s), other processes kept "
                    f"{load['other_cores']} of {load['cores']} cores busy"
                    + (": the medians, OpenVINO's most, are distorted." if busy else "."))
    else:
        head.append("Other processes' CPU use while timing: not recorded in this run.")
    npr = rep.get("native_pruning")
    if npr:
        head.append(f"torch-pruning by hand: {npr['macs'][0] / 1e6:.3f} M -> "
                    f"{npr['macs'][1] / 1e6:.3f} M MACs; {rep['metric']} "
                    f"{_metric_fmt(rep, npr['metric_after_prune'])} right after, "
                    f"{_metric_fmt(rep, npr['metric_after_fine_tune'])} after plain fine-tune.")
    lines = head + ["", "| runtime | variant | metric (drop) | fidelity cos / SQNR dB | size kB "
                    "| median ms | p90 ms | speed-up | GOP/s | % peak | executed | note |",
                    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for rt in RUNTIMES:
        for variant in VARIANTS + NATIVE:
            c = rep["cells"].get(f"{variant}/{rt}", {})
            if c.get("status") != "ok":
                lines.append(f"| {RT_LABEL[rt]} | {variant} | {_short(c.get('status', '?'))} "
                             "| | | | | | | | | |")
                continue
            f = c.get("fidelity") or {}
            note = []
            if c.get("same_as"):
                note.append(f"same file as {c['same_as'].split('/')[0]}")
            if c.get("float_layers"):
                note.append(f"float: {', '.join(c['float_layers'])}")
            if c.get("openvino_source"):
                note.append(f"from {c['openvino_source'].upper()}")
            if c.get("dynamic_range_nodes"):
                note.append(f"dynamic-range: {c['dynamic_range_nodes']}")
            if c.get("noisy"):
                note.append("noisy")
            lat = c.get("latency_check") or {}
            if lat.get("slower_than_fp32"):
                note.append("int8 slower than fp32 (flagged at build)")
            lines.append(
                f"| {RT_LABEL[rt]} | {variant} | {_metric_fmt(rep, c.get('metric'))} "
                f"({_metric_fmt(rep, c.get('metric_drop'))}) | {_fmt(f.get('cosine_min'), '.4f')}"
                f" / {_fmt(f.get('sqnr_db'), '.1f')} | {_fmt(c.get('size_bytes', 0) / 1024, '.1f')}"
                f" | {_fmt(c.get('median_ms'), '.4f')} | {_fmt(c.get('p90_ms'), '.4f')} | "
                f"{_fmt(c.get('speedup_vs_fp32'))}x | {_fmt(c.get('gops'), '.2f')} | "
                f"{_fmt(c.get('percent_of_peak'), '.2f')} | {c.get('executed_precision') or '-'}"
                f" | {'; '.join(note)[:140]} |")
    return lines + [""]


def plots(doc: dict[str, Any], out: Path) -> list[str]:
    """suite_speedup.png: speed-up over fp32 per model, variant and runtime."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    models = [r for r in doc["models"] if "cells" in r]
    if not models:
        return []
    variants = ("pruned", "int8", "pruned_int8", "native_int8")
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(models) + 2.2), sharey=True)
    for ax, rt in zip(axes, RUNTIMES):
        y = np.arange(len(models))
        for k, v in enumerate(variants):
            vals = [r["cells"].get(f"{v}/{rt}", {}).get("speedup_vs_fp32") or 0 for r in models]
            ax.barh(y + (k - 1.5) * 0.2, vals, height=0.2, label=v)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(RT_LABEL[rt])
        ax.set_yticks(y, [r["model"] for r in models])
        ax.set_xlabel("speed-up over fp32 (x)")
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "suite_speedup.png", dpi=80)
    plt.close(fig)
    return ["suite_speedup.png"]


def readme_section(doc: dict[str, Any]) -> str:
    """The README's performance section: the overview and the losses, from the results."""
    text = to_markdown(doc)
    overview = text.split("## Overview", 1)[1].split("## Per model", 1)[0]
    peak = doc["peak"]
    return ("Generated by `make bench` from "
            "[benchmarks/results/suite.md](benchmarks/results/suite.md) "
            f"({doc['meta']['machine']['cpu']}, {doc['meta']['threads']} thread per runtime; "
            f"measured peak fp32 {peak['fp32']['ops_per_s'] / 1e9:.1f} GFLOP/s, int8 "
            f"{peak['int8']['ops_per_s'] / 1e9:.1f} GOP/s).\n\n### Overview" + overview)


def write_report(out: Path, mode: str, readme: bool) -> dict[str, Any]:
    run_dir = out / "suite"
    meta = json.loads((run_dir / "_meta.json").read_text())
    models = []
    for name in meta["models"]:
        f = run_dir / f"{name}.json"
        models.append(json.loads(f.read_text()) if f.is_file()
                      else {"model": name, "error": "not measured yet: the run stopped before "
                            "this model (`python -m benchmarks.suite --full --resume` goes on)"})
    for rep in models:  # % of peak against the peak on record (it may be re-measured)
        for key, cell in rep.get("cells", {}).items():
            peak = meta["peak"]["int8" if "int8" in key.split("/")[0] else "fp32"]["ops_per_s"]
            if cell.get("gops") and peak:
                cell["percent_of_peak"] = round(100.0 * cell["gops"] * 1e9 / peak, 3)
    doc = {"schema": "edgekit.suite", "version": 1, "meta": meta, "peak": meta["peak"],
           "models": models}
    (out / "suite.json").write_text(json.dumps(doc, indent=1, default=_json) + "\n")
    (out / "suite.md").write_text(to_markdown(doc))
    doc["plots"] = plots(doc, out)
    if readme:
        update_readme_section("performance", readme_section(doc))
    return doc


def _json(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def _remeasure_peak(meta_path: Path) -> None:
    meta = json.loads(meta_path.read_text())
    again = measure_peak(meta["threads"])
    for precision in ("fp32", "int8"):
        old, new = meta["peak"][precision], again[precision]
        if (new["ops_per_s"] or 0) > (old["ops_per_s"] or 0):
            new["note"] = (f"measured again after the run ({time.strftime('%Y-%m-%d')}); "
                           f"the run's own start measured {old['ops_per_s'] / 1e9:.1f} G/s")
            meta["peak"][precision] = new
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    for k, v in meta["peak"].items():
        if isinstance(v, dict):
            _say(f"peak {k}: {v['ops_per_s'] / 1e9:.1f} G/s ({v['kernel']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite",
                                 description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="the committed results (default)")
    g.add_argument("--quick", action="store_true", help="smoke run: two models, few runs")
    g.add_argument("--report", action="store_true", help="only re-render from the JSON files")
    ap.add_argument("--models", help="comma-separated subset (default: the mode's models)")
    ap.add_argument("--runs", type=int, help="timed rounds per artifact (default: the mode's)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--resume", action="store_true", help="skip models already measured")
    ap.add_argument("--readme", action="store_true", help="rewrite README's performance section")
    ap.add_argument("--remeasure-peak", action="store_true",
                    help="with --report: measure the peak again now and keep the higher one "
                    "(for a run whose start coincided with other load)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    run_dir = out / "suite"
    if args.report:
        if args.remeasure_peak:
            _remeasure_peak(run_dir / "_meta.json")
        write_report(out, "", args.readme)
        print((out / "suite.md").read_text())
        return 0
    mode = MODES["quick" if args.quick else "full"]
    if args.models:
        unknown = [m for m in args.models.split(",") if m not in list_models()]
        if unknown:
            ap.error(f"unknown model(s) {unknown}; known: {list_models()}")
        mode.models = tuple(args.models.split(","))
    if args.runs:
        mode.runs = args.runs
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    meta_path = run_dir / "_meta.json"
    if args.resume and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta["models"] = list(dict.fromkeys(meta["models"] + list(mode.models)))
    else:
        for old in run_dir.glob("*.json"):
            old.unlink()
        _say(f"measuring this machine's peak ({mode.threads} thread)")
        meta = {"mode": mode.name, "threads": mode.threads, "runs": mode.runs,
                "warmup": mode.warmup, "machine": machine(),
                "peak": measure_peak(mode.threads), "models": list(mode.models),
                "settings": {k: v for k, v in asdict(mode).items() if k != "models"},
                "started": time.strftime("%Y-%m-%d")}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    with tempfile.TemporaryDirectory(prefix="edgekit-suite-") as tmp:
        for name in mode.models:
            if args.resume and (run_dir / f"{name}.json").is_file():
                continue
            _say(f"{name} ...")
            try:
                rep = run_model(name, mode, Path(tmp), meta["peak"])
            except KeyboardInterrupt:
                _say("interrupted: finished models are kept; rerun with --resume")
                break
            except Exception as exc:
                traceback.print_exc()
                rep = {"model": name, "error": _reason(exc)}
            (run_dir / f"{name}.json").write_text(json.dumps(rep, indent=1, default=_json) + "\n")
            write_report(out, mode.name, args.readme)
            _say(f"{name}: done in {rep.get('seconds', '?')} s")
    write_report(out, mode.name, args.readme)
    print((out / "suite.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
