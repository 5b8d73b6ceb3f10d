"""Latency at the shapes users deploy: fp32 and int8 per runtime, beside each runtime's own
default int8 flow, at 1 thread, timed side by side in one interleaved run per model.

    python -m benchmarks.deploy                       # every model of edgekit.models.deploy
    python -m benchmarks.deploy --models resnet18_224,mobilenet_v2_224 --runs 40

    python -m benchmarks.deploy --accuracy-only       # only the accuracy part (below)

Writes ``benchmarks/results/deploy.{json,md}``. Latency: the models are timed at their
standard shapes with random weights (speed, size and int8 fidelity against the model's own fp32
output). Calibration and fidelity inputs are real data shaped to each model's input:
scikit-learn's digits resized to 224x224 RGB, the shipped spoken-digit features resampled to
49x10 frames, and English text (the Python standard library's own docstrings) hashed into token
ids with a real padding mask.

Accuracy: each architecture's twin in the zoo (``ZOO_TWINS``, ``edgekit.models.zoo.realistic``)
is trained on its real task (glyphs in unseen fonts at 64x64, keyword spotting on unseen voices
at 49x10 MFCC, docstring classification at 128 tokens; weights cached by
``benchmarks.common.trained``), exported fp32 and int8 to every runtime at the task's shape,
and scored on the task's whole test split: the task metric, and for classifiers macro recall
and macro F1 (``edgekit.measure.metrics``), beside PyTorch fp32.

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


# --------------------------------------------------------------------------- accuracy

#: deployment architecture -> the zoo entry that trains it on a real task
ZOO_TWINS = {
    "mobilenet_v2_224": "mobilenet_v2_glyphs", "mobilenet_v3_large_224": "mobilenet_v3_glyphs",
    "resnet18_224": "resnet18_glyphs", "deit_tiny_224": "deit_tiny_glyphs",
    "unet_128": "unet_glyphs", "ds_cnn_kws": "ds_cnn_kws", "gru_kws": "gru_kws",
    "bert_mini_128": "bert_mini_docstrings",
}


def task_scores(task, outputs: list[np.ndarray], targets: np.ndarray) -> dict[str, float]:
    """The task's metric, plus macro recall and F1 for classifiers (all rounded)."""
    from edgekit.measure.metrics import classification_metrics

    out = {task.metric: round(float(task.score(outputs, targets, None)), 2)}
    if task.kind == "classification":
        m = classification_metrics(outputs[0], targets)
        out.update(macro_recall=round(m["macro_recall"], 2), macro_f1=round(m["macro_f1"], 2))
    return out


def accuracy_model(deploy_name: str, tmp: Path, *, calib_n: int, limit: int | None = None
                   ) -> dict[str, Any]:
    """Train (cached) the zoo twin of ``deploy_name``, export it fp32 and int8 to every runtime
    at its task's shape and score each artifact on the test split."""
    from benchmarks.common import trained
    from edgekit.measure.scoring import session_outputs, split_batches
    from edgekit.models import get_spec
    from edgekit.pipeline import compress
    from edgekit.train import predict

    zoo = ZOO_TWINS[deploy_name]
    spec = get_spec(zoo)
    t0 = time.perf_counter()
    model, meta = trained(zoo)
    task = spec.task()
    test = task.test if limit is None else task.test.subset(limit)
    targets = test.targets.numpy()
    calib = split_batches(task.val, 1, limit=calib_n)  # val: shaped like test (train may not be)
    cells: dict[str, dict[str, Any]] = {
        "pytorch/fp32": task_scores(task, predict(model, test), targets)}
    log(zoo, f"pytorch fp32: {cells['pytorch/fp32']}")
    for rt in RUNTIMES:
        for prec, target in (("fp32", FP32[rt]), ("int8", INT8[rt])):
            key = f"{rt}/{prec}"
            try:
                bundle = compress(model, spec.example_inputs(1), targets=[target],
                                  out_dir=tmp / f"acc-{rt}-{prec}", name=zoo,
                                  input_names=spec.input_names, output_names=spec.output_names,
                                  calibration=calib if prec == "int8" else None,
                                  verify_samples=8, progress=False)
                outs = session_outputs(bundle.load(target, threads=1), test, batch=1)
                cells[key] = task_scores(task, outs, targets[: len(outs[0])])
            except Exception as exc:  # a failed flow is a result, with its reason
                cells[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(zoo, f"{key}: {cells[key]}")
    return {"model": deploy_name, "zoo": zoo, "task": task.name, "metric": task.metric,
            "input": [list(t.shape[1:]) for t in test.inputs], "test_samples": len(test),
            "train_epochs": meta.get("epochs"), "train_seconds": meta.get("train_seconds"),
            "calibration_samples": calib_n, "seconds": round(time.perf_counter() - t0, 1),
            "cells": cells}


def accuracy_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Accuracy on the real tasks",
        "",
        "Each architecture trained on a real task at the task's shape (trained weights cached "
        "outside the repository; `python -m benchmarks.deploy --accuracy-only` rebuilds "
        "them), exported fp32 and int8, scored on the whole test split (unseen fonts, voices "
        "or source files). Cells: task metric (macro recall / macro F1 for classifiers), in %.",
        "",
        "| model | task, input | train | PyTorch fp32 | " + " | ".join(
            f"{rt} {p}" for rt in RUNTIMES for p in ("fp32", "int8")) + " |",
        "|---|---|---|---:|" + "---:|" * (2 * len(RUNTIMES)),
    ]

    def cell(c: dict[str, Any], metric: str) -> str:
        if "error" in c:
            return f"failed: {c['error'][:60]}"
        if metric not in c:
            return "-"
        extra = (f" ({c['macro_recall']:.1f} / {c['macro_f1']:.1f})"
                 if "macro_f1" in c else "")
        return f"{c[metric]:.2f}{extra}"

    for r in rows:
        shape = "x".join(str(d) for d in r["input"][0])
        lines.append(
            f"| {r['model']} | {r['task']} {shape} | {r['train_epochs']} ep, "
            f"{r['train_seconds']} s | {cell(r['cells']['pytorch/fp32'], r['metric'])} | "
            + " | ".join(cell(r["cells"].get(f"{rt}/{p}", {}), r["metric"])
                         for rt in RUNTIMES for p in ("fp32", "int8")) + " |")
    return lines + [""]


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
        f"{report['peak']['int8'] / 1e9:.1f} GOP/s. Latency models randomly initialised (speed, "
        "size and int8 fidelity against the model's own fp32 output; accuracy of the same "
        "architectures trained on real tasks: the last section). Calibration: "
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
    if report.get("accuracy"):
        lines += [""] + accuracy_markdown(report["accuracy"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from edgekit.bench.peak import measure_peak
    from edgekit.models.deploy import deploy_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated (default: all)")
    ap.add_argument("--runs", type=int, default=30, help="timed rounds per model (default 30)")
    ap.add_argument("--calibration", type=int, default=32, help="calibration samples")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True,
                    help="also train the zoo twins and score fp32/int8 on the real tasks")
    ap.add_argument("--accuracy-only", action="store_true", help="skip the latency part")
    ap.add_argument("--test-limit", type=int, default=None,
                    help="score only the first N test samples (default: the whole split)")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else deploy_models()
    threads = 1
    torch.set_num_threads(threads)
    out = Path(args.out)
    if args.accuracy_only:
        rows = []
        for name in names:
            with tempfile.TemporaryDirectory(prefix=f"edgekit-acc-{name}-") as tmp:
                rows.append(accuracy_model(name, Path(tmp), calib_n=args.calibration,
                                           limit=args.test_limit))
            out.mkdir(parents=True, exist_ok=True)
            (out / "deploy_accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
        print("\n".join(accuracy_markdown(rows)))
        return 0
    peak = measure_peak(threads=threads)
    report: dict[str, Any] = {
        "threads": threads, "machine": {"cpu": _cpu(), "cores": os.cpu_count(),
                                        "python": platform.python_version()},
        "peak": {"fp32": peak["fp32"]["ops_per_s"], "int8": peak["int8"]["ops_per_s"]},
        "models": [], "accuracy": []}
    peaks = {k: {"ops_per_s": v} for k, v in report["peak"].items()}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"edgekit-deploy-{name}-") as tmp:
            report["models"].append(run_model(name, Path(tmp), runs=args.runs,
                                              calib_n=args.calibration, peak=peaks))
            if args.accuracy and name in ZOO_TWINS:
                report["accuracy"].append(accuracy_model(name, Path(tmp), calib_n=args.calibration,
                                                         limit=args.test_limit))
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
