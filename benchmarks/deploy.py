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

Pruning: each model is also pruned (a copy, ``PRUNE_PLANS``: >= 2x fewer MACs at the standard
shape, widths rounded to multiples of 8/16, whole attention heads removed from the BERT and
DeiT encoders) and built fp32 (``<rt>/pruned``) and int8 (``<rt>/pruned_int8``) on every
runtime, timed in the same interleaved run; their fidelity is against the pruned PyTorch
model. On the accuracy side, the twins in ``ACCURACY_PRUNE_PLANS`` are pruned the same way,
fine-tuned with distillation from the trained model (cached by ``benchmarks.common.pruned``)
and scored pruned and pruned+int8 on every runtime (``--no-prune`` skips all of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import FP32, INT8, RUNTIMES, artifact_size, cpu_name, log, settle_batchnorm

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


#: how each latency model is pruned (edgekit.prune.prune arguments)
PRUNE_PLANS: dict[str, dict[str, Any]] = {
    "bert_mini_128": {"macs_reduction": 0.5, "round_to": 16, "attention": "heads"},
    "deit_tiny_224": {"macs_reduction": 0.5, "round_to": 16, "attention": "heads"},
}
DEFAULT_PRUNE_PLAN: dict[str, Any] = {"macs_reduction": 0.5, "round_to": 8}


def prune_copy(name: str, model: torch.nn.Module, x: tuple[torch.Tensor, ...]
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A pruned copy of ``model`` (``PRUNE_PLANS``) and what pruning did (MACs counted by
    ``edgekit.prune.count_macs``, which adds the attention products of pruned attention)."""
    import copy

    from edgekit.prune import prune

    plan = PRUNE_PLANS.get(name, DEFAULT_PRUNE_PLAN)
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    res = prune(work, x, **plan)
    return work.eval(), {
        "plan": plan, "macs": res.macs_after, "params": res.params_after,
        "macs_counted_before": res.macs_before, "macs_reduction_x": round(res.macs_ratio, 3),
        "params_reduction_x": round(res.params_ratio, 3),
        "prune_seconds": round(time.perf_counter() - t0, 1)}


def run_model(name: str, tmp: Path, *, runs: int, calib_n: int, peak: dict[str, Any],
              prune: bool = True) -> dict[str, Any]:
    from benchmarks import native
    from edgekit.models.deploy import build_deploy, deploy_inputs
    from edgekit.models.zoo import count_macs

    model = build_deploy(name)
    x = deploy_inputs(name)
    in_names = ["tokens", "mask"] if name == "bert_mini_128" else ["input"]
    names = (in_names, ["output"])
    data = real_inputs(name, calib_n + 8)
    calib, held = data[:calib_n], data[calib_n:]
    settle_batchnorm(model, calib)
    macs = count_macs(model, x)
    sessions: dict[str, Any] = {}
    cells: dict[str, dict[str, Any]] = {}
    pruned_model, pruned_info = None, None
    if prune:
        try:
            pruned_model, pruned_info = prune_copy(name, model, x)
            log(name, f"pruned: {pruned_info['macs_reduction_x']}x fewer MACs")
        except Exception as exc:  # a model that does not prune is a result, with its reason
            pruned_info = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(name, f"pruning failed: {pruned_info['error']}")

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
                             "source": (q.get("source_choice") or {}).get("kept")}
        attempt(f"{rt}/int8", int8)
        if pruned_model is None:
            continue

        def pruned_fp32(rt=rt, pm=pruned_model):
            s, size, entry = _compress_one(pm, x, FP32[rt], tmp / f"{rt}-pruned", names, None)
            return s, size, {"executes": entry.get("runtime", {}).get("precision")}
        attempt(f"{rt}/pruned", pruned_fp32)

        def pruned_int8(rt=rt, pm=pruned_model):
            s, size, entry = _compress_one(pm, x, INT8[rt], tmp / f"{rt}-pruned-int8", names,
                                           calib)
            return s, size, {"float_layers": entry.get("quantization", {}).get("float_layers",
                                                                               [])}
        attempt(f"{rt}/pruned_int8", pruned_int8)

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
        pruned_refs = refs if pruned_model is None else [
            pruned_model(*[torch.from_numpy(a) for a in feed]).numpy() for feed in held]
    for key, sess in sessions.items():
        outs = [sess.run(feed)[0] for feed in held]
        ref = pruned_refs if "/pruned" in key else refs  # pruned: against pruned PyTorch
        cells[key]["fidelity"] = fidelity(np.concatenate(ref), np.concatenate(outs))

    feed0 = data[0]
    from edgekit.measure.timing import collect_interleaved

    t0 = time.perf_counter()
    got = collect_interleaved(sessions, {key: feed0 for key in sessions}, warmup=5, runs=runs)
    for key, samples in got.samples.items():
        ms = np.asarray(samples) * 1e3
        med = float(np.median(ms))
        prec = "int8" if "int8" in key else "fp32"
        work = pruned_info["macs"] if "/pruned" in key and pruned_info else macs
        cells[key].update({"median_ms": round(med, 3),
                           "p90_ms": round(float(np.percentile(ms, 90)), 3),
                           "n": int(ms.size),
                           "percent_of_peak": round(100 * 2 * work / (med / 1e3)
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
        _pruned_ratios(cells, rt, base, pruned_info)
    out = {"model": name, "macs": macs, "params": sum(p.numel() for p in model.parameters()),
           "inputs": [list(t.shape) for t in x], "runs": runs, "calibration_samples": calib_n,
           "timing_seconds": round(time.perf_counter() - t0, 1), "cells": cells}
    if pruned_info is not None:
        out["pruned"] = pruned_info
    return out


def _pruned_ratios(cells: dict[str, dict[str, Any]], rt: str, base: float | None,
                   info: dict[str, Any] | None) -> None:
    """Speed-ups of ``rt``'s pruned cells over its fp32 (and int8), and the pruned fp32
    speed-up per unit of MAC reduction (the aim: at least 0.6)."""
    p, pq = cells.get(f"{rt}/pruned", {}), cells.get(f"{rt}/pruned_int8", {})
    q = cells.get(f"{rt}/int8", {}).get("median_ms")
    for c in (p, pq):
        if base and c.get("median_ms"):
            c["speedup_over_fp32"] = round(base / c["median_ms"], 2)
    if q and pq.get("median_ms"):
        pq["speedup_over_int8"] = round(q / pq["median_ms"], 2)
    if info and info.get("macs_reduction_x") and p.get("speedup_over_fp32"):
        p["speedup_per_mac_reduction"] = round(p["speedup_over_fp32"]
                                               / info["macs_reduction_x"], 2)


def _specs(tmp: Path) -> tuple[Any, Any]:
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


#: twins also pruned (>= 2x fewer MACs at the task's shape) and fine-tuned with distillation
#: from the trained model for ``fine_tune_epochs`` (``benchmarks.common.pruned`` arguments)
ACCURACY_PRUNE_PLANS: dict[str, dict[str, Any]] = {
    "resnet18_glyphs": {"macs_reduction": 0.5, "round_to": 8, "importance": "l2", "steps": 1,
                        "fine_tune_epochs": 1},
    "bert_mini_docstrings": {"macs_reduction": 0.5, "round_to": 16, "attention": "heads",
                             "importance": "l2", "steps": 1, "fine_tune_epochs": 1},
    "mobilenet_v2_glyphs": {"macs_reduction": 0.5, "round_to": 8, "importance": "l2", "steps": 1,
                            "fine_tune_epochs": 6},
}


def trained_longer(name: str, model: torch.nn.Module, epochs: int, seed: int = 0
                   ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The control for a pruned twin: the unpruned trained ``model`` fine-tuned ``epochs`` more
    (the same recipe, no pruning, no teacher), so the pruned one is also compared with a model
    that had as many training epochs. Cached like ``benchmarks.common.trained``."""
    import copy
    import os

    from benchmarks.common import _digest, cache_root, weights_digest
    from edgekit.models import get_spec
    from edgekit.prune import fine_tune

    key = _digest(weights_digest(model), epochs, seed, "trained_longer")
    path = cache_root() / f"{name}-longer-{epochs}e-{key}.pt"
    meta_path = path.with_suffix(".json")
    work = copy.deepcopy(model)
    if path.is_file() and meta_path.is_file():
        work.load_state_dict(torch.load(path, weights_only=True))
        return work.eval(), json.loads(meta_path.read_text())
    t0 = time.perf_counter()
    fine_tune(work, get_spec(name).task(), epochs=epochs, seed=seed, progress=False)
    meta = {"extra_epochs": epochs, "seconds": round(time.perf_counter() - t0, 1)}
    tmp = path.with_suffix(".tmp")
    torch.save(work.state_dict(), tmp)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(meta))
    return work.eval(), meta


def accuracy_model(deploy_name: str, tmp: Path, *, calib_n: int, limit: int | None = None,
                   prune: bool = True, int8_config: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Train (cached) the zoo twin of ``deploy_name``, export it fp32 and int8 to every runtime
    at its task's shape and score each artifact on the test split; with ``prune`` and a plan
    in ``ACCURACY_PRUNE_PLANS``, the same for the pruned, fine-tuned twin (fp32 and int8)."""
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
    variants: list[tuple[str, torch.nn.Module]] = [("", model)]
    pruning: dict[str, Any] | None = None
    if prune and zoo in ACCURACY_PRUNE_PLANS:
        from benchmarks.common import pruned

        try:
            pmodel, pmeta = pruned(zoo, model, ACCURACY_PRUNE_PLANS[zoo])
            pruning = {k: v for k, v in pmeta.items() if k != "history"}
            pruning["plan"] = ACCURACY_PRUNE_PLANS[zoo]
            cells["pytorch/pruned"] = task_scores(task, predict(pmodel, test), targets)
            log(zoo, f"pytorch pruned: {cells['pytorch/pruned']}")
            variants.append(("pruned", pmodel))
        except Exception as exc:  # a twin that does not prune is a result, with its reason
            pruning = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(zoo, f"pruning failed: {pruning['error']}")
    jobs = [(rt, prefix, m, prec, target) for rt in RUNTIMES for prefix, m in variants
            for prec, target in (("fp32", FP32[rt]), ("int8", INT8[rt]))]
    for rt, prefix, net, prec, target in jobs:
        key = f"{rt}/{prec}" if not prefix else \
            f"{rt}/{prefix}" + ("_int8" if prec == "int8" else "")
        try:
            bundle = compress(net, spec.example_inputs(1), targets=[target],
                              out_dir=tmp / f"acc-{rt}-{prefix}{prec}", name=zoo,
                              input_names=spec.input_names, output_names=spec.output_names,
                              calibration=calib if prec == "int8" else None,
                              quantization=int8_config if prec == "int8" else None,
                              verify_samples=8, progress=False)
            outs = session_outputs(bundle.load(target, threads=1), test, batch=1)
            cells[key] = {**task_scores(task, outs, targets[: len(outs[0])]),
                          **int8_record(bundle.target(target).quantization)}
        except Exception as exc:  # a failed flow is a result, with its reason
            cells[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        log(zoo, f"{key}: {cells[key]}")
    cells.update(native_accuracy(model, spec, calib, task, test, targets, tmp))
    if pruning is not None and "error" not in pruning:
        longer, _ = trained_longer(zoo, model, int(pruning["fine_tune_epochs"]))
        cells["pytorch/fp32_trained_longer"] = task_scores(task, predict(longer, test), targets)
        log(zoo, f"pytorch unpruned, trained as long: {cells['pytorch/fp32_trained_longer']}")
    row = {"model": deploy_name, "zoo": zoo, "task": task.name, "metric": task.metric,
           "input": [list(t.shape[1:]) for t in test.inputs], "test_samples": len(test),
           "train_epochs": meta.get("epochs"), "train_seconds": meta.get("train_seconds"),
           "calibration_samples": calib_n, "int8_config": int8_config or {},
           "seconds": round(time.perf_counter() - t0, 1),
           "machine": accuracy_machine(), "cells": cells}
    if pruning is not None:
        row["pruning"] = pruning
    return row


def int8_record(q: dict[str, Any] | None) -> dict[str, Any]:
    """What an int8 build shipped, from its manifest: the layers kept in float, the layers per
    precision read from the artifact (with LiteRT's other ops on float data as ``float
    ops``), where the runtime has several int8 sources the one kept and why, and with
    ``equalize = "auto"`` whether the equalized build was kept and why."""
    if not q:
        return {}
    out: dict[str, Any] = {"float_layers": list(q.get("float_layers") or []),
                           "layer_precisions": dict(Counter(
                               str(r.get("precision")) for r in q.get("layers") or []))}
    if float_ops := sum((q.get("float_ops") or {}).values()):
        out["layer_precisions"]["float ops"] = float_ops
    if choice := q.get("source_choice"):
        out["source"] = {"kept": choice["kept"], "why": choice["why"],
                         "heldout_sqnr_db": {k: v.get("heldout_sqnr_db")
                                             for k, v in choice["sources"].items()}}
    if eq := q.get("equalize_choice"):
        out["equalize"] = {"kept": eq["kept"], "why": eq["why"]}
    return out


def native_accuracy(model: torch.nn.Module, spec: Any, calib: list[list[np.ndarray]],
                    task: Any, test: Any, targets: np.ndarray, tmp: Path,
                    runtimes: tuple[str, ...] | list[str] = RUNTIMES
                    ) -> dict[str, dict[str, Any]]:
    """``<runtime>/native_int8``: each runtime's own default int8 flow (benchmarks.native) on
    the same model and calibration data, scored on the same test split (``runtimes``)."""
    from benchmarks import native
    from edgekit.measure.scoring import session_outputs

    flows = native.default_int8_flows(model, spec.example_inputs(1), list(spec.input_names),
                                      list(spec.output_names), calib, tmp)
    cells: dict[str, dict[str, Any]] = {}
    for rt in runtimes:
        key = f"{rt}/native_int8"
        try:
            got = session_outputs(flows[rt](), test, batch=1)
            cells[key] = task_scores(task, got, targets[: len(got[0])])
        except Exception as exc:  # a failed default flow is a result, with its reason
            cells[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        log(spec.name, f"{key}: {cells[key]}")
    return cells


def accuracy_machine() -> dict[str, Any]:
    """Where an accuracy row was measured: int8 scores on ONNX Runtime depend on the CPU (its
    uint8 x int8 kernels saturate on x86-64 without VNNI)."""
    from edgekit.backends.x86_saturation import u8s8_saturates

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "int8_kernels": u8s8_saturates()[1]}


def drop_aim_markdown(rows: list[dict[str, Any]], aim: float = 0.3) -> list[str]:
    """The int8 drop aim per runtime (``fp32 - int8`` in points, signed by the task's
    direction), with whether each build kept layers in float and what it executes."""
    from edgekit.models import get_spec

    lines = ["### PTQ drop against the aim", "",
             f"Aim: drop <= {aim} points with every layer int8 (no float fallback). Drop = "
             "PyTorch fp32 minus the int8 artifact (positive = worse); `executes`: the layers "
             "per precision read back from the artifact; `equalize`: which build "
             "`equalize = \"auto\"` kept (`-`: one build, nothing equalized or the setting "
             "given); `default` = the runtime's own "
             "default int8 flow on the same model and calibration data.", "",
             "| model | runtime | int8 | drop | default drop | float fallback | executes | "
             "source | equalize | aim |", "|---|---|---:|---:|---:|---|---|---|---|---|"]
    met = missed = 0
    for r in rows:
        task, m, c = get_spec(r["zoo"]).task(), r["metric"], r["cells"]
        ref = c["pytorch/fp32"][m]
        for rt in RUNTIMES:
            cell, nat = c.get(f"{rt}/int8", {}), c.get(f"{rt}/native_int8", {})
            ndrop = f"{task.drop(ref, nat[m]):.2f}" if m in nat else "failed" if nat else "-"
            if m not in cell:
                lines.append(f"| {r['model']} | {rt} | failed: {cell.get('error', '-')[:90]} | "
                             f"- | {ndrop} | - | - | - | - | missed |")
                missed += 1
                continue
            d = task.drop(ref, cell[m])
            ok = d <= aim and not cell.get("float_layers")
            met, missed = met + ok, missed + (not ok)
            execs = ", ".join(f"{k} {v}" for k, v in (cell.get("layer_precisions") or {}).items())
            fl = cell.get("float_layers")
            lines.append(f"| {r['model']} | {rt} | {cell[m]:.2f} | {d:.2f} | {ndrop} | "
                         f"{'not recorded' if fl is None else fl or 'none'} | {execs or '-'} | "
                         f"{(cell.get('source') or {}).get('kept', '-')} | "
                         f"{(cell.get('equalize') or {}).get('kept', '-')} | "
                         f"{'met' if ok else 'missed'} |")
    return lines + ["", f"Aim met in {met} of {met + missed} cells.", ""]


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
    native_rows = [r for r in rows if any(k.endswith("/native_int8") for k in r["cells"])]
    if native_rows:
        lines += ["", "Beside each runtime's own default int8 flow (same model, calibration "
                  "data and test split, same run; `benchmarks/native.py`):", "",
                  "| model | " + " | ".join(f"{rt} default int8 | {rt} edgekit int8"
                                           for rt in RUNTIMES) + " |",
                  "|---|" + "---:|" * (2 * len(RUNTIMES))]
        for r in native_rows:
            lines.append(f"| {r['model']} | " + " | ".join(
                f"{cell(r['cells'].get(f'{rt}/native_int8', {}), r['metric'])} | "
                f"{cell(r['cells'].get(f'{rt}/int8', {}), r['metric'])}" for rt in RUNTIMES)
                + " |")
    machines = sorted({(m["cpu"], m["cores"], m["int8_kernels"]) for r in rows
                       if (m := r.get("machine"))})
    if machines:
        lines += ["", "Measured on: " + "; ".join(
            f"{', '.join(r['model'] for r in rows if r.get('machine', {}).get('cpu') == cpu)} "
            f"on {cpu} ({cores} cores; {kernels})" for cpu, cores, kernels in machines)
            + (" (rows without a machine: the latency tables' machine)"
               if any("machine" not in r for r in rows) else "") + "."]
    pruned_rows = [r for r in rows if r.get("pruning")]
    if not pruned_rows:
        return lines + [""]
    lines += [
        "",
        "### Pruned (>= 2x fewer MACs) and fine-tuned with distillation",
        "",
        "The same twins pruned at the task's shape and fine-tuned with distillation from the "
        "trained model (epochs as listed), then exported fp32 and int8 and scored on the same "
        "test split. Aim: within 1 point of the unpruned model (PyTorch "
        "fp32 above). The fine-tuning is extra training, so the unpruned model trained for as "
        "many more epochs (same recipe, no pruning) is shown beside it.",
        "",
        "| model | MACs fewer | fine-tune | after pruning | PyTorch pruned | unpruned trained "
        "as long | " + " | ".join(f"{rt} {p}" for rt in RUNTIMES
                                  for p in ("pruned", "pruned+int8"))
        + " | within 1 point |",
        "|---|---:|---|---:|---:|---:|" + "---:|" * (2 * len(RUNTIMES)) + "---|",
    ]
    for r in pruned_rows:
        pr, c, metric = r["pruning"], r["cells"], r["metric"]
        if "error" in pr:
            lines.append(f"| {r['model']} | failed: {pr['error'][:80]} |")
            continue
        base = c["pytorch/fp32"].get(metric)
        scores = [c.get(k, {}).get(metric) for k in
                  ["pytorch/pruned", *(f"{rt}/pruned{s}" for rt in RUNTIMES
                                       for s in ("", "_int8"))]]
        worst = min((v for v in scores if v is not None), default=None)
        longer = c.get("pytorch/fp32_trained_longer", {}).get(metric)
        verdict = "-" if worst is None or base is None else (
            f"**{'met' if base - worst <= 1.0 else 'missed'}** (worst {worst - base:+.2f}"
            + (f"; {worst - longer:+.2f} against the unpruned model trained as long"
               if longer is not None else "") + ")")
        lines.append(
            f"| {r['model']} | {pr.get('macs_reduction_x')}x | "
            f"{pr.get('fine_tune_epochs')} ep, {pr.get('prune_fine_tune_seconds')} s | "
            f"{pr.get('metric_after_prune', '-')} | "
            f"{cell(c.get('pytorch/pruned', {}), metric)} | "
            f"{cell(c.get('pytorch/fp32_trained_longer', {}), metric)} | "
            + " | ".join(cell(c.get(f"{rt}/pruned{s}", {}), metric)
                         for rt in RUNTIMES for s in ("", "_int8"))
            + f" | {verdict} |")
    return lines + [""]


# --------------------------------------------------------------------------- report


AIMS = [  # (model, runtime, minimum int8 speed-up over fp32)
    ("mobilenet_v2_224", "onnxruntime", 2.5), ("mobilenet_v2_224", "tflite", 2.5),
    ("mobilenet_v2_224", "openvino", 3.0),
    ("resnet18_224", "onnxruntime", 3.0), ("resnet18_224", "openvino", 3.0),
    ("resnet18_224", "tflite", 3.0), ("bert_mini_128", "onnxruntime", 2.0),
]


def _runs_line(report: dict[str, Any]) -> list[str]:
    """Which run measured each model, when the rows come from more than one (``--merge``)."""
    runs: dict[str, list[str]] = {}
    for r in report["models"]:
        peak = r.get("peak", report["peak"])
        runs.setdefault(f"{r.get('measured') or 'an earlier run'} (peak int8 "
                        f"{peak['int8'] / 1e9:.0f} GOP/s)", []).append(r["model"])
    if len(runs) < 2:
        return []
    default_bn = [r["model"] for r in report["models"] if "batchnorm" not in r]
    return ["Rows from separate runs, each model's cells timed together in one: " + "; ".join(
        f"{', '.join(models)}: {when}" for when, models in runs.items()) + "." + (
        f" In the earlier run BatchNorm kept its default statistics ({', '.join(default_bn)}: "
        "fidelity of those rows is against a less input-dependent output)." if default_bn
        else ""), ""]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Latency at deployment shapes",
        "",
        f"Generated by `python -m benchmarks.deploy` on {m['cpu']} ({m['cores']} cores), "
        f"{report['threads']} thread per runtime, batch 1, medians of interleaved calls; "
        f"measured peak fp32 {report['peak']['fp32'] / 1e9:.1f} GFLOP/s, int8 "
        f"{report['peak']['int8'] / 1e9:.1f} GOP/s. Latency models randomly initialised, "
        "BatchNorm statistics estimated on the calibration data (speed, size and int8 fidelity "
        "against the model's own fp32 output; accuracy of the same architectures trained on "
        "real tasks: the last section). Calibration: real data reshaped to each input (see "
        "the script's docstring).",
        "",
        *_runs_line(report),
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
    lines += pruned_markdown(report)
    lines += ["", "Published anchors (other CPUs, context only): "
              + "; ".join(ANCHORS.values()) + "."]
    if report.get("accuracy"):
        lines += [""] + accuracy_markdown(report["accuracy"])
    return "\n".join(lines) + "\n"


#: pruned+int8 over fp32, held to the 4x aim on the image models only
PRUNED_INT8_AIM = 4.0
IMAGE_MODELS = ("mobilenet_v2_224", "mobilenet_v3_large_224", "resnet18_224", "resnet50_224",
                "deit_tiny_224", "unet_128")
PRUNED_PER_MAC_AIM = 0.6


def pruned_markdown(report: dict[str, Any]) -> list[str]:
    """The pruned / pruned+int8 table and the two pruning aims (empty without pruned cells)."""
    rows = [r for r in report["models"] if r.get("pruned")]
    if not rows:
        return []
    lines = [
        "", "## Pruned and pruned+int8", "",
        "Each model pruned (a copy) to the MAC reduction shown at its standard shape, then "
        "built fp32 and int8 like the unpruned one and timed in the same interleaved run. "
        "Speed-ups are over the same runtime's unpruned fp32 (and int8); speed-up / MACs is "
        "the pruned fp32 speed-up divided by the MAC reduction (aim >= "
        f"{PRUNED_PER_MAC_AIM}). SQNR of the pruned artifacts is against the pruned PyTorch "
        "model.", "",
        "| model | runtime | MACs fewer | fp32 ms | pruned ms | pruned speed-up | speed-up / "
        "MACs | int8 ms | pruned+int8 ms | pruned+int8 over fp32 | over int8 | pruned+int8 "
        "SQNR dB | pruned+int8 KiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(cell: dict[str, Any]) -> str:
        return f"{cell['median_ms']:.3f}" if "median_ms" in cell else \
            f"failed: {cell.get('error', 'not run')[:60]}"

    for res in rows:
        info = res["pruned"]
        if "error" in info:
            lines.append(f"| {res['model']} | - | pruning failed: {info['error'][:100]} |")
            continue
        for rt in RUNTIMES:
            c = res["cells"]
            f, p, q, pq = (c.get(f"{rt}/{v}", {})
                           for v in ("fp32", "pruned", "int8", "pruned_int8"))
            lines.append(
                f"| {res['model']} | {rt} | {info['macs_reduction_x']}x | {ms(f)} | {ms(p)} | "
                f"{p.get('speedup_over_fp32', '-')}x | {p.get('speedup_per_mac_reduction', '-')}"
                f" | {ms(q)} | {ms(pq)} | {pq.get('speedup_over_fp32', '-')}x | "
                f"{pq.get('speedup_over_int8', '-')}x | "
                f"{pq.get('fidelity', {}).get('sqnr_db', '-')} | "
                f"{pq.get('bytes', 0) / 1024:.0f} |")
    lines += ["", "### Pruning aims", ""]
    for res in rows:
        if "error" in res["pruned"]:
            lines.append(f"- {res['model']}: pruning failed, aims not measured")
            continue
        c = res["cells"]
        got = {rt: c.get(f"{rt}/pruned_int8", {}).get("speedup_over_fp32") for rt in RUNTIMES}
        per = {rt: c.get(f"{rt}/pruned", {}).get("speedup_per_mac_reduction")
               for rt in RUNTIMES}

        def verdict(vals: dict[str, Any], want: float) -> str:
            ok = all(v is not None and v >= want for v in vals.values())
            return f"**{'met' if ok else 'missed'}** (" + ", ".join(
                f"{rt} {v if v is not None else 'not measured'}" for rt, v in vals.items()) + ")"
        if res["model"] in IMAGE_MODELS:
            lines.append(f"- {res['model']} pruned+int8 >= {PRUNED_INT8_AIM}x over fp32 on "
                         f"every runtime: {verdict(got, PRUNED_INT8_AIM)}")
        else:
            lines.append(f"- {res['model']} pruned+int8 over fp32 (no aim: not an image "
                         "model): " + ", ".join(f"{rt} {v}x" for rt, v in got.items()))
        lines.append(f"- {res['model']} pruned speed-up >= {PRUNED_PER_MAC_AIM} x the MAC "
                     f"reduction ({res['pruned']['macs_reduction_x']}x) on every runtime: "
                     f"{verdict(per, PRUNED_PER_MAC_AIM)}")
    return lines


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
    ap.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                    help="also build, time and score pruned and pruned+int8 models")
    ap.add_argument("--int8-config", type=json.loads, default=None, metavar="JSON",
                    help='the accuracy part\'s int8 builds\' quantization settings, e.g. '
                    '\'{"fallback": false}\' for every layer int8 (default: edgekit\'s)')
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models of an existing deploy.json (or, with "
                    "--accuracy-only, deploy_accuracy.json); each model's row records the run "
                    "and machine it was measured with")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else deploy_models()
    threads = 1
    torch.set_num_threads(threads)
    out = Path(args.out)
    if args.accuracy_only:
        rows = []
        if args.merge and (out / "deploy_accuracy.json").is_file():
            rows = [r for r in json.loads((out / "deploy_accuracy.json").read_text())
                    if r["model"] not in names]
        kept_rows = [r["model"] for r in rows]
        for name in names:
            with tempfile.TemporaryDirectory(prefix=f"edgekit-acc-{name}-") as tmp:
                rows.append(accuracy_model(name, Path(tmp), calib_n=args.calibration,
                                           limit=args.test_limit, prune=args.prune,
                                           int8_config=args.int8_config))
            out.mkdir(parents=True, exist_ok=True)
            (out / "deploy_accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
        cmd = shlex.join(sys.argv[1:] if argv is None else argv)
        md = [f"Generated by `python -m benchmarks.deploy {cmd}`"
              f" ({args.calibration} calibration samples; int8 settings: "
              f"{args.int8_config or 'edgekit defaults'})"
              + (f"; the rows of {', '.join(kept_rows)} kept from an earlier run (each row "
                 "records its machine and int8 settings)." if kept_rows else "."), ""]
        md += accuracy_markdown(rows) + drop_aim_markdown(rows)
        (out / "deploy_accuracy.md").write_text("\n".join(md))
        print("\n".join(md))
        return 0
    peak = measure_peak(threads=threads)
    report: dict[str, Any] = {
        "threads": threads, "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                                        "python": platform.python_version()},
        "peak": {"fp32": peak["fp32"]["ops_per_s"], "int8": peak["int8"]["ops_per_s"]},
        "models": [], "accuracy": []}
    peaks = {k: {"ops_per_s": v} for k, v in report["peak"].items()}
    kept: list[dict[str, Any]] = []
    if args.merge and (out / "deploy.json").is_file():
        old = json.loads((out / "deploy.json").read_text())
        kept = [{"measured": old.get("measured"), "peak": old["peak"], **r}
                for r in old["models"] if r["model"] not in names]
        report["accuracy"] = [r for r in old.get("accuracy", []) if r["model"] not in names]
    report["measured"] = time.strftime("%Y-%m-%d %H:%M")
    report["models"] = kept
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"edgekit-deploy-{name}-") as tmp:
            report["models"].append({"measured": report["measured"], "peak": report["peak"],
                                     "batchnorm": "estimated on the calibration data",
                                     **run_model(name, Path(tmp), runs=args.runs,
                                                 calib_n=args.calibration, peak=peaks,
                                                 prune=args.prune)})
            if args.accuracy and name in ZOO_TWINS:
                report["accuracy"].append(accuracy_model(name, Path(tmp), calib_n=args.calibration,
                                                         limit=args.test_limit,
                                                         prune=args.prune))
        out.mkdir(parents=True, exist_ok=True)
        (out / "deploy.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out / "deploy.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
