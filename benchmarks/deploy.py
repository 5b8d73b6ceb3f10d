"""Latency at the shapes users deploy: fp32 and int8 per runtime, beside each runtime's own
default int8 flow, at 1 thread, timed side by side in one interleaved run per model.

    python -m benchmarks.deploy                       # every model of edgekit.models.deploy
    python -m benchmarks.deploy --models resnet18_224,mobilenet_v2_224 --runs 40

Writes ``benchmarks/results/deploy.{json,md}``. The models are randomly initialised (no
weights can be downloaded and the realistic-scale tasks are not trained yet), so this measures
speed, size and int8 fidelity against the model's own fp32 output, not accuracy. Calibration
and fidelity inputs are real data shaped to each model's input: scikit-learn's digits resized
to 224x224 RGB, the shipped spoken-digit features resampled to 49x10 frames, and English text
(the Python standard library's own docstrings) hashed into token ids with a real padding mask.

Per cell: median and p90 ms, int8 speed-up over the same runtime's fp32, edgekit / native
latency, % of this machine's measured int8 (or fp32) matrix-multiply peak, file size, and
fidelity (cosine, centred cosine, SQNR) of the artifact's output against PyTorch fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import FP32, INT8, RUNTIMES, artifact_size, log

RESULTS = Path(__file__).resolve().parent / "results"
#: published int8-over-fp32 speed-ups, for context (other CPUs; not targets on this one)
ANCHORS = {
    ("mobilenet_v2_224", "openvino"): "NNCF MobileNetV2 int8 3.48x (AVX-512 VNNI)",
    ("mobilenet_v2_224", "onnxruntime"): "ONNX Runtime QDQ MobileNetV2 1.69x (Xeon)",
    ("resnet50_224", "onnxruntime"): "ONNX Runtime QDQ ResNet-50 2.0x (Xeon)",
    ("bert_mini_128", "onnxruntime"): "ONNX Runtime QDQ BERT-base 1.76x",
}


# --------------------------------------------------------------------------- real inputs


def _images(n: int, size: int = 224) -> list[np.ndarray]:
    from edgekit.data import digits

    raw, _ = digits._load()
    idx = digits.split_indices()["val"][:n]
    x = torch.tensor(raw[idx], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (x.repeat(1, 3, 1, 1) - mean) / std
    return [x[i:i + 1].numpy() for i in range(len(idx))]


def _mfcc(n: int, nchw: bool) -> list[np.ndarray]:
    from edgekit.data import speech

    feats, _ = speech.split("val")
    x = torch.nn.functional.interpolate(feats[:n, None], size=(49, 10), mode="bilinear",
                                        align_corners=False)
    return [(x[i:i + 1] if nchw else x[i:i + 1, 0]).numpy() for i in range(x.shape[0])]


def _texts(n: int, length: int = 128, vocab: int = 30522) -> list[list[np.ndarray]]:
    import hashlib
    import inspect
    import json as json_mod
    import pathlib as pathlib_mod
    import re

    docs = [inspect.getdoc(obj) or "" for mod in (json_mod, pathlib_mod, argparse, tempfile)
            for _, obj in inspect.getmembers(mod) if callable(obj)]
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", " ".join(docs))]
    out, pos = [], 0
    for i in range(n):
        take = 24 + (i * 37) % (length - 25)  # real, varied lengths -> real padding masks
        chunk = words[pos:pos + take] or ["empty"]
        pos = (pos + take) % max(1, len(words) - length)
        ids = [101] + [1000 + int(hashlib.sha256(w.encode()).hexdigest()[:8], 16) % (vocab - 1000)
                       for w in chunk][: length - 2] + [102]
        mask = [1] * len(ids) + [0] * (length - len(ids))
        ids = ids + [0] * (length - len(ids))
        out.append([np.array([ids], np.int64), np.array([mask], np.int64)])
    return out


def real_inputs(name: str, n: int) -> list[list[np.ndarray]]:
    if name == "bert_mini_128":
        return _texts(n)
    if name in ("ds_cnn_kws", "gru_kws"):
        return [[x] for x in _mfcc(n, nchw=name == "ds_cnn_kws")]
    size = 128 if name == "unet_128" else 224
    return [[x] for x in _images(n, size)]


# --------------------------------------------------------------------------- fidelity


def fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Cosine and centred cosine of all held-out outputs flattened as one sample, and SQNR."""
    from edgekit.measure.metrics import centred_cosine, cosine, sqnr_db

    r, o = ref.reshape(1, -1), out.reshape(1, -1)
    return {"cosine": round(float(cosine(r, o)[0]), 5),
            "centred_cosine": round(float(centred_cosine(r, o)[0]), 5),
            "sqnr_db": round(sqnr_db(r, o), 2)}


# --------------------------------------------------------------------------- one model


def _compress_one(model, x, target, out_dir, names, calib):
    from edgekit.pipeline import compress

    bundle = compress(model, x, targets=[target], out_dir=out_dir, input_names=names[0],
                      output_names=names[1], calibration=calib, verify_samples=8,
                      progress=False)
    session = bundle.load(target, threads=1)
    return session, artifact_size(bundle.root / target), bundle.manifest.targets[target].to_json()


def run_model(name: str, tmp: Path, *, runs: int, calib_n: int, peak: dict[str, Any]
              ) -> dict[str, Any]:
    from benchmarks import native
    from edgekit.models.deploy import build_deploy, deploy_inputs
    from edgekit.models.zoo import count_macs

    model = build_deploy(name)
    x = deploy_inputs(name)
    in_names = ["tokens", "mask"] if name == "bert_mini_128" else ["input"]
    names = (in_names, ["output"])
    data = real_inputs(name, calib_n + 8)
    calib, held = data[:calib_n], data[calib_n:]
    macs = count_macs(model, x)
    sessions: dict[str, Any] = {}
    cells: dict[str, dict[str, Any]] = {}

    def attempt(key: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            sess, size, extra = fn()
            sessions[key] = sess
            cells[key] = {"bytes": size, "build_s": round(time.perf_counter() - t0, 1), **extra}
        except Exception as exc:  # a flow that fails is a result, with its reason
            where = traceback.extract_tb(exc.__traceback__)[-1]
            cells[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}",
                          "where": f"{Path(where.filename).name}:{where.lineno}"}
        log(name, f"{key}: {cells[key].get('error') or 'built'}")

    for rt in RUNTIMES:
        def fp32(rt=rt):
            s, size, entry = _compress_one(model, x, FP32[rt], tmp / f"{rt}-fp32", names, None)
            return s, size, {"executes": entry.get("runtime", {}).get("precision")}
        attempt(f"{rt}/fp32", fp32)

        def int8(rt=rt):
            s, size, entry = _compress_one(model, x, INT8[rt], tmp / f"{rt}-int8", names, calib)
            q = entry.get("quantization", {})
            return s, size, {"float_layers": q.get("float_layers", []),
                             "source": (q.get("openvino_source_choice") or {}).get("kept")}
        attempt(f"{rt}/int8", int8)

    specs = _specs(tmp)
    if "onnxruntime/fp32" in sessions:
        attempt("onnxruntime/native_int8", lambda: (*native.ort_int8(
            tmp / "onnxruntime-fp32" / FP32["onnxruntime"] / "model.onnx",
            tmp / "native-ort", calib, in_names, *specs, 1), {}))
    attempt("openvino/native_int8", lambda: (*native.openvino_int8(
        model, x, tmp / "native-ov", calib, *specs, 1), {}))
    attempt("tflite/native_int8", lambda: (*native.tflite_int8(
        model, x, tmp / "native-tfl", calib, in_names, ["output"], 1), {}))

    with torch.no_grad():
        refs = [model(*[torch.from_numpy(a) for a in feed]).numpy() for feed in held]
    for key, sess in sessions.items():
        outs = [sess.run(feed)[0] for feed in held]
        cells[key]["fidelity"] = fidelity(np.concatenate(refs), np.concatenate(outs))

    feed0 = data[0]
    from edgekit.measure.timing import collect_interleaved

    t0 = time.perf_counter()
    got = collect_interleaved(sessions, {key: feed0 for key in sessions}, warmup=5, runs=runs)
    for key, samples in got.samples.items():
        ms = np.asarray(samples) * 1e3
        med = float(np.median(ms))
        prec = "int8" if "int8" in key else "fp32"
        cells[key].update({"median_ms": round(med, 3),
                           "p90_ms": round(float(np.percentile(ms, 90)), 3),
                           "n": int(ms.size),
                           "percent_of_peak": round(100 * 2 * macs / (med / 1e3)
                                                    / peak[prec]["ops_per_s"], 1)})
    for rt in RUNTIMES:
        base = cells.get(f"{rt}/fp32", {}).get("median_ms")
        for v in ("int8", "native_int8"):
            c = cells.get(f"{rt}/{v}", {})
            if base and c.get("median_ms"):
                c["speedup_over_fp32"] = round(base / c["median_ms"], 2)
        e, n = cells.get(f"{rt}/int8", {}), cells.get(f"{rt}/native_int8", {})
        if e.get("median_ms") and n.get("median_ms"):
            e["latency_vs_native"] = round(e["median_ms"] / n["median_ms"], 2)
    return {"model": name, "macs": macs, "params": sum(p.numel() for p in model.parameters()),
            "inputs": [list(t.shape) for t in x], "runs": runs, "calibration_samples": calib_n,
            "timing_seconds": round(time.perf_counter() - t0, 1), "cells": cells}


def _specs(tmp: Path):
    from edgekit.bundle import load_bundle

    b = load_bundle(tmp / "onnxruntime-fp32")
    art = b.artifact(FP32["onnxruntime"])
    return art.inputs, art.outputs


# --------------------------------------------------------------------------- report


AIMS = [  # (model, runtime, minimum int8 speed-up over fp32)
    ("mobilenet_v2_224", "onnxruntime", 2.5), ("mobilenet_v2_224", "tflite", 2.5),
    ("mobilenet_v2_224", "openvino", 3.0),
    ("resnet18_224", "onnxruntime", 3.0), ("resnet18_224", "openvino", 3.0),
    ("resnet18_224", "tflite", 3.0), ("bert_mini_128", "onnxruntime", 2.0),
]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Latency at deployment shapes",
        "",
        f"Generated by `python -m benchmarks.deploy` on {m['cpu']} ({m['cores']} cores), "
        f"{report['threads']} thread per runtime, batch 1, medians of interleaved calls; "
        f"measured peak fp32 {report['peak']['fp32'] / 1e9:.1f} GFLOP/s, int8 "
        f"{report['peak']['int8'] / 1e9:.1f} GOP/s. Models randomly initialised (speed, size "
        "and int8 fidelity against the model's own fp32 output; no accuracy). Calibration: "
        f"real data reshaped to each input (see the script's docstring).",
        "",
        "| model | runtime | fp32 ms | int8 ms | int8 speed-up | native int8 ms | native "
        "speed-up | edgekit / native | int8 % peak | int8 SQNR dB (native) | int8 KiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in report["models"]:
        for rt in RUNTIMES:
            c = res["cells"]
            f, e, n = (c.get(f"{rt}/{v}", {}) for v in ("fp32", "int8", "native_int8"))

            def ms(cell):
                return f"{cell['median_ms']:.3f}" if "median_ms" in cell else \
                    f"failed: {cell.get('error', 'not run')[:80]}"

            def sq(cell):
                return cell.get("fidelity", {}).get("sqnr_db", "-")
            lines.append(
                f"| {res['model']} | {rt} | {ms(f)} | {ms(e)} | "
                f"{e.get('speedup_over_fp32', '-')}x | {ms(n)} | "
                f"{n.get('speedup_over_fp32', '-')}x | "
                f"{e.get('latency_vs_native', '-')} | {e.get('percent_of_peak', '-')} | "
                f"{sq(e)} ({sq(n)}) | {e.get('bytes', 0) / 1024:.0f} |")
    lines += ["", "## Against the aims", ""]
    for model, rt, want in AIMS:
        res = next((r for r in report["models"] if r["model"] == model), None)
        if res is None:
            lines.append(f"- {model} int8 >= {want}x on {rt}: not measured in this run")
            continue
        got = res["cells"].get(f"{rt}/int8", {}).get("speedup_over_fp32")
        verdict = "met" if got and got >= want else "missed"
        lines.append(f"- {model} int8 over fp32 on {rt} >= {want}x: **{verdict}** ({got}x)")
    ratios = [(r["model"], rt, r["cells"].get(f"{rt}/int8", {}).get("latency_vs_native"))
              for r in report["models"] for rt in RUNTIMES]
    worse = [f"{m} on {rt} ({v})" for m, rt, v in ratios if v is not None and v > 0.9]
    lines.append(f"- edgekit latency / native default <= 0.9 everywhere: "
                 f"**{'met' if not worse else 'missed'}**"
                 + (f" ({len(worse)} cells above 0.9: {', '.join(worse)})" if worse else ""))
    for r in report["models"]:
        if r["model"].startswith("resnet"):
            best = max((r["cells"].get(f"{rt}/int8", {}).get("percent_of_peak") or 0)
                       for rt in RUNTIMES)
            lines.append(f"- {r['model']} >= 40% of the int8 peak: "
                         f"**{'met' if best >= 40 else 'missed'}** (best runtime {best}%)")
    lines += ["", "Published anchors (other CPUs, context only): "
              + "; ".join(ANCHORS.values()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from edgekit.bench.peak import measure_peak
    from edgekit.models.deploy import deploy_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated (default: all)")
    ap.add_argument("--runs", type=int, default=30, help="timed rounds per model (default 30)")
    ap.add_argument("--calibration", type=int, default=32, help="calibration samples")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else deploy_models()
    threads = 1
    peak = measure_peak(threads=threads)
    report: dict[str, Any] = {
        "threads": threads, "machine": {"cpu": _cpu(), "cores": os.cpu_count(),
                                        "python": platform.python_version()},
        "peak": {"fp32": peak["fp32"]["ops_per_s"], "int8": peak["int8"]["ops_per_s"]},
        "models": []}
    peaks = {k: {"ops_per_s": v} for k, v in report["peak"].items()}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"edgekit-deploy-{name}-") as tmp:
            report["models"].append(run_model(name, Path(tmp), runs=args.runs,
                                              calib_n=args.calibration, peak=peaks))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "deploy.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out / "deploy.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
