"""What each default-on int8 switch is worth on a trained deployment model, side by side.

    python -m benchmarks.int8_switches [--models bert_mini_128] [--target x86-onnxruntime-int8]
                                       [--calibration 32] [--base JSON] [--switches a,b]
                                       [--out benchmarks/results]

For each model (a trained zoo twin of ``benchmarks.deploy``, weights cached as there), the
target's int8 build with edgekit's defaults (plus ``--base``, e.g. ``'{"fallback": false}'``),
then with each default-on switch turned off in turn (``softmax_ranges``, ``reduce_range``,
``equalize``, ``bias_correction``) and each opt-in one turned on (``int8_bias_correction``,
alone and with ``range_method = "auto"``, and ``equalize`` on, built once where the default
``"auto"`` builds with and without it); ``--switches`` picks some. Every build is scored on
the whole test split (the task metric, and the SQNR of its outputs against PyTorch fp32); the
runtime's own default int8 flow beside them. The gate and fallback stay as configured, so a
build that misses its gate is reported as failed, with the reason. Writes
``int8_switches.{json,md}``; the machine is recorded (ONNX Runtime's int8 kernels differ with
VNNI). Numbers are measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import shlex
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
#: Opt-in settings, each turned on in turn (label -> settings).
OPT_IN = {"int8_bias_correction on": {"int8_bias_correction": True},
          "int8_bias_correction on, range_method auto": {"int8_bias_correction": True,
                                                         "range_method": "auto"},
          # the default "auto" builds with and without equalization; "on" builds once
          "equalize on (built once)": {"equalize": True},
          # softmax inputs on their row range, never the float build beside it
          "softmax_ranges narrow": {"softmax_ranges": "narrow"},
          # Q/DQ only on weight-layer inputs: adds, norms and softmax in float
          "int8_scope layers": {"int8_scope": "layers"}}


def log(msg: str) -> None:
    print(f"[int8-switches] {msg}", file=sys.stderr, flush=True)


def _sqnr_db(outs: list[Any], ref: Any) -> float:
    """SQNR (dB) of the first output against PyTorch's over the samples both have."""
    from edgekit.measure.metrics import sqnr_db

    n = min(len(outs[0]), len(ref))
    return round(sqnr_db(ref[:n], outs[0][:n]), 2)


def run_model(name: str, target: str, calib_n: int, base: dict[str, Any] | None = None,
              switches: list[str] | None = None) -> dict[str, Any]:
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

    ref = predict(model, test)
    cells: dict[str, Any] = {"pytorch/fp32": task_scores(task, ref, targets)}
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    variants: dict[str, dict[str, Any]] = {
        "edgekit defaults": {}, **{f"{k} off": {k: v} for k, v in SWITCHES.items()}, **OPT_IN}
    if switches is not None:
        variants = {k: v for k, v in variants.items() if k == "edgekit defaults" or any(
            k.startswith(f"{s} ") for s in switches)}
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-switches-") as tmp:
        for label, change in variants.items():
            t0 = time.perf_counter()
            try:
                bundle = compress(model, spec.example_inputs(1), targets=[target],
                                  out_dir=Path(tmp) / label.replace(" ", "-"), name=zoo,
                                  input_names=spec.input_names, output_names=spec.output_names,
                                  calibration=calib, verify_samples=8, progress=False,
                                  quantization={**(base or {}), **change} or None)
                outs = session_outputs(bundle.load(target, threads=1), test, batch=1)
                cells[label] = {**task_scores(task, outs, targets[: len(outs[0])]),
                                "sqnr_db": _sqnr_db(outs, ref)}
            except Exception as exc:  # a failed build is a result, with its reason
                cells[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            cells[label]["seconds"] = round(time.perf_counter() - t0, 1)
            log(f"{name} {label}: {cells[label]}")
        runtime = target.split("-")[1]
        native = native_accuracy(model, spec, calib, task, test, targets, Path(tmp),
                                 runtimes=[runtime])
        cells["runtime default flow"] = native[f"{runtime}/native_int8"]
    return {"model": name, "zoo": zoo, "target": target, "metric": task.metric,
            "test_samples": len(test), "calibration_samples": calib_n, "base": base or {},
            "machine": accuracy_machine(), "cells": cells}


def markdown(rows: list[dict[str, Any]],
             command: str = "python -m benchmarks.int8_switches") -> list[str]:
    lines = ["# int8 switches, each changed in turn", "",
             f"`{command}`: trained deployment twins, int8 built by `edgekit.compress` (gate "
             "and fallback as configured), each default-on switch turned off and each opt-in one "
             "turned on in turn, scored on the whole test split (the task metric, and the SQNR "
             "of the outputs against PyTorch fp32); the runtime's own default int8 flow beside "
             "them, same run. `build s`: the wall time of the build (`compress`, held-out "
             "checks included), one run each, on a machine that may be running other work.",
             ""]
    for r in rows:
        m = r["machine"]
        calib = f", {r['calibration_samples']} calibration samples" \
            if "calibration_samples" in r else ""
        base = f", every build from {r['base']}" if r.get("base") else ""
        lines += [f"## {r['model']} on {r['target']} ({r['metric']}, {r['test_samples']} test "
                  f"samples{calib}{base}; {m['cpu']}, {m['int8_kernels']})",
                  "", "| build | score | vs PyTorch fp32 | SQNR vs PyTorch fp32 (dB) | "
                  "build s |", "|---|---:|---:|---:|---:|"]
        ref = r["cells"]["pytorch/fp32"][r["metric"]]
        for label, c in r["cells"].items():
            if "error" in c:
                lines.append(f"| {label} | failed: {c['error'][:160]} | | | |")
            else:
                sq, secs = c.get("sqnr_db"), c.get("seconds")
                lines.append(f"| {label} | {c[r['metric']]:.2f} | "
                             f"{c[r['metric']] - ref:+.2f} | "
                             f"{'-' if sq is None else f'{sq:.2f}'} | "
                             f"{'-' if secs is None else f'{secs:.1f}'} |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert_mini_128")
    ap.add_argument("--target", default="x86-onnxruntime-int8")
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--base", type=json.loads, default=None, metavar="JSON",
                    help="settings every build starts from, e.g. '{\"fallback\": false}'")
    ap.add_argument("--switches", default=None,
                    help="comma-separated switch names to vary (default: all)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from benchmarks.common import write_results

    torch.set_num_threads(1)
    switches = args.switches.split(",") if args.switches else None
    rows = [run_model(n, args.target, args.calibration, args.base, switches)
            for n in args.models.split(",") if n]
    command = shlex.join(["python", "-m", "benchmarks.int8_switches",
                          *(sys.argv[1:] if argv is None else argv)])
    write_results(Path(args.out), "int8_switches", rows, markdown(rows, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
