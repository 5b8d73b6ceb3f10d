"""Run `edgekit explain` on every zoo model and target; record how many PyTorch leaf modules
each runtime's tensors map to.

    python benchmarks/explain_coverage.py [--models cnn,lstm] [--targets x86-onnxruntime-fp32]

Each model is built untrained (seed 0: coverage is about the export metadata, not accuracy;
BatchNorm statistics estimated on the calibration inputs, so a deep random network's output
still depends on its input), one bundle per target (int8 targets calibrated on 64 samples of
the model's task, no fidelity gate or tolerance, no latency check), then explained on its
reference pairs at 1 thread. Writes benchmarks/results/explain_coverage.{json,md}. A target
that fails to build or explain is recorded with its error, not skipped silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgekit.errors import EdgekitError
from edgekit.explain import explain
from edgekit.models import get_spec, list_models
from edgekit.pipeline import compress
from edgekit.profiles import Tolerance, load_profile

from common import settle_batchnorm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NO_GATE = {"min_sqnr_db": False, "min_top1_agreement": False, "min_centred_cosine": False}
TARGETS = ["x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32",
           "x86-onnxruntime-int8", "x86-openvino-int8", "arm64-tflite-int8"]


def log(msg: str) -> None:
    print(f"[explain_coverage] {msg}", file=sys.stderr, flush=True)


def one(name: str, target: str, tmp: Path) -> dict:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.factory().eval()
    calibration = spec.task().train.subset(64)
    settle_batchnorm(model, [[np.asarray(x) for x in calibration.inputs]])
    row: dict = {"model": name, "target": target}
    t0 = time.perf_counter()
    try:
        kw = {}
        profile: Any = target
        if target.endswith("int8"):
            kw = {"calibration": calibration,
                  "quantization": {"latency_check": False}}
            # an untrained model's int8 fidelity is no question here: gate and tolerance off
            profile = dataclasses.replace(load_profile(target), gate=NO_GATE,
                                          tolerance=Tolerance(None, None, None))
        compress(model, spec.example_inputs(1), targets=[profile],
                 out_dir=tmp / f"{name}-{target}",
                 input_names=list(spec.input_names), output_names=list(spec.output_names),
                 progress=False, overwrite=True, **kw)
        report = explain(model, bundle=tmp / f"{name}-{target}", progress=False)
    except (EdgekitError, RuntimeError, ValueError) as exc:
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return row
    t = report.targets[0]
    cov = t.coverage
    row.update(status=t.status, mapped=cov["mapped"], total=cov["total"],
               coverage=cov["fraction"], fused=len(cov["fused"]), by_shape=len(cov["by_shape"]),
               unmapped=cov["unmapped"], first_jump=t.jump.module if t.jump else None,
               max_rel_error=max((r.rel_error for r in t.rows if r.mapped
                                  and r.rel_error is not None), default=None),
               seconds=round(time.perf_counter() - t0, 2))
    return row


def markdown(rows: list[dict], summary: dict) -> str:
    lines = ["# explain: mapping coverage on the zoo", "",
             f"PyTorch leaf modules mapped to a runtime tensor, per model and target "
             f"(untrained models; {summary['machine']}; models: {', '.join(summary['models'])}; "
             f"{summary['seconds']:.0f} s). `fused`: measured at the tensor of the module they "
             "were fused into; `shape`: mapped by shape. `max rel error`: the largest "
             "``||runtime - torch|| / ||torch||`` over the mapped layers.", "",
             "| model | target | mapped | coverage | fused | shape | first jump | max rel error "
             "| unmapped |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['target']} | {r['status']}: "
                         f"{r.get('error') or r.get('reason', '')} | | | | | | |")
            continue
        rel = r["max_rel_error"]
        lines.append(f"| {r['model']} | {r['target']} | {r['mapped']}/{r['total']} | "
                     f"{100 * r['coverage']:.0f}% | {r['fused']} | {r['by_shape']} | "
                     f"{r['first_jump'] or '-'} | {'-' if rel is None else f'{rel:.1e}'} | "
                     f"{', '.join(r['unmapped'][:6])}{' ...' if len(r['unmapped']) > 6 else ''} |")
    lines += ["", "Per target, all models pooled:", "", "| target | mapped | coverage |",
              "|---|---|---|"]
    for target, s in summary["targets"].items():
        lines.append(f"| {target} | {s['mapped']}/{s['total']} | {100 * s['coverage']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated subset (default: the whole zoo)")
    parser.add_argument("--targets", help=f"comma-separated subset (default: {','.join(TARGETS)})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = args.models.split(",") if args.models else list_models()
    targets = args.targets.split(",") if args.targets else TARGETS
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-explain-") as tmp:
        for name in models:
            for target in targets:
                row = one(name, target, Path(tmp))
                log(f"{name} {target}: " + (f"{row['mapped']}/{row['total']}"
                                            if row["status"] == "ok" else row["status"]))
                rows.append(row)
    per: dict = {}
    for r in rows:
        if r["status"] == "ok":
            s = per.setdefault(r["target"], {"mapped": 0, "total": 0})
            s["mapped"] += r["mapped"]
            s["total"] += r["total"]
    for s in per.values():
        s["coverage"] = round(s["mapped"] / s["total"], 4) if s["total"] else None
    summary = {"machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
               "models": models, "seconds": round(time.perf_counter() - start, 1),
               "targets": per}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "explain_coverage.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    (RESULTS / "explain_coverage.md").write_text(markdown(rows, summary))
    log(f"done in {summary['seconds']} s: " + ", ".join(
        f"{t} {100 * s['coverage']:.1f}%" for t, s in per.items() if s["coverage"] is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
