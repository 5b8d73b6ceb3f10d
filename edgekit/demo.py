"""The main job on the bundled default: train, export for three runtimes, verify, benchmark.

``edgekit demo`` (and ``make demo``) runs :func:`run_demo`: the seed CNN is trained on the
bundled digits, exported for ONNX Runtime, OpenVINO and TFLite and verified against PyTorch
(:func:`edgekit.api.build_zoo_model`); then the benchmark harness times every runtime and
PyTorch itself side by side and scores them on the test split (:func:`edgekit.bench.bench`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bench.report import Column, markdown_table, text_table
from .manifest import Manifest

DEMO_TARGETS = ("x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32")

COLUMNS: list[Column] = [
    ("name", "runtime target", ""),
    ("runtime", "runtime", ""),
    ("executes", "executes", ""),
    ("size_kib", "size KiB", ".1f"),
    ("median_ms", "median ms", ".4f"),
    ("p90_ms", "p90 ms", ".4f"),
    ("speedup", "vs PyTorch", ".2f"),
    ("accuracy", "test top-1 %", ".2f"),
    ("max_abs_diff", "max abs diff", ".2e"),
]


def demo_rows(report: dict[str, Any], manifest: Manifest) -> list[dict[str, Any]]:
    """The demo table: one row per runtime from the harness report and the bundle's manifest."""
    rows = []
    for r in report["results"]:
        if r.get("status") != "ok":
            rows.append({"name": r["name"], "runtime": f"skipped: {r.get('reason')}"})
            continue
        entry = manifest.targets.get(r["name"])
        rows.append({
            "name": r["name"],
            "runtime": r["runtime"],
            "executes": f"{r['precision']} x{r['threads']}",
            "size_kib": r["size_bytes"] / 1024 if r.get("size_bytes") else None,
            "median_ms": r["latency"]["median_ms"],
            "p90_ms": r["latency"]["p90_ms"],
            "noisy": r["latency"]["noisy"],
            "speedup": r["vs_baseline"]["speedup"],
            "accuracy": r["accuracy"]["value"] if r.get("accuracy") else None,
            # Verification against PyTorch on the example input + held-out images.
            "max_abs_diff": entry.max_abs_diff if entry else None,
        })
    return rows


def run_demo(
    *,
    out_dir: str | Path = "build/demo",
    model: str = "cnn",
    runs: int = 300,
    warmup: int = 30,
    threads: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the whole job; returns the harness report with the demo ``rows`` added.

    Writes the bundle to ``out_dir/<model>``, the harness reports (bench.json, bench.md,
    latency.png, tradeoff.png) and the demo table (report.md) to ``out_dir``.
    """
    from .api import build_zoo_model
    from .bench.harness import bench

    out = Path(out_dir)
    bundle, torch_model = build_zoo_model(
        model, targets=list(DEMO_TARGETS), out_dir=out / model, progress=progress,
        overwrite=overwrite,
    )
    report = bench(
        [bundle.root], models={"pytorch": torch_model}, threads=threads, runs=runs,
        warmup=warmup, baseline="pytorch", out_dir=out, progress=progress,
    )
    rows = demo_rows(report, bundle.manifest)
    task = (bundle.manifest.model.task if bundle.manifest.model else None) or {}
    title = (f"{model} trained on {task['name']}: test top-1 on the held-out test split, "
             f"batch 1, median of {runs} interleaved calls per runtime after {warmup} warm-up")
    print(f"\n{title}\n")
    print(text_table(rows, COLUMNS))
    noisy = [r["name"] for r in rows if r.get("noisy")]
    if noisy:
        print(f"\nnoisy timings (coefficient of variation > 25%): {', '.join(noisy)}")
    md = [f"# edgekit demo: {model}", "", title + ".", "", markdown_table(rows, COLUMNS), "",
          "Plots: `latency.png` (latency distributions), `tradeoff.png` (accuracy vs latency)."]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(f"\nbundle: {bundle.root}\nreport: {out / 'report.md'} (table), {out / 'bench.json'} "
          f"(all numbers), {out / 'latency.png'}, {out / 'tradeoff.png'}")
    report["rows"] = rows
    return report
