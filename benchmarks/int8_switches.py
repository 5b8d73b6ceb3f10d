"""What each default-on int8 switch is worth on a trained deployment model, side by side.

    python -m benchmarks.int8_switches [--models bert_mini_128] [--target x86-onnxruntime-int8]
                                       [--calibration 32] [--out benchmarks/results]

For each model (a trained zoo twin of ``benchmarks.deploy``, weights cached as there), the
target's int8 build with edgekit's defaults, then with each default-on switch turned off in
turn (``softmax_ranges``, ``reduce_range``, ``equalize``, ``bias_correction``), every build
scored on the whole test split; the runtime's own default int8 flow beside them. The gate and
fallback stay as configured, so a build that misses its gate is reported as failed, with the
reason. Writes ``int8_switches.{json,md}``; the machine is recorded (ONNX Runtime's int8
kernels differ with VNNI). Numbers are measured, not asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: Default-on switches, each turned off in turn.
SWITCHES = {"softmax_ranges": False, "reduce_range": "off", "equalize": False,
            "bias_correction": False}


def log(msg: str) -> None:
    print(f"[int8-switches] {msg}", file=sys.stderr, flush=True)


def run_model(name: str, target: str, calib_n: int) -> dict[str, Any]:
    from benchmarks.common import trained
    from benchmarks.deploy import ZOO_TWINS, accuracy_machine, native_accuracy, task_scores
    from edgekit.measure.scoring import session_outputs, split_batches
    from edgekit.models import get_spec
    from edgekit.pipeline import compress

    zoo = ZOO_TWINS[name]
    spec = get_spec(zoo)
    model, _ = trained(zoo)
    task = spec.task()
    test, targets = task.test, task.test.targets.numpy()
    calib = split_batches(task.val, 1, limit=calib_n)
    from edgekit.train import predict

    cells: dict[str, Any] = {"pytorch/fp32": task_scores(task, predict(model, test), targets)}
    variants = {"edgekit defaults": {}, **{f"{k} off": {k: v} for k, v in SWITCHES.items()}}
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-switches-") as tmp:
        for label, change in variants.items():
            t0 = time.perf_counter()
            try:
                bundle = compress(model, spec.example_inputs(1), targets=[target],
                                  out_dir=Path(tmp) / label.replace(" ", "-"), name=zoo,
                                  input_names=spec.input_names, output_names=spec.output_names,
                                  calibration=calib, verify_samples=8, progress=False,
                                  quantization=change or None)
                outs = session_outputs(bundle.load(target, threads=1), test, batch=1)
                cells[label] = task_scores(task, outs, targets[: len(outs[0])])
            except Exception as exc:  # a failed build is a result, with its reason
                cells[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            cells[label]["seconds"] = round(time.perf_counter() - t0, 1)
            log(f"{name} {label}: {cells[label]}")
        runtime = target.split("-")[1]
        native = native_accuracy(model, spec, calib, task, test, targets, Path(tmp),
                                 runtimes=[runtime])
        cells["runtime default flow"] = native[f"{runtime}/native_int8"]
    return {"model": name, "zoo": zoo, "target": target, "metric": task.metric,
            "test_samples": len(test), "calibration_samples": calib_n,
            "machine": accuracy_machine(), "cells": cells}


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["# Default-on int8 switches, each turned off in turn", "",
             "`python -m benchmarks.int8_switches`: trained deployment twins, int8 built by "
             "`edgekit.compress` (gate and fallback as configured), scored on the whole test "
             "split; the runtime's own default int8 flow beside them, same run.", ""]
    for r in rows:
        m = r["machine"]
        lines += [f"## {r['model']} on {r['target']} ({r['metric']}, {r['test_samples']} test "
                  f"samples; {m['cpu']}, {m['int8_kernels']})", "",
                  "| build | score | vs PyTorch fp32 |", "|---|---:|---:|"]
        ref = r["cells"]["pytorch/fp32"][r["metric"]]
        for label, c in r["cells"].items():
            if "error" in c:
                lines.append(f"| {label} | failed: {c['error'][:160]} | |")
            else:
                lines.append(f"| {label} | {c[r['metric']]:.2f} | "
                             f"{c[r['metric']] - ref:+.2f} |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert_mini_128")
    ap.add_argument("--target", default="x86-onnxruntime-int8")
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from benchmarks.common import write_results

    torch.set_num_threads(1)
    rows = [run_model(n, args.target, args.calibration) for n in args.models.split(",") if n]
    write_results(Path(args.out), "int8_switches", rows, markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
