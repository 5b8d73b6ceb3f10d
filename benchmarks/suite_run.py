"""One zoo model through the benchmark suite: trained, pruned, built for every runtime at fp32
and int8 (edgekit's flows and each runtime's native one), then every session timed side by side,
scored on the task's test split and compared with the fp32 PyTorch model (:class:`ModelRun`).
The run's settings per mode (:class:`Mode`) and per model (pruning plans) live here too."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgekit.bench.peak import percent_of_peak  # noqa: E402
from edgekit.errors import EdgekitError, QuantizationError  # noqa: E402
from edgekit.measure.metrics import compare_outputs  # noqa: E402
from edgekit.measure.scoring import session_outputs  # noqa: E402
from edgekit.measure.timing import time_interleaved  # noqa: E402
from edgekit.models import get_spec  # noqa: E402
from edgekit.models.zoo import count_macs  # noqa: E402
from edgekit.pipeline import compress  # noqa: E402
from edgekit.train import evaluate, predict  # noqa: E402

import native  # noqa: E402
from common import FP32, INT8, RUNTIMES, artifact_size, log, pruned, trained  # noqa: E402

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
#: Which model's MACs a variant runs (int8 and native flows run the unpruned model).
MACS_OF = {"pruned": "pruned", "pruned_int8": "pruned", "native_pruned": "native_pruned"}

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


def failure_reason(exc: BaseException) -> str:
    """A cell's status for a failure: its kind and the first line of the message."""
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
            _say(f"{self.name} {variant} {'/'.join(targets)}: {failure_reason(exc)}")
            self._mark(variant, targets, failure_reason(exc))
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
                        "openvino_source_choice": q.get("source_choice")}
                       if rt == "openvino" else {}),
                    } if "int8" in variant else {}),
            }

    def _native(self, variant: str, rt: str, make) -> None:
        key = f"{variant}/{rt}"
        try:
            sess, size = make()
        except Exception as exc:
            _say(f"{self.name} {key}: {failure_reason(exc)}")
            self.cells[key] = {"status": failure_reason(exc)}
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
            report["pruning"] = {"error": failure_reason(exc)}
            self._mark("pruned", RUNTIMES, f"pruning failed: {failure_reason(exc)}")
            self._mark("pruned_int8", RUNTIMES, f"pruning failed: {failure_reason(exc)}")
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
            self._mark("native_pruned", RUNTIMES, f"torch-pruning by hand: {failure_reason(exc)}")

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
                self.cells[key]["status"] = ("runs but its outputs cannot be scored: "
                                             f"{failure_reason(exc)}")
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
