"""Per-op profiles from each runtime's own profiler: where the time of one inference goes.

A latency says *how long*; a profile says *why*: which op types take the time, and whether
they ran int8 or float kernels (an "int8" model whose convolutions still execute in fp32, or
whose time goes to QuantizeLinear/Transpose glue, shows here).

* **ONNX Runtime**: ``SessionOptions.enable_profiling`` writes a Chrome-trace JSON; every
  ``*_kernel_time`` event is one node run, with its op (``QLinearConv``, ``ConvInteger``,
  ``Conv``...), execution provider and input types. Warm-up runs are dropped by the
  ``model_run`` events that enclose them.
* **OpenVINO**: the CPU plugin's performance counters (``PERF_COUNT``); per executed node
  ``request.profiling_info`` gives its type, the kernel that ran (``exec_type``, e.g.
  ``brgconv_avx512_amx_I8`` or ``jit_avx512_f32``) and its time. The nodes listed are those
  of the compiled graph (``get_runtime_model``) that execute a kernel, whatever their status
  (the plugin marks a node under a microsecond NOT_RUN); nodes fused into others, in place
  or computed once from constants take no time and are counted apart.
* **LiteRT**: ``ai_edge_litert``'s Python ``Interpreter`` has no op profiler. The table then
  lists each op type, its count and its tensors' precision from the model, with no times and
  says so (``timed: false`` and a ``note``); LiteRT's C++ ``benchmark_model
  --enable_op_profiling=true`` gives the times.

The precision of a node is that of its first input (``int8`` for int8/uint8 tensors,
``fp32``, ``bf16``, ``fp16``...) on ONNX Runtime and LiteRT, and the kernel's own suffix on
OpenVINO (``I8``/``U8`` -> int8, ``f32`` -> fp32, ``bf16``...).

Example::

    prof = profile_artifact(artifact, feeds, threads=1, runs=20)
    print(profile_markdown([prof]))
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Artifact
from ..errors import NotSupportedError

__all__ = ["PROFILERS", "profile_artifact", "profile_markdown", "write_profiles"]

#: Rows kept in a profile's node list (the slowest nodes).
TOP_NODES = 15

_DTYPE_PRECISION = {
    "float": "fp32", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16",
    "double": "fp64", "float64": "fp64", "int8": "int8", "uint8": "int8", "int16": "int16",
    "uint16": "int16", "int32": "int32", "int64": "int64", "bool": "bool",
}


def _aggregate(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per op type: count (nodes per inference), total ms per inference, % of the profiled
    time, precisions and kernels seen; slowest first."""
    total = sum(n["ms"] for n in nodes) or 1.0
    by: dict[str, dict[str, Any]] = {}
    for n in nodes:
        row = by.setdefault(n["op_type"], {"op_type": n["op_type"], "count": 0,
                                           "total_ms": 0.0, "precision": set(),
                                           "kernel": set()})
        row["count"] += 1
        row["total_ms"] += n["ms"]
        if n.get("precision"):
            row["precision"].add(n["precision"])
        if n.get("kernel"):
            row["kernel"].add(n["kernel"])
    out = []
    for row in sorted(by.values(), key=lambda r: (-r["total_ms"], r["op_type"])):
        out.append({**row, "total_ms": row["total_ms"],
                    "pct": 100.0 * row["total_ms"] / total,
                    "precision": sorted(row["precision"]), "kernel": sorted(row["kernel"])})
    return out


def _result(artifact: Artifact, runtime: str, nodes: list[dict[str, Any]], runs: int,
            threads: int, **extra: Any) -> dict[str, Any]:
    timed = extra.pop("timed", True)
    ops = _aggregate(nodes)
    top = sorted(nodes, key=lambda n: -n["ms"])[:TOP_NODES] if timed else []
    node_ms = sum(n["ms"] for n in nodes)
    int8_ms = sum(n["ms"] for n in nodes if n.get("precision") == "int8")
    return {
        "artifact": str(artifact.path), "backend": artifact.backend, "runtime": runtime,
        "precision": artifact.precision, "threads": threads, "runs": runs, "timed": timed,
        "node_ms": node_ms if timed else None,
        "int8_share_pct": (100.0 * int8_ms / node_ms) if timed and node_ms else None,
        "ops": ops, "nodes": top, **extra,
    }


def _median_ms(nodes: dict[str, dict[str, Any]]) -> None:
    """Each node's time per inference: the median over the profiled runs (one slow run, a
    page fault or a preemption, does not move it)."""
    for n in nodes.values():
        n["ms"] = float(np.median(n.pop("_ms")))


# --------------------------------------------------------------------------- ONNX Runtime


def _ort_precision(op: str, args: dict[str, Any]) -> str:
    types = [next(iter(t)) for t in args.get("input_type_shape", []) if t]
    if op in ("QuantizeLinear", "DynamicQuantizeLinear"):
        return "fp32->int8"
    if op == "DequantizeLinear":
        return "int8->fp32"
    return _DTYPE_PRECISION.get(types[0], types[0]) if types else ""


def _profile_onnxruntime(artifact: Artifact, feeds: list[np.ndarray], threads: int, runs: int,
                         warmup: int, options: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = str(options.get("graph_optimization_level", "all"))
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(artifact.path), so, providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(sess.get_inputs(), feeds)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    run_spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                       if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept = run_spans[warmup:]
    nodes: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ts = e["ts"]
        if not any(a <= ts <= b for a, b in kept):
            continue
        args = e.get("args", {})
        name = e["name"][: -len("_kernel_time")]
        op = str(args.get("op_name", "?"))
        run = next(i for i, (a, b) in enumerate(kept) if a <= ts <= b)
        n = nodes.setdefault(name, {"node": name, "op_type": op, "ms": 0.0,
                                    "precision": _ort_precision(op, args),
                                    "kernel": f"{op} ({args.get('provider', '?')})",
                                    "_ms": [0.0] * len(kept)})
        n["_ms"][run] += e["dur"] / 1e3
    _median_ms(nodes)
    run_ms = [(b - a) / 1e3 for a, b in kept]
    return _result(artifact, f"onnxruntime {ort.__version__}", list(nodes.values()), len(kept),
                   threads, run_ms=float(np.median(run_ms)) if run_ms else None,
                   providers=sess.get_providers())


# --------------------------------------------------------------------------- OpenVINO


def _ov_precision(exec_type: str) -> str:
    suffix = exec_type.rsplit("_", 1)[-1].lower() if "_" in exec_type else ""
    return {"i8": "int8", "u8": "int8", "f32": "fp32", "fp32": "fp32", "bf16": "bf16",
            "f16": "fp16", "fp16": "fp16", "i32": "int32", "i64": "int64"}.get(suffix, suffix)


def _profile_openvino(artifact: Artifact, feeds: list[np.ndarray], threads: int, runs: int,
                      warmup: int, options: dict[str, Any]) -> dict[str, Any]:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True,
              "PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY")),
              "INFERENCE_PRECISION_HINT": str(options.get("inference_precision", "f32"))}
    compiled = ov.Core().compile_model(str(artifact.path), "CPU", config)
    req = compiled.create_infer_request()
    inputs = dict(enumerate(feeds))
    for _ in range(warmup):
        req.infer(inputs)
    from edgekit.backends.float_ops import openvino_node_runs

    # a node that took under a microsecond reads as NOT_RUN: the compiled graph says which run
    executes = {op.get_friendly_name() for op in compiled.get_runtime_model().get_ordered_ops()
                if openvino_node_runs(op)}
    nodes: dict[str, dict[str, Any]] = {}
    fused = 0
    for r in range(runs):
        req.infer(inputs)
        for pi in req.profiling_info:
            if pi.node_name not in executes:
                if r == 0 and pi.node_type not in ("Parameter", "Result", "Constant"):
                    fused += 1
                continue
            n = nodes.setdefault(pi.node_name, {
                "node": pi.node_name, "op_type": pi.node_type, "ms": 0.0,
                "precision": _ov_precision(pi.exec_type), "kernel": pi.exec_type,
                "_ms": [0.0] * runs})
            n["_ms"][r] += pi.real_time.total_seconds() * 1e3
    _median_ms(nodes)
    ran = compiled.get_property("INFERENCE_PRECISION_HINT")
    return _result(artifact, f"openvino {ov.get_version()}", list(nodes.values()), runs,
                   threads, not_executed_nodes=fused,
                   inference_precision=ran.get_type_name() if hasattr(ran, "get_type_name")
                   else str(ran))


# --------------------------------------------------------------------------- LiteRT


def _profile_tflite(artifact: Artifact, feeds: list[np.ndarray], threads: int, runs: int,
                    warmup: int, options: dict[str, Any]) -> dict[str, Any]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # devices with only the old runtime
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]

    interp = Interpreter(model_path=str(artifact.path), num_threads=threads)
    interp.allocate_tensors()
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    nodes = []
    for op in interp._get_ops_details():
        ins = [i for i in op.get("inputs", []) if i >= 0 and i in tensors]
        dtype = np.dtype(tensors[ins[0]]["dtype"]).name if ins else ""
        name = str(op.get("op_name", "?"))
        prec = _DTYPE_PRECISION.get(dtype, dtype)
        if name == "QUANTIZE" and prec != "int8":
            prec = f"{prec}->int8"
        elif name == "DEQUANTIZE":
            prec = "int8->fp32" if prec == "int8" else f"{prec}->fp32"
        nodes.append({"node": f"{name}#{op.get('index')}", "op_type": name, "ms": 0.0,
                      "precision": prec, "kernel": ""})
    try:
        from importlib.metadata import version

        rt = f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:
        rt = "litert"
    return _result(artifact, rt, nodes, 0, threads, timed=False,
                   note="per-op times not measured: ai_edge_litert's Python Interpreter has no "
                        "op profiler; op counts and precisions are read from the model "
                        "(LiteRT's C++ benchmark_model --enable_op_profiling=true times ops)")


#: backend name -> profiler (artifact, feeds, threads, runs, warmup, options) -> profile
PROFILERS: dict[str, Callable[..., dict[str, Any]]] = {
    "onnxruntime": _profile_onnxruntime, "openvino": _profile_openvino,
    "tflite": _profile_tflite,
}


def profile_artifact(artifact: Artifact, feeds: Sequence[np.ndarray], *, threads: int = 1,
                     runs: int = 20, warmup: int = 5,
                     options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``artifact`` ``warmup + runs`` times on ``feeds`` (model order) under its runtime's
    profiler; the per-op-type table (``ops``), the slowest nodes (``nodes``, ms per
    inference) and the share of node time spent in int8 kernels (``int8_share_pct``)."""
    if artifact.backend not in PROFILERS:
        raise NotSupportedError(
            f"no per-op profiler for the {artifact.backend} backend ({artifact.path})",
            hint=f"profiles exist for {', '.join(sorted(PROFILERS))}")
    if runs < 1 or warmup < 0:
        raise NotSupportedError(f"profile runs must be >= 1 and warm-up >= 0 (got {runs}, "
                                f"{warmup})")
    return PROFILERS[artifact.backend](artifact, [np.ascontiguousarray(x) for x in feeds],
                                       threads, runs, warmup, dict(options or {}))


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def profile_markdown(profiles: Sequence[dict[str, Any]], *, max_ops: int = 25) -> str:
    """One table per profiled artifact: op type, count, total ms, % of time, precision and
    kernels executed."""
    lines = ["# Per-op profiles", ""]
    for p in profiles:
        title = p.get("name") or p["artifact"]
        lines += [f"## {title}", ""]
        if p.get("error"):
            lines += [f"Not profiled: {p['error']}", ""]
            continue
        lines.append(f"{p['runtime']}, {p['precision']} artifact, {p['threads']} thread(s), "
                     f"{p['runs']} profiled run(s).")
        if p["timed"]:
            lines.append(f"Node time {_fmt(p['node_ms'])} ms per inference"
                         + (f" (the run: {_fmt(p.get('run_ms'))} ms)" if p.get("run_ms")
                            else "")
                         + f"; {_fmt(p['int8_share_pct'], 1)}% of it in int8 kernels.")
        if p.get("note"):
            lines.append(f"Note: {p['note']}.")
        lines += ["", "| op type | count | total ms | % time | precision | kernel |",
                  "|---|---:|---:|---:|---|---|"]
        for o in p["ops"][:max_ops]:
            ms = _fmt(o["total_ms"]) if p["timed"] else "-"
            pct = _fmt(o["pct"], 1) if p["timed"] else "-"
            kern = ", ".join(o["kernel"][:3]) + (" ..." if len(o["kernel"]) > 3 else "")
            lines.append(f"| {o['op_type']} | {o['count']} | {ms} | {pct} | "
                         f"{', '.join(o['precision']) or '-'} | {kern or '-'} |")
        if len(p["ops"]) > max_ops:
            lines.append(f"| ({len(p['ops']) - max_ops} more op types) | | | | | |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_profiles(profiles: Sequence[dict[str, Any]], out_dir: str | Path) -> list[str]:
    """``profile.json`` and ``profile.md`` in ``out_dir`` (written atomically); their names."""
    from ..fsio import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "profile.json", json.dumps(list(profiles), indent=2) + "\n")
    atomic_write_text(out / "profile.md", profile_markdown(profiles))
    return ["profile.json", "profile.md"]
