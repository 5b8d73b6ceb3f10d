"""The main job on the bundled default: train, export for three runtimes, verify, benchmark.

``edgekit demo`` (and ``make demo``) runs :func:`run_demo`: the seed CNN is trained on the
bundled digits, exported for ONNX Runtime, OpenVINO and TFLite, verified against PyTorch,
then every runtime (and PyTorch itself) is timed side by side and scored on the test split.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from .bench.accuracy import evaluate_session
from .bench.latency import time_interleaved
from .bench.reference import TorchSession
from .bench.report import Column, markdown_table, text_table
from .bundle import write_json

DEMO_TARGETS = ("x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32")

COLUMNS: list[Column] = [
    ("target", "target", ""),
    ("runtime", "runtime", ""),
    ("executes", "executes", ""),
    ("size_kib", "size KiB", ".1f"),
    ("median_ms", "median ms", ".4f"),
    ("p90_ms", "p90 ms", ".4f"),
    ("speedup", "vs PyTorch", ".2f"),
    ("metric", "test metric", ".2f"),
    ("max_abs_diff", "max abs diff", ".2e"),
]


def run_demo(
    *,
    out_dir: str | Path = "build/demo",
    model: str = "cnn",
    runs: int = 300,
    warmup: int = 30,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole job and return the report (also written as report.json / report.md)."""
    from .api import build_zoo_model
    from .models import get_spec

    out = Path(out_dir)
    spec = get_spec(model)
    bundle, torch_model = build_zoo_model(
        model, targets=list(DEMO_TARGETS), out_dir=out / model, progress=progress
    )
    task = spec.task()
    sessions: dict[str, Any] = {}
    for target in bundle.targets:
        sessions[target] = bundle.load(target, threads=threads)
    entry0 = bundle.manifest["model"]
    from .backends import TensorSpec

    sessions["pytorch"] = TorchSession(
        torch_model,
        [TensorSpec.from_json(t) for t in entry0["inputs"]],
        [TensorSpec.from_json(t) for t in entry0["outputs"]],
        threads=threads or sessions[bundle.targets[0]].info.get("threads", 2),
    )
    if progress:
        print(f"[edgekit] scoring {len(sessions)} runtimes on {len(task.test)} test samples",
              file=sys.stderr, flush=True)
    metric = {name: evaluate_session(s, task.test, task) for name, s in sessions.items()}
    feeds = {name: [t.numpy() for t in spec.example_inputs(1)] for name in sessions}
    if progress:
        print(f"[edgekit] timing {len(sessions)} runtimes side by side, {runs} calls each",
              file=sys.stderr, flush=True)
    latency = time_interleaved(sessions, feeds, warmup=warmup, runs=runs)

    rows = []
    base = latency["pytorch"].median_ms
    for name, session in sessions.items():
        entry = bundle.manifest["targets"].get(name)
        rows.append({
            "target": name,
            "runtime": session.info.get("runtime", session.backend),
            "executes": f"{session.info.get('precision', '?')} x{session.info.get('threads', '?')}",
            "size_kib": sum(f["bytes"] for f in entry["files"]) / 1024 if entry else None,
            "median_ms": latency[name].median_ms,
            "p90_ms": latency[name].p90_ms,
            "noisy": latency[name].noisy,
            "speedup": base / latency[name].median_ms,
            "metric": metric[name],
            "max_abs_diff": max(o["max_abs"] for o in entry["verification"]["outputs"])
            if entry else None,
            "latency": latency[name].to_json(),
        })
    report = {
        "schema_version": 1,
        "model": model,
        "task": {"name": task.name, "metric": task.metric, "test_samples": len(task.test)},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "runs": runs,
        "warmup": warmup,
        "bundle": str(bundle.root),
        "rows": rows,
    }
    table = text_table(rows, COLUMNS)
    print(f"\n{model} on {task.name} ({task.metric} on {len(task.test)} test samples), "
          f"batch 1, {runs} interleaved calls per runtime, median latency:\n")
    print(table)
    noisy = [r["target"] for r in rows if r["noisy"]]
    if noisy:
        print(f"\nnoisy timings (coefficient of variation > 25%): {', '.join(noisy)}")
    write_json(out / "report.json", report)
    md = [f"# edgekit demo: {model} on {task.name}", "",
          f"Test metric: {task.metric} on {len(task.test)} held-out samples. Latency: batch 1, "
          f"{runs} interleaved calls per runtime after {warmup} warm-up calls.", "",
          markdown_table(rows, COLUMNS), ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    print(f"\nbundle: {bundle.root}\nreport: {out / 'report.md'} and {out / 'report.json'}")
    return json.loads(json.dumps(report))
