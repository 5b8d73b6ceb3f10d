"""The GPU paths of ``edgekit bench``, run where a GPU exists, beside the CPU paths.

    python -m benchmarks.gpu_paths [--models ...] [--batches 1 32] [--runs 100]
                                   [--out benchmarks/results]

For each zoo model, realistic-scale ones included (random weights: latency does not depend on
training), and
each batch size, the model is built into an ONNX Runtime fp32 bundle by ``edgekit.compress``
and benchmarked by ``edgekit.bench`` three times: ``--device cpu``, ``cuda`` and
``tensorrt``, each with the PyTorch model beside the bundle. What a device cannot run is
recorded with the reason ``edgekit.bench`` gives (a skipped row, or the error when nothing can
run), never as a number. Writes ``gpu_paths.{json,md}``. Numbers are measured, not asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import cpu_name, write_results

RESULTS = Path(__file__).resolve().parent / "results"
DEVICES = ("cpu", "cuda", "tensorrt")


def log(msg: str) -> None:
    print(f"[gpu-paths] {msg}", file=sys.stderr, flush=True)


def _row(r: dict[str, Any]) -> dict[str, Any]:
    lat = r.get("latency") or {}
    info = r.get("info") or {}
    return {"name": r["name"], "status": r.get("status"), "reason": r.get("reason"),
            "median_ms": lat.get("median_ms"), "p90_ms": lat.get("p90_ms"), "n": lat.get("n"),
            "device": info.get("device"), "providers": info.get("providers"),
            "runtime": info.get("runtime"), "gpu": info.get("gpu"),
            "threads": r.get("threads")}


def run_cell(name: str, batch: int, runs: int, warmup: int, threads: int,
             tmp: Path) -> dict[str, Any]:
    import edgekit
    from edgekit.errors import DeviceUnavailableError
    from edgekit.models import build, get_spec

    spec = get_spec(name)
    model = build(name)
    x = spec.example_inputs(batch)
    bundle = edgekit.compress(model, x, targets=["x86-onnxruntime-fp32"],
                              out_dir=tmp / f"{name}-b{batch}", input_names=list(spec.input_names),
                              output_names=list(spec.output_names), progress=False)
    cell: dict[str, Any] = {"model": name, "batch": batch, "devices": {}}
    for device in DEVICES:
        try:
            rep = edgekit.bench(bundle.root, device=device, runs=runs, warmup=warmup,
                                threads=threads,
                                data="none", memory=False, formats=(), progress=False,
                                models={"pytorch": copy.deepcopy(model)})
        except DeviceUnavailableError as e:
            cell["devices"][device] = {"error": str(e).splitlines()[0]}
            log(f"{name} b{batch} {device}: {cell['devices'][device]['error']}")
            continue
        rows = [_row(r) for r in rep["results"]]
        cell["devices"][device] = {"threads": rep.get("threads"), "rows": rows}
        for r in rows:
            log(f"{name} b{batch} {device} {r['name']}: {r['status']} "
                f"{r['median_ms'] if r['median_ms'] is not None else r['reason']}")
    return cell


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def markdown(res: dict[str, Any]) -> list[str]:
    md = ["# GPU paths of `edgekit bench`, beside the CPU paths", "",
          f"GPU: {res['gpu'] or 'none'}; CPU: {res['cpu']} ({res['cores']} cores); "
          f"torch {res['torch']}, onnxruntime {res['onnxruntime']} (providers: "
          f"{', '.join(res['ort_providers'])}).", "",
          f"Random weights, ONNX Runtime fp32 bundle built by `edgekit.compress` per model "
          f"and batch; `edgekit.bench` with the PyTorch model beside it, {res['runs']} timed "
          f"calls after {res['warmup']} warm-up calls, medians in ms, CPU rows at "
          f"{res['threads']} threads. Command: "
          f"`python -m benchmarks.gpu_paths --out benchmarks/results`.", "",
          "PyTorch rows are eager fp32 (CUDA: a copy of the model on the GPU, outputs copied "
          "back to numpy in each timed call); the speed-up is PyTorch CPU over PyTorch CUDA, "
          "measured in the same run.", "",
          "| model | batch | PyTorch CPU | ONNX Runtime CPU | PyTorch CUDA | ONNX Runtime CUDA |"
          " CUDA speed-up (PyTorch) |", "|---|---:|---:|---:|---:|---|---:|"]
    reasons: dict[str, str] = {}

    def find(c: dict[str, Any], device: str, row: str) -> dict[str, Any] | None:
        rows = c["devices"].get(device, {}).get("rows", [])
        return next((r for r in rows if r["name"] == row), None)

    def med(c: dict[str, Any], device: str, row: str) -> Any:
        r = find(c, device, row)
        return r["median_ms"] if r and r["status"] == "ok" else None

    def why(c: dict[str, Any], device: str, row: str) -> str:
        if "error" in c["devices"].get(device, {}):
            reasons[device] = c["devices"][device]["error"]
            return "not run"
        r = find(c, device, row)
        if r is None or (r["median_ms"] is None and r["status"] != "ok"):
            status = r["status"] if r else "missing"
            reasons[f"{device} {row}"] = (r or {}).get("reason") or status
            return status
        return _fmt(r["median_ms"])

    for c in res["cells"]:
        if c.get("error"):
            md.append(f"| {c['model']} | {c['batch']} | failed: {c['error'][:120]} |||||")
            continue
        pc, pg = med(c, "cpu", "pytorch"), med(c, "cuda", "pytorch")
        speed = f"{pc / pg:.1f}x" if pc and pg else "—"
        md.append(f"| {c['model']} | {c['batch']} | {_fmt(pc)} | "
                  f"{_fmt(med(c, 'cpu', 'x86-onnxruntime-fp32'))} | "
                  f"{why(c, 'cuda', 'pytorch')} | {why(c, 'cuda', 'x86-onnxruntime-fp32')} | "
                  f"{speed} |")
    if reasons:
        md += ["", "What could not run, with the reason `edgekit.bench` gave:", ""]
        md += [f"- {k}: {v}" for k, v in sorted(reasons.items())]
    trt = {c["model"]: c["devices"].get("tensorrt", {}) for c in res["cells"]}
    errs = sorted({d.get("error", "") for d in trt.values() if d.get("error")})
    if errs:
        md += ["", "`--device tensorrt`: " + "; ".join(errs)]
    return md


def main(argv: list[str] | None = None) -> int:
    from edgekit.models import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    import onnxruntime as ort

    names = args.models or list_models(realistic=True)
    res: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(),
        "torch": torch.__version__, "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(), "runs": args.runs,
        "warmup": args.warmup, "threads": args.threads, "cells": []}
    with tempfile.TemporaryDirectory(prefix="edgekit-gpu-paths-") as tmp:
        for name in names:
            for b in args.batches:
                try:
                    res["cells"].append(run_cell(name, b, args.runs, args.warmup,
                                                  args.threads, Path(tmp)))
                except Exception as e:  # a model that fails is reported, the rest go on
                    log(f"{name} b{b}: {type(e).__name__}: {e}")
                    res["cells"].append({"model": name, "batch": b, "devices": {},
                                         "error": f"{type(e).__name__}: {e}"[:500]})
                write_results(args.out, "gpu_paths", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
