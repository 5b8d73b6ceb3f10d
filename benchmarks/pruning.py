"""Structured pruning on the zoo's real tasks: MACs, parameters, accuracy (before pruning, right
after, after fine-tuning with distillation) and median latency on ONNX Runtime, OpenVINO and
LiteRT, unpruned and pruned timed side by side (interleaved) in one run.

    python benchmarks/pruning.py [--models cnn,mobilenet_v2] [--runs 300] [--threads 1]

Writes benchmarks/results/pruning.{json,md}. Numbers are measured, not asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgekit.measure.timing import time_interleaved
from edgekit.models import get_spec
from edgekit.pipeline import compress
from edgekit.prune import prune_and_fine_tune

from common import trained

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"onnxruntime": "x86-onnxruntime-fp32", "openvino": "x86-openvino-fp32",
           "tflite": "x86-tflite-fp32"}

# Per model: pruning target and schedule. MACs reduction 0.5 = 2x fewer MACs.
PLANS = {
    "cnn": dict(macs_reduction=0.55, round_to=8, steps=1, importance="l2"),
    "mobilenet_v2": dict(macs_reduction=0.55, round_to=8, steps=2, importance="l2"),
    "ds_cnn": dict(macs_reduction=0.55, round_to=8, steps=1, importance="l2"),
    "transformer": dict(macs_reduction=0.5, round_to=4, steps=1, importance="l2"),
    "lstm": dict(macs_reduction=0.5, round_to=8, steps=1, importance="l2"),
}


def log(msg: str) -> None:
    print(f"[pruning] {msg}", file=sys.stderr, flush=True)


class Floor(torch.nn.Module):
    """The model's inputs and output shapes with next to no work in between (a slice of the
    first input): what one call costs a runtime before any layer runs."""

    def __init__(self, out_shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.out_shapes = out_shapes

    def forward(self, *inputs: torch.Tensor):
        flat = inputs[0].flatten(1).float()
        outs = []
        for shape in self.out_shapes:
            n = math.prod(shape[1:])
            v = torch.nn.functional.pad(flat, (0, max(0, n - flat.shape[1])))[:, :n]
            outs.append(v.reshape(shape))
        return outs[0] if len(outs) == 1 else tuple(outs)


def run_model(name: str, runs: int, threads: int, tmp: Path) -> dict:
    spec = get_spec(name)
    plan = dict(PLANS[name])
    task = spec.task()
    model, meta = trained(name)  # the zoo's default epochs, seed 0; cached across runs
    train_s = meta["train_seconds"]
    unpruned = copy.deepcopy(model).eval()
    x = spec.example_inputs(1)
    steps = plan.pop("steps")
    epochs = max(4, spec.default_epochs // 2)
    t0 = time.perf_counter()
    res, rep = prune_and_fine_tune(model, x, task, steps=steps, epochs_per_step=epochs,
                                   final_epochs=spec.default_epochs, teacher=unpruned,
                                   progress=False, **plan)
    tune_s = time.perf_counter() - t0
    log(f"{name}: {res.macs_ratio:.2f}x fewer MACs; {task.metric} {rep['before']:.4f} -> "
        f"{rep['after_prune']:.4f} -> {rep['after_fine_tune']:.4f}")
    sessions, feeds = {}, {}
    with torch.no_grad():
        out = unpruned(*x)
    floor = Floor([tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])])
    for tag, m in (("unpruned", unpruned), ("pruned", model), ("floor", floor)):
        bundle = compress(m, x, targets=list(TARGETS.values()), out_dir=tmp / f"{name}-{tag}",
                          input_names=spec.input_names, output_names=spec.output_names,
                          task=task if tag != "floor" else None, verify_samples=32,
                          progress=False, history=[res.to_json()] if tag == "pruned" else ())
        for rt, target in TARGETS.items():
            sessions[f"{tag}/{rt}"] = bundle.load(target, threads=threads)
            feeds[f"{tag}/{rt}"] = [t.numpy() for t in x]
    stats = time_interleaved(sessions, feeds, warmup=30, runs=runs)
    latency = {}
    for rt in TARGETS:
        a, b, f = stats[f"unpruned/{rt}"], stats[f"pruned/{rt}"], stats[f"floor/{rt}"]
        latency[rt] = {"unpruned_ms": round(a.median_ms, 4), "pruned_ms": round(b.median_ms, 4),
                       "speedup": round(a.median_ms / b.median_ms, 3),
                       "floor_ms": round(f.median_ms, 4),
                       "above_floor_speedup": (round((a.median_ms - f.median_ms)
                                                     / (b.median_ms - f.median_ms), 3)
                                               if b.median_ms > f.median_ms else None),
                       "noisy": bool(a.noisy or b.noisy)}
    return {
        "model": name, "task": task.name, "metric": task.metric, "plan": PLANS[name],
        "macs": [res.macs_before, res.macs_after], "params": [res.params_before,
                                                             res.params_after],
        "macs_reduction_x": round(res.macs_ratio, 3),
        "params_reduction_x": round(res.params_ratio, 3),
        "metric_before": round(rep["before"], 4),
        "metric_after_prune": round(rep["after_prune"], 4),
        "metric_after_fine_tune": round(rep["after_fine_tune"], 4),
        "steps": rep["steps"], "latency": latency,
        "train_seconds": round(train_s, 1), "prune_fine_tune_seconds": round(tune_s, 1),
    }


def row_from_suite(rep: dict) -> dict:
    """A pruning row from the benchmark suite's per-model JSON (benchmarks/results/suite/),
    where the unpruned and pruned artifacts were also timed side by side in one run."""
    pr, cells = rep["pruning"], rep["cells"]
    latency = {}
    for rt in TARGETS:
        a, b = cells[f"fp32/{rt}"], cells[f"pruned/{rt}"]
        latency[rt] = {"unpruned_ms": a["median_ms"], "pruned_ms": b["median_ms"],
                       "speedup": round(a["median_ms"] / b["median_ms"], 3),
                       "noisy": bool(a.get("noisy") or b.get("noisy"))}
    return {"model": rep["model"], "task": rep["task"], "metric": rep["metric"],
            "plan": pr["plan"], "macs": pr["macs"], "params": pr["params"],
            "macs_reduction_x": pr["macs_reduction_x"],
            "params_reduction_x": pr["params_reduction_x"],
            "metric_before": pr["metric_before"], "metric_after_prune": pr["metric_after_prune"],
            "metric_after_fine_tune": pr["metric_after_fine_tune"], "steps": pr["steps"],
            "latency": latency, "train_seconds": rep["train"].get("train_seconds"),
            "prune_fine_tune_seconds": pr.get("prune_fine_tune_seconds"),
            "source": f"benchmarks/results/suite/{rep['model']}.json"}


def verdict(row: dict) -> list[str]:
    notes = []
    drop = row["metric_before"] - row["metric_after_fine_tune"]  # top1 is in percent
    if row["model"] in ("cnn", "mobilenet_v2"):
        if row["macs_reduction_x"] < 2:
            notes.append(f"MACs only {row['macs_reduction_x']:.2f}x (bar: 2x)")
        if drop > 1.0:
            notes.append(f"accuracy lost {drop:.1f} points (bar: at most 1.0)")
    for rt in ("onnxruntime", "openvino"):
        lat = row["latency"][rt]
        if lat["speedup"] < row["macs_reduction_x"] / 2:
            floor = (f" (per-call floor {lat['floor_ms']:.4f} ms; above it the pruned model is "
                     f"{lat['above_floor_speedup']:.2f}x faster)"
                     if lat.get("above_floor_speedup") else "")
            notes.append(f"{rt} speed-up {lat['speedup']:.2f}x < half the MAC reduction "
                         f"({row['macs_reduction_x'] / 2:.2f}x){floor}")
    return notes


def markdown(rows: list[dict], meta: dict) -> str:
    out = ["# Structured pruning benchmark", "",
           f"Machine: {meta['machine']}; {meta['threads']} thread(s) per runtime, batch 1, "
           f"median of {meta['runs']} interleaved calls (unpruned and pruned artifacts of one "
           "model timed side by side). OpenVINO runs in f32 (`INFERENCE_PRECISION_HINT`). "
           "Accuracy: test split of the model's real task. Pruning: edgekit.prune "
           "(torch-pruning dependency graph, L2 magnitude, channels rounded to multiples of "
           "8, or of num_heads for the transformer), fine-tuned with distillation from the "
           "unpruned model.", "",
           "| model | MACs | params | metric before / after prune / after fine-tune | "
           "ONNX Runtime ms (speed-up) | OpenVINO ms (speed-up) | LiteRT ms (speed-up) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = [f"{r['latency'][rt]['unpruned_ms']:.4f} -> {r['latency'][rt]['pruned_ms']:.4f} "
               f"({r['latency'][rt]['speedup']:.2f}x"
               f"{', noisy' if r['latency'][rt]['noisy'] else ''})"
               for rt in TARGETS]
        out.append(
            f"| {r['model']} | {r['macs'][0] / 1e6:.3f} M -> {r['macs'][1] / 1e6:.3f} M "
            f"({r['macs_reduction_x']:.2f}x) | {r['params'][0] / 1e3:.1f} k -> "
            f"{r['params'][1] / 1e3:.1f} k | {r['metric']}: {r['metric_before']:.1f} / "
            f"{r['metric_after_prune']:.1f} / {r['metric_after_fine_tune']:.1f} | "
            + " | ".join(lat) + " |")
    out += ["", "## Against the bar", ""]
    for r in rows:
        notes = verdict(r)
        out.append(f"- **{r['model']}**: " + ("meets the bar." if not notes else "; ".join(notes)
                                                + "."))
    out += ["", "Per-call floor: a model with the same inputs and outputs and next to no work "
            "(a slice of the first input), built and timed in the same interleaved run; the "
            "time a call costs before any layer runs, which pruning cannot remove. Rows "
            "without it were measured before it was added.",
            "", "Baseline (torch-pruning by hand, ratio 0.5, plain 3-epoch fine-tune, "
            "the hand-made baseline): MobileNetV2 98.3 -> 93.6, 1.63x on ONNX Runtime for "
            "3.2x fewer MACs; small CNN 98.6 -> 98.1, 1.13x.", ""]
    if meta.get("notes"):
        out += ["## Notes", "", *meta["notes"], ""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(PLANS))
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="only merge the rows of earlier runs' pruning.json files (split runs of "
                    "one benchmark) and of the suite's per-model JSON files "
                    "(benchmarks/results/suite/<model>.json) into --out, in PLANS order")
    args = ap.parse_args()
    if args.combine:
        runs = [json.loads(Path(f).read_text()) for f in args.combine]
        by_model = {}
        for run in runs:  # later files win
            suite_row = "cells" in run and "macs" in run.get("pruning", {})
            for r in ([row_from_suite(run)] if suite_row else run.get("rows", [])):
                by_model[r["model"]] = r
        rows = [by_model[m] for m in PLANS if m in by_model]
        for r in rows:
            r["below_bar"] = verdict(r)
        meta = {**next(r["meta"] for r in runs if "meta" in r), "notes": [
            "Rows were measured in separate runs on the same machine (unpruned and pruned of "
            "each model always side by side in one run). Rows with a `source` come from the "
            "benchmark suite (`python -m benchmarks.suite`, 1 thread, 300 interleaved calls, "
            "fine-tune epochs = half the training epochs): "
            + ", ".join(r["model"] for r in rows if r.get("source")) + "."]}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pruning.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        (out / "pruning.md").write_text(markdown(rows, meta))
        print((out / "pruning.md").read_text())
        return 0
    torch.set_num_threads(2)
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": args.threads, "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="edgekit-pruning-") as tmp:
        for name in args.models.split(","):
            log(f"{name} ...")
            rows.append(run_model(name, args.runs, args.threads, Path(tmp)))
            for r in rows:
                r["below_bar"] = verdict(r)
            (out / "pruning.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                         indent=2) + "\n")
            (out / "pruning.md").write_text(markdown(rows, meta))
    print((out / "pruning.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
