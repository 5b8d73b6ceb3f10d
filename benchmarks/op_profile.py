"""Where the time goes: per-op profiles of fp32 and int8 deployment-scale models on each
runtime, from the runtime's own profiler (``edgekit.bench.profile``).

    python -m benchmarks.op_profile --models mobilenet_v2_224,resnet18_224 --runs 20

Builds each model (``edgekit.models.deploy``, random weights, standard shape) fp32 and int8
for ONNX Runtime, OpenVINO and LiteRT with ``edgekit.compress`` (int8 calibrated on real
images, as ``benchmarks.deploy`` does), profiles every artifact at 1 thread (``--threads``)
and writes ``benchmarks/results/op_profile.{json,md}``: per artifact a table of op type,
count, ms per inference, % of time, precision and kernel executed; per model and runtime a
summary of where int8 gains and loses against fp32 (the op types whose time grew or stayed,
the time left in fp32 kernels of the int8 model, and the quantize/dequantize/reorder glue).
LiteRT's Python interpreter has no op profiler: its tables list op counts and precisions
without times, and say so.

Run it on a quiet machine (nothing else loading the CPU): ``python -m benchmarks.op_profile``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import FP32, INT8, RUNTIMES, cpu_name, log

RESULTS = Path(__file__).resolve().parent / "results"
#: op types that move or convert data rather than compute (the int8 "glue")
GLUE = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Transpose", "Reorder",
        "Reshape", "Convert", "QUANTIZE", "DEQUANTIZE", "TRANSPOSE", "RESHAPE", "FakeQuantize",
        "ReorderInput", "ReorderOutput"}


def _build(model: torch.nn.Module, x: tuple[torch.Tensor, ...], target: str, out: Path,
           names: tuple[list[str], list[str]], calib: list[list[Any]] | None) -> tuple[Any, dict]:
    from edgekit.pipeline import compress

    bundle = compress(model, x, targets=[target], out_dir=out, input_names=names[0],
                      output_names=names[1], calibration=calib, verify_samples=4,
                      progress=False)
    return bundle.artifact(target), dict(bundle.target(target).options or {})


def profile_model(name: str, tmp: Path, *, runs: int, threads: int, calib_n: int,
                  runtimes: tuple[str, ...] = RUNTIMES) -> dict[str, Any]:
    """fp32 and int8 of ``name`` on every runtime, each profiled per op."""
    from benchmarks.deploy import real_inputs
    from edgekit.bench.profile import profile_artifact
    from edgekit.models.deploy import build_deploy, deploy_inputs

    model = build_deploy(name)
    x = deploy_inputs(name)
    names = (["tokens", "mask"] if name == "bert_mini_128" else ["input"], ["output"])
    data = real_inputs(name, calib_n + 1)
    calib, feeds = data[:calib_n], data[calib_n]
    out: dict[str, Any] = {"model": name, "inputs": [list(t.shape) for t in x], "cells": {}}
    for rt in runtimes:
        for prec, target in (("fp32", FP32[rt]), ("int8", INT8[rt])):
            key = f"{rt}/{prec}"
            t0 = time.perf_counter()
            try:
                art, options = _build(model, x, target, tmp / f"{name}-{rt}-{prec}", names,
                                      calib if prec == "int8" else None)
                prof = profile_artifact(art, feeds, threads=threads, runs=runs, warmup=5,
                                        options=options)
                prof["name"] = f"{name} {key}"
                prof["artifact"] = f"{target}/{Path(prof['artifact']).name}"
                prof["build_and_profile_s"] = round(time.perf_counter() - t0, 1)
                out["cells"][key] = prof
            except Exception as exc:  # a flow that fails is a result, with its reason
                where = traceback.extract_tb(exc.__traceback__)[-1]
                out["cells"][key] = {"name": f"{name} {key}", "error":
                                     f"{type(exc).__name__}: {str(exc)[:300]} "
                                     f"({Path(where.filename).name}:{where.lineno})"}
            log(name, f"{key}: {out['cells'][key].get('error') or 'profiled'}")
    return out


def _op_ms(prof: dict[str, Any]) -> dict[str, float]:
    return {o["op_type"]: o["total_ms"] for o in prof.get("ops", [])}


def diagnose(fp: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    """int8 against fp32 of one runtime: node-time ratio, the share of int8 kernels, the time
    of the int8 model's compute ops that still ran float kernels, the glue's share, and the
    slowest compute op types of the int8 model beside their fp32 time."""
    if fp.get("error") or q.get("error") or not fp.get("timed") or not q.get("timed"):
        return {"note": fp.get("error") or q.get("error") or q.get("note")
                or "not timed per op"}
    node_fp, node_q = fp["node_ms"], q["node_ms"]
    glue = sum(o["total_ms"] for o in q["ops"] if o["op_type"] in GLUE)
    floats = ("fp32", "bf16", "fp16")
    float_ms = sum(o["total_ms"] for o in q["ops"] if o["op_type"] not in GLUE
                   and o["precision"] and all(p in floats for p in o["precision"]))
    ops_fp = {o["op_type"]: o["total_ms"] for o in fp["ops"]}
    top = [{"op_type": o["op_type"], "int8_ms": round(o["total_ms"], 3),
            "precision": o["precision"], "kernel": o["kernel"][:3],
            "fp32_ms": round(ops_fp[o["op_type"]], 3) if o["op_type"] in ops_fp else None}
           for o in q["ops"] if o["op_type"] not in GLUE][:6]
    return {"node_ms_fp32": round(node_fp, 3), "node_ms_int8": round(node_q, 3),
            "speedup_nodes": round(node_fp / node_q, 2) if node_q else None,
            "int8_share_pct": round(q["int8_share_pct"] or 0.0, 1),
            "float_kernels_in_int8_pct": round(100 * float_ms / node_q, 1) if node_q else None,
            "glue_pct": round(100 * glue / node_q, 1) if node_q else None,
            "top_int8_ops": top}


def markdown(report: dict[str, Any]) -> str:
    from edgekit.bench.profile import profile_markdown

    lines = ["# Per-op profiles: where fp32 and int8 spend their time", "",
             f"{report['cpu']}; {report['threads']} thread(s), {report['runs']} profiled runs "
             "per artifact (median per node); random weights at the standard shapes; int8 "
             "calibrated on real images. Produced by `python -m benchmarks.op_profile`.", "",
             "## Summary: int8 against fp32 per runtime", "",
             "| model | runtime | fp32 node ms | int8 node ms | speed-up | int8 kernels % | "
             "float kernels in int8 % | glue % (Q/DQ, reorders, reshapes) | slowest int8 ops |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in report["models"]:
        for rt, d in m["diagnosis"].items():
            if "note" in d:
                note = " ".join(str(d["note"]).split()).replace("|", "/")
                lines.append(f"| {m['model']} | {rt} | - | - | - | - | - | - | {note} |")
                continue
            top = "; ".join(f"{o['op_type']} {o['int8_ms']} ms ({'/'.join(o['precision'])})"
                            for o in d["top_int8_ops"][:3])
            lines.append(f"| {m['model']} | {rt} | {d['node_ms_fp32']} | {d['node_ms_int8']} | "
                         f"{d['speedup_nodes']}x | {d['int8_share_pct']} | "
                         f"{d['float_kernels_in_int8_pct']} | {d['glue_pct']} | {top} |")
    lines += ["", "Node time is the sum of the per-node medians (the runtime's profiler); "
              "the whole run adds the runtime's per-call overhead. LiteRT rows have no times: "
              "its Python interpreter has no op profiler.", ""]
    profs = [c for m in report["models"] for c in m["cells"].values()]
    per = profile_markdown(profs).replace("\n## ", "\n### ")
    lines.append(per.replace("# Per-op profiles", "## Per artifact", 1))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v2_224,resnet18_224",
                    help="comma-separated edgekit.models.deploy names")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--runs", type=int, default=20, help="profiled runs per artifact")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", type=int, default=32, help="calibration samples")
    ap.add_argument("--out", default=str(RESULTS), help="folder for op_profile.{json,md}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"cpu": cpu_name(), "threads": args.threads, "runs": args.runs,
                              "python": sys.version.split()[0], "models": []}
    runtimes = tuple(r for r in args.runtimes.split(",") if r)
    with tempfile.TemporaryDirectory(prefix="edgekit-opprof-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            m = profile_model(name, Path(tmp), runs=args.runs, threads=args.threads,
                              calib_n=args.calibration, runtimes=runtimes)
            m["diagnosis"] = {rt: diagnose(m["cells"].get(f"{rt}/fp32", {"error": "missing"}),
                                           m["cells"].get(f"{rt}/int8", {"error": "missing"}))
                              for rt in runtimes}
            report["models"].append(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "op_profile.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "op_profile.md").write_text(markdown(report))
    log("op_profile", f"wrote {out / 'op_profile.json'} and op_profile.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
