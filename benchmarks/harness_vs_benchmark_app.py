"""edgekit's harness next to OpenVINO's own ``benchmark_app`` on the same IR models.

For each model, an fp32 OpenVINO bundle is built (untrained by default: latency does not
depend on the weights' values), then, alternating in several rounds so machine noise hits
both alike, the harness times ``model.xml`` (``edgekit.bench``, latency hint, f32) and
``benchmark_app -m model.xml -d CPU -hint none -nstreams 1 -nireq 1 -api sync -nthreads N
-infer_precision f32 -niter R
-report_type no_counters -json_stats`` runs on the same file. The ratio harness median /
benchmark_app median is written to ``benchmarks/results/harness_vs_benchmark_app.{json,md}``;
the aim is agreement within 15%.

    python benchmarks/harness_vs_benchmark_app.py [--models cnn ds_cnn mobilenet_v2]
        [--threads 2] [--niter 300] [--rounds 3] [--train]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTE = ("The harness times Session.run as a Python caller sees it (feed check, copy into the "
        "request's tensor, infer, copy the outputs out); benchmark_app times the bare C++ "
        "infer call. That fixed ~10-15 us per call dominates on models under ~0.1 ms (cnn).")


def build(name: str, out: Path, train: bool) -> Path:
    import torch

    from edgekit.models import get_spec
    from edgekit.pipeline import compress

    if train:
        from edgekit.api import build_zoo_model

        build_zoo_model(name, targets=["x86-openvino-fp32"], out_dir=out, epochs=1,
                        progress=False)
    else:
        spec = get_spec(name)
        torch.manual_seed(0)
        compress(spec.factory().eval(), spec.example_inputs(1), targets=["x86-openvino-fp32"],
                 out_dir=out, name=name, input_names=spec.input_names,
                 output_names=spec.output_names, recipe={"model": name, "train": False},
                 progress=False)
    return out / "x86-openvino-fp32" / "model.xml"


def benchmark_app(xml: Path, threads: int, niter: int, folder: Path) -> dict:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nireq", "1",
           "-api", "sync", "-nthreads", str(threads),
           "-infer_precision", "f32", "-niter", str(niter), "-report_type", "no_counters",
           "-json_stats", "-report_folder", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark_app failed: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    # The JSON rounds latencies to 0.01 ms; the log prints them with units (us or ms).
    found: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        for key in ("Median", "Average", "Min", "Max"):
            tag = f"{key}:"
            if tag in line:
                value, unit = line.split(tag, 1)[1].split()[:2]
                found[key] = float(value) / (1000.0 if unit == "us" else 1.0)
        if "Throughput:" in line:
            found["fps"] = float(line.split("Throughput:", 1)[1].split()[0])
    stats = json.loads((folder / "benchmark_report.json").read_text())
    return {"median_ms": found["Median"], "avg_ms": found.get("Average"),
            "min_ms": found.get("Min"), "throughput_fps": found.get("fps"),
            "json_latency_ms": stats.get("execution_results", {}).get("latency (ms)"),
            # As typed by a user: no paths of this machine in the committed results.
            "command": ["benchmark_app", "-m", xml.name, *cmd[3:-1], folder.name]}


def harness(xml: Path, threads: int, niter: int) -> dict:
    import edgekit

    rep = edgekit.bench([xml], threads=threads, runs=niter, warmup=20, data="none",
                        memory=False, progress=False)
    r = rep["results"][0]
    return {"median_ms": r["latency"]["median_ms"], "mean_ms": r["latency"]["mean_ms"],
            "min_ms": r["latency"]["min_ms"], "cv": r["latency"]["cv"],
            "precision": r["info"].get("precision"), "threads": r["info"].get("threads")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", "ds_cnn", "mobilenet_v2"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--niter", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3, help="alternations harness/benchmark_app")
    p.add_argument("--train", action="store_true", help="train 1 epoch first (slower)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-hvb-") as tmp_s:
        tmp = Path(tmp_s)
        for name in args.models:
            print(f"[hvb] building {name}", file=sys.stderr, flush=True)
            xml = build(name, tmp / name, args.train)
            ours, theirs = [], []
            for i in range(args.rounds):  # alternate, and alternate who goes first
                order = ("h", "b") if i % 2 == 0 else ("b", "h")
                for who in order:
                    if who == "h":
                        ours.append(harness(xml, args.threads, args.niter))
                    else:
                        theirs.append(benchmark_app(xml, args.threads, args.niter,
                                                    tmp / f"{name}-ba-{i}"))
            h = statistics.median(r["median_ms"] for r in ours)
            b = statistics.median(r["median_ms"] for r in theirs)
            row = {"model": name, "harness_median_ms": h, "benchmark_app_median_ms": b,
                   "ratio": h / b, "within_15pct": abs(h / b - 1) <= 0.15,
                   "harness_runs": ours, "benchmark_app_runs": theirs}
            print(f"[hvb] {name}: harness {h:.4f} ms, benchmark_app {b:.4f} ms, "
                  f"ratio {h / b:.3f}", file=sys.stderr, flush=True)
            rows.append(row)
    import openvino

    result = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "python":
                    platform.python_version(), "openvino": openvino.get_version()},
        "settings": {"threads": args.threads, "niter": args.niter, "rounds": args.rounds,
                     "precision": "f32", "hint": "latency", "trained": args.train},
        "method": "per model: alternate the harness (edgekit.bench on model.xml, one infer "
                  "request, INFERENCE_PRECISION_HINT f32) and benchmark_app (same file, -hint none "
                  "-nstreams 1 -api sync (benchmark_app refuses -nthreads with a hint; this is "
                  "the latency hint's setting) -infer_precision f32, same threads); median of "
                  "each run's median",
        "rows": rows,
        "note": NOTE,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "harness_vs_benchmark_app.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# edgekit harness vs OpenVINO benchmark_app", "",
          f"OpenVINO {openvino.get_version()}, CPU, {args.threads} threads, f32, latency hint, "
          f"{args.niter} iterations, {args.rounds} alternating rounds; median of medians. "
          "Goal: ratio within 0.85-1.15.", "",
          "| model | harness median ms | benchmark_app median ms | ratio | within 15% |",
          "|---|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['harness_median_ms']:.4f} | "
                  f"{r['benchmark_app_median_ms']:.4f} | {r['ratio']:.3f} | "
                  f"{'yes' if r['within_15pct'] else 'NO'} |")
    md += ["", NOTE]
    (args.out / "harness_vs_benchmark_app.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
