"""int8 on the zoo's real tasks: fp32 vs edgekit PTQ vs edgekit QAT vs each runtime's own
default int8 flow, per runtime: test accuracy, file size and median latency (all sessions of a
model timed side by side, interleaved, in one run).

    python benchmarks/quantization.py [--models cnn,mobilenet_v2,ds_cnn,lstm,transformer]
                                      [--runs 200] [--threads 1] [--epochs-scale 0.5]

Native default flows (what a user gets by hand, calibrated on the same 300 training samples):
* onnxruntime: fp32 ONNX -> quant_pre_process -> quantize_static(QDQ, per_channel=True),
  everything else default (int8 activations, MinMax);
* openvino: convert_model(model, example_input=x) -> nncf.quantize defaults;
* litert: PT2E with litert-torch's symmetric per-channel quantizer.
OpenVINO sessions (edgekit's and native) run with INFERENCE_PRECISION_HINT=f32, so "fp32" is
really fp32 (the CPU plugin's default would be bf16 here). edgekit's OpenVINO int8 builds
both sources and keeps the faster passing one ("ptq"; the note names the source kept); each
source is also measured on its own: NNCF ("ptq_nncf") and edgekit's QDQ ONNX ("ptq_qdq").

Writes benchmarks/results/quantization.{json,md}. Numbers are measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from edgekit.backends import Artifact, get_backend
from edgekit.measure.scoring import evaluate_session
from edgekit.measure.timing import time_interleaved
from edgekit.models import get_spec
from edgekit.pipeline import compress
from edgekit.quantize.qat import qat_finetune
from edgekit.train import evaluate

import native
from common import FP32, INT8, RUNTIMES, task_fidelity, trained

RESULTS = Path(__file__).resolve().parent / "results"
CALIB = 300
#: The builds measured per model and runtime, in table order (each compared with "fp32").
VARIANTS = ("ptq", "qat", "native", "ptq_nncf", "ptq_qdq")


def log(msg: str) -> None:
    print(f"[quantization] {msg}", file=sys.stderr, flush=True)


def _size(bundle_dir: Path, target: str) -> int:
    files = [f for f in (bundle_dir / target).iterdir()
             if f.suffix in (".onnx", ".bin", ".tflite", ".data")]
    return sum(f.stat().st_size for f in files)


def _native(name: str, model, x, spec, task, tmp: Path, fp32_dir: Path, threads: int,
            fp32_ort=None) -> dict:
    """Each runtime's default int8 flow; returns {runtime: (session, size_bytes, info)}."""
    calib = [[t[i:i + 1].numpy() for t in task.train.inputs] for i in range(CALIB)]
    out: dict = {}
    # onnxruntime
    try:
        src = fp32_dir / FP32["onnxruntime"] / "model.onnx"
        out["onnxruntime"] = (*native.ort_int8(src, tmp / f"{name}-ort-native", calib,
                                               list(spec.input_names), fp32_ort.inputs,
                                               fp32_ort.outputs, threads), {})
    except Exception as exc:
        out["onnxruntime"] = (None, None, {"error": f"{type(exc).__name__}: {exc}"[:300]})
    # openvino + nncf defaults
    try:
        import nncf
        import openvino as ov

        om = ov.convert_model(model, example_input=x)
        for port, n in zip(om.inputs, spec.input_names):
            port.get_tensor().set_names({n})
        for port, n in zip(om.outputs, spec.output_names):
            port.get_tensor().set_names({n})
        data = [c if len(c) > 1 else c[0] for c in calib]
        qm = nncf.quantize(om, nncf.Dataset(data))
        # convert_model keeps a dynamic input shape; make it static (as edgekit's IR) so both
        # run the same shape-specialised kernels and the session can bind its input once.
        qm.reshape({qm.inputs[i]: ov.PartialShape(list(t.shape)) for i, t in enumerate(x)})
        d = tmp / f"{name}-ov-native"
        d.mkdir(exist_ok=True)
        ov.save_model(qm, str(d / "model.xml"), compress_to_fp16=False)
        from edgekit.backends.openvino import _port_specs

        art = Artifact("openvino", d, ["model.xml", "model.bin"],
                       _port_specs(qm.inputs, list(spec.input_names)),
                       _port_specs(qm.outputs, list(spec.output_names)), "int8")
        sess = get_backend("openvino").load(art, threads=threads,
                                            options={"inference_precision": "f32"})
        out["openvino"] = (sess, (d / "model.bin").stat().st_size, {})
    except Exception as exc:
        out["openvino"] = (None, None, {"error": f"{type(exc).__name__}: {exc}"[:300]})
    # litert PT2E defaults
    try:
        out["tflite"] = (*native.tflite_int8(model, x, tmp / f"{name}-tfl-native", calib,
                                             spec.input_names, spec.output_names, threads), {})
    except Exception as exc:
        out["tflite"] = (None, None, {"error": f"{type(exc).__name__}: {exc}"[:300]})
    return out


def run_model(name: str, runs: int, threads: int, epochs_scale: float, qat_epochs: int,
              tmp: Path) -> dict:
    spec = get_spec(name)
    task = spec.task()
    epochs = max(2, round(spec.default_epochs * epochs_scale))
    model, meta = trained(name, epochs)  # cached across runs (and shared with the suite)
    fp32_acc = evaluate(model, task.test, task)
    log(f"{name}: trained {epochs} epochs in {meta['train_seconds']:.0f} s, "
        f"test {task.metric} {fp32_acc:.2f}")
    x = spec.example_inputs(1)
    kw = dict(input_names=spec.input_names, output_names=spec.output_names, task=task,
              verify_samples=200, progress=False)
    rows: dict = {"model": name, "epochs": epochs, "fp32_pytorch": fp32_acc, "variants": {}}
    sessions, sizes, notes = {}, {}, {}

    def add_bundle(tag: str, out: Path, targets: dict, **extra) -> None:
        t0 = time.perf_counter()
        try:
            extra = dict(extra)
            bundle = compress(model if tag != "qat" else extra.pop("qat_model"), x,
                              targets=list(targets.values()), out_dir=out, **kw, **extra)
        except Exception as exc:
            log(f"{name} {tag}: FAILED {type(exc).__name__}: {str(exc)[:400]}")
            for rt in targets:
                notes[f"{tag}/{rt}"] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
            return
        log(f"{name} {tag}: built in {time.perf_counter() - t0:.0f} s")
        man = json.loads((out / "manifest.json").read_text())
        for rt, target in targets.items():
            sessions[f"{tag}/{rt}"] = bundle.load(target, threads=threads)
            sizes[f"{tag}/{rt}"] = _size(out, target)
            e = man["targets"][target]
            q = e.get("quantization", {})
            notes[f"{tag}/{rt}"] = {
                "executed_precision": e["runtime"].get("precision"),
                "float_layers": q.get("float_layers"),
                "int8_layers": e["artifact_info"].get("quantization", {}).get("int8_layers"),
                "float_compute_layers": e["artifact_info"].get("quantization", {}).get(
                    "float_layers"),
                "dynamic_range_nodes": e["artifact_info"].get("quantization", {}).get(
                    "dynamic_range_nodes"),
                # what the build shipped: the source choice, then the latency check (run at
                # the profile's thread count) may have switched to a faster variant
                "openvino_source": ((q.get("config") or {}).get("openvino_source")
                                    if rt == "openvino" else None),
                "latency_variant": (q.get("latency_check") or {}).get("chosen"),
            }

    add_bundle("fp32", tmp / f"{name}-fp32", FP32)
    for rt, target in INT8.items():  # one bundle per target: a failure stays local
        add_bundle("ptq", tmp / f"{name}-ptq-{rt}", {rt: target})
    for source in ("nncf", "qdq"):
        add_bundle(f"ptq_{source}", tmp / f"{name}-ptq-{source}", {"openvino": INT8["openvino"]},
                   quantization={"openvino_source": source})
    try:
        t0 = time.perf_counter()
        qat_model = qat_finetune(model, task, x, epochs=qat_epochs, teacher=model)
        log(f"{name}: QAT {qat_epochs} epoch(s) in {time.perf_counter() - t0:.0f} s")
        for rt, target in INT8.items():
            add_bundle("qat", tmp / f"{name}-qat-{rt}", {rt: target}, qat_model=qat_model)
    except Exception as exc:
        log(f"{name} qat: FAILED {type(exc).__name__}: {str(exc)[:300]}")
        for rt in RUNTIMES:
            notes[f"qat/{rt}"] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
    for rt, (sess, size, info) in _native(name, model, x, spec, task, tmp, tmp / f"{name}-fp32",
                                          threads, sessions.get("fp32/onnxruntime")).items():
        if sess is not None:
            sessions[f"native/{rt}"] = sess
            sizes[f"native/{rt}"] = size
        notes[f"native/{rt}"] = info or {"executed_precision": sess.info.get("precision")}
        if info.get("error"):
            log(f"{name} native {rt}: FAILED {info['error'][:200]}")
    acc = {}
    for key, sess in sessions.items():
        try:
            acc[key] = evaluate_session(sess, task.test, task, batch=1)
        except Exception as exc:
            notes.setdefault(key, {})["eval_error"] = f"{type(exc).__name__}: {exc}"[:300]
    feeds = {k: [t.numpy() for t in x] for k in sessions}
    for key in list(sessions):  # a session that cannot run is reported, not timed
        try:
            sessions[key].run(feeds[key])
        except Exception as exc:
            notes.setdefault(key, {})["run_error"] = f"{type(exc).__name__}: {exc}"[:300]
            del sessions[key]
    stats = time_interleaved(sessions, feeds, warmup=30, runs=runs)
    for key in sorted(set(list(sessions) + list(notes))):
        st = stats.get(key)
        rows["variants"][key] = {
            "accuracy": None if key not in acc else round(acc[key], 3),
            "size_bytes": sizes.get(key),
            "median_ms": None if st is None else round(st.median_ms, 4),
            **notes.get(key, {}),
        }
    return rows


#: The float-domain transforms measured by the ablation, as ``quantization=`` switches.
TRANSFORMS = ("equalize", "bias_correction", "smoothquant")
#: Every ablation build: all layers int8 (no fallback, no latency variants), NNCF for OpenVINO
#: (its native flow's quantizer: the difference measured is the transforms alone).
ABLATION_BASE = {"fallback": False, "latency_check": False, "openvino_source": "nncf"}


def _ungated(target: str):
    """``target``'s profile with its parity tolerance and held-out gate off: the ablation
    measures every build, including those the gate would refuse (with fallback off)."""
    import dataclasses

    from edgekit.profiles import Tolerance, load_profile

    p = load_profile(target)
    return dataclasses.replace(p, tolerance=Tolerance(None, None, None), gate={
        "holdout": 0.0, "min_centred_cosine": False, "min_sqnr_db": False,
        "min_top1_agreement": False})


def run_transforms(name: str, threads: int, epochs_scale: float, tmp: Path,
                   runtimes: tuple[str, ...] = RUNTIMES) -> dict:
    """fp32, each runtime's default int8 flow, and edgekit PTQ with every float-domain
    transform on, with each one off in turn and with none: accuracy, fidelity to PyTorch fp32
    (centred cosine, top-1 agreement, SQNR on the test split) and size, side by side."""
    spec = get_spec(name)
    task = spec.task()
    epochs = max(2, round(spec.default_epochs * epochs_scale))
    model, _ = trained(name, epochs)
    with torch.no_grad():
        ref = model(*task.test.inputs)
    ref = np.asarray((ref if isinstance(ref, torch.Tensor) else ref[0]).numpy(), dtype=np.float64)
    fp32_acc = evaluate(model, task.test, task)
    x = spec.example_inputs(1)
    calib = [tuple(t[i:i + 1].numpy() for t in task.train.inputs) for i in range(CALIB)]
    kw = dict(input_names=spec.input_names, output_names=spec.output_names, verify_samples=16,
              progress=False, calibration=calib)
    out: dict = {"model": name, "epochs": epochs, "fp32_pytorch": round(fp32_acc, 3),
                 "builds": {}}
    t0 = time.perf_counter()
    fp32_dir = tmp / f"{name}-tf-fp32"
    fp32 = compress(model, x, targets=[FP32[rt] for rt in runtimes], out_dir=fp32_dir,
                    **{k: v for k, v in kw.items() if k != "calibration"})
    fp32_sessions = {rt: fp32.load(FP32[rt], threads=threads) for rt in runtimes}
    for rt in runtimes:
        out["builds"][f"fp32/{rt}"] = {**task_fidelity(fp32_sessions[rt], task, ref),
                                       "size_bytes": _size(fp32_dir, FP32[rt])}
    for rt, (sess, size, info) in _native(name, model, x, spec, task, tmp, fp32_dir, threads,
                                          fp32_sessions.get("onnxruntime")).items():
        if rt not in runtimes:
            continue
        out["builds"][f"native/{rt}"] = ({**task_fidelity(sess, task, ref), "size_bytes": size}
                                         if sess is not None else dict(info))
    log(f"{name}: fp32 + native in {time.perf_counter() - t0:.0f} s")
    from edgekit.quantize.transforms import apply_transforms

    variants: dict[str, dict] = {"all": {**{t: True for t in TRANSFORMS},
                                         "equalize_relu6": "clamp"}}
    variants["none"] = {t: False for t in TRANSFORMS}
    _, rec = apply_transforms(model, [list(c) for c in calib], relu6="clamp",
                              **{t: True for t in TRANSFORMS})
    for t in rec["applied"]:  # ablate only what applies to this model
        variants[f"-{t}"] = {**variants["all"], t: False}
    if rec.get("clamped_relu6"):
        variants["relu6_skip"] = {**variants["all"], "equalize_relu6": "skip"}
    records: dict[str, dict] = {}
    for rt in runtimes:
        for tag in variants:
            t1 = time.perf_counter()
            key = f"{tag}/{rt}"
            d = tmp / f"{name}-tf-{tag}-{rt}"
            try:
                bundle = compress(model, x, targets=[_ungated(INT8[rt])], out_dir=d, **kw,
                                  quantization={**ABLATION_BASE, **variants[tag]})
                man = json.loads((d / "manifest.json").read_text())
                q = man["targets"][INT8[rt]]["quantization"]
                sess = bundle.load(INT8[rt], threads=threads)
                out["builds"][key] = {**task_fidelity(sess, task, ref),
                                      "size_bytes": _size(d, INT8[rt]),
                                      "float_layers": q.get("float_layers"),
                                      "applied": (q.get("transforms") or {}).get("applied")}
                records.setdefault(tag, q.get("transforms") or {})
            except Exception as exc:
                out["builds"][key] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            log(f"{name} {key}: {time.perf_counter() - t1:.0f} s "
                f"{ {k: v for k, v in out['builds'][key].items() if k != 'float_layers'} }")
    out["transforms"] = {k: {kk: vv for kk, vv in v.items()
                             if kk in ("applied", "skipped", "bn_folded", "equalized_pairs",
                                       "bias_absorbed", "clamped_relu6", "smoothquant_norms")}
                         for k, v in records.items() if k == "all"}
    out["variants"] = list(variants)
    return out


def _db(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) and np.isfinite(x) else str(x)


def _default_variant(m: dict) -> str:
    """The ablation row built as edgekit's defaults build (equalize with ReLU6 pairs skipped,
    bias correction, no SmoothQuant)."""
    v = m.get("variants", [])
    return "relu6_skip" if "relu6_skip" in v else "-smoothquant" if "-smoothquant" in v else "all"


def transforms_summary(models: list[dict]) -> list[str]:
    """edgekit's defaults against no transform and against each runtime's own int8 flow."""
    lines = ["### Summary: edgekit's default transforms (SQNR dB vs PyTorch fp32; drop in points)",
             "", "| model | runtime | default row | SQNR native | SQNR none | SQNR default | "
             "default - none | default - native | drop native | drop default |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        if "error" in m:
            continue
        tag = _default_variant(m)
        for rt in RUNTIMES:
            b = m["builds"]
            fp, nat, none, d = (b.get(f"{k}/{rt}") or {} for k in ("fp32", "native", "none", tag))
            num = [x.get("sqnr_db") if isinstance(x.get("sqnr_db"), (int, float)) else None
                   for x in (nat, none, d)]

            def diff(a, c):
                return "-" if a is None or c is None else f"{a - c:+.2f}"

            def drop(x, fp=fp):
                return ("-" if fp.get("accuracy") is None or x.get("accuracy") is None
                        else f"{fp['accuracy'] - x['accuracy']:.2f}")

            cells = ["-" if x is None else f"{x:.2f}" for x in num]
            lines.append(f"| {m['model']} | {rt} | {tag} | {cells[0]} | {cells[1]} | {cells[2]} "
                         f"| {diff(num[2], num[1])} | {diff(num[2], num[0])} | {drop(nat)} | "
                         f"{drop(d)} |")
    return lines + [""]


def transforms_markdown(models: list[dict]) -> list[str]:
    lines = ["## Float-domain transforms: ablation (every layer int8, no fallback)", "",
             "Fidelity is against PyTorch fp32 on the test split (360 samples): centred cosine "
             "(mean per sample), top-1 agreement, SQNR (dB). `all` = equalize + bias_correction "
             "+ smoothquant (where each applies; equalization through ReLU6 with per-channel "
             "clamps), `-x` = all but x, `none` = edgekit's PTQ without transforms, "
             "`relu6_skip` = all with equalization not crossing ReLU6 (equalize_relu6 = "
             "\"skip\", the default). "
             "OpenVINO int8 is NNCF in every row (native = nncf.quantize defaults).", ""]
    lines += transforms_summary(models)
    for m in models:
        if "error" in m:
            lines += [f"### {m['model']}", "", f"FAILED: {m['error']}", ""]
            continue
        lines += [f"### {m['model']} (PyTorch fp32 {m['fp32_pytorch']:.2f}, {m['epochs']} "
                  "epochs)", ""]
        tr = (m.get("transforms") or {}).get("all") or {}
        if tr:
            lines.append(f"Applied: {tr.get('applied')}; BN folded: "
                         f"{len(tr.get('bn_folded') or [])}; pairs equalized: "
                         f"{len(tr.get('equalized_pairs') or [])}; bias absorbed: "
                         f"{len(tr.get('bias_absorbed') or [])}; ReLU6 clamped: "
                         f"{len(tr.get('clamped_relu6') or [])}; SmoothQuant norms: "
                         f"{tr.get('smoothquant_norms') or []}; skipped: {tr.get('skipped') or {}}")
            lines.append("")
        lines += ["| runtime | build | accuracy | drop | centred cos | top-1 agree | SQNR dB | "
                  "size kB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for rt in RUNTIMES:
            fp = m["builds"].get(f"fp32/{rt}") or {}
            for tag in ("fp32", "native", *m.get("variants", [])):
                b = m["builds"].get(f"{tag}/{rt}")
                if b is None:
                    continue
                if "error" in b:
                    err = " ".join(b["error"].split()).replace("|", "/")[:120]
                    lines.append(f"| {rt} | {tag} | failed: {err} | | | | | |")
                    continue
                drop = (None if fp.get("accuracy") is None
                        else round(fp["accuracy"] - b["accuracy"], 2))
                ta = "-" if b.get("top1_agreement") is None else f"{b['top1_agreement']:.4f}"
                lines.append(
                    f"| {rt} | {tag} | {b['accuracy']:.2f} | {'-' if drop is None else drop} | "
                    f"{b['centred_cosine']:.5f} | {ta} | {_db(b['sqnr_db'])} | "
                    f"{(b.get('size_bytes') or 0) / 1024:.1f} |")
        lines.append("")
    return lines


def ratios(rows: dict) -> dict:
    v = rows["variants"]
    out = {}
    for rt in RUNTIMES:
        fp = v.get(f"fp32/{rt}", {})
        r = {}
        for tag in VARIANTS:
            q = v.get(f"{tag}/{rt}")
            if not q or q.get("median_ms") is None:
                continue
            r[tag] = {
                "acc_drop": None if fp.get("accuracy") is None or q.get("accuracy") is None
                else round(fp["accuracy"] - q["accuracy"], 3),
                "speedup_vs_fp32": None if not fp.get("median_ms") else
                round(fp["median_ms"] / q["median_ms"], 3),
                "size_ratio_vs_fp32": None if not fp.get("size_bytes") else
                round(q["size_bytes"] / fp["size_bytes"], 3),
            }
        nat = v.get(f"native/{rt}")
        for tag in ("ptq", "qat"):
            q = v.get(f"{tag}/{rt}")
            if q and nat and q.get("median_ms") and nat.get("median_ms"):
                r[f"{tag}_vs_native"] = {
                    "accuracy_points": None if q["accuracy"] is None or nat["accuracy"] is None
                    else round(q["accuracy"] - nat["accuracy"], 3),
                    "latency_ratio": round(q["median_ms"] / nat["median_ms"], 3),
                    "speed_ratio": round(nat["median_ms"] / q["median_ms"], 3),
                }
        out[rt] = r
    return out


def to_markdown(report: dict) -> str:
    lines = ["# int8 quantization: edgekit PTQ / QAT vs each runtime's default flow", "",
             f"Machine: {report['machine']}; threads per runtime: {report['threads']}; "
             f"{report['runs']} timed calls per artifact, interleaved; batch 1; "
             "accuracy = task metric on the test split (360 samples, 1 sample = 0.28 points).",
             "TFLite int8 latency is the interpreter with int8 feeds (the float-I/O wrapper "
             "converts in Python). OpenVINO runs with INFERENCE_PRECISION_HINT=f32 everywhere "
             "(its default would be "
             "bf16). Sizes: weight-bearing files (.onnx, .bin, .tflite).",
             *([f"Note: {report['note']}."] if report.get("note") else []), ""]
    for rows in report["models"]:
        if "error" in rows:
            lines += [f"## {rows['model']}", "", f"FAILED: {rows['error']}", ""]
            continue
        lines += [f"## {rows['model']} (PyTorch fp32 {rows['fp32_pytorch']:.2f}, "
                  f"{rows['epochs']} epochs)", "",
                  "| runtime | variant | accuracy | size kB | median ms | speedup vs fp32 | "
                  "executed | note |", "|---|---|---:|---:|---:|---:|---|---|"]
        rat = rows["ratios"]
        for rt in RUNTIMES:
            for tag in ("fp32", *VARIANTS):
                v = rows["variants"].get(f"{tag}/{rt}")
                if v is None:
                    continue
                sp = rat.get(rt, {}).get(tag, {}).get("speedup_vs_fp32")
                note = v.get("error") or v.get("eval_error") or v.get("run_error") or ""
                note = " ".join(note.split()).replace("|", "/")
                if v.get("float_layers"):
                    note += f" float: {v['float_layers']}"
                if v.get("openvino_source"):
                    note += f" source: {v['openvino_source']}"
                if v.get("latency_variant") not in (None, "as configured"):
                    note += f" latency check kept: {v['latency_variant']}"
                if v.get("dynamic_range_nodes"):
                    note += f" dynamic-range: {v['dynamic_range_nodes']}"
                if v.get("float_compute_layers"):
                    note += f" {v['float_compute_layers']} compute op(s) float"
                acc = "-" if v.get("accuracy") is None else f"{v['accuracy']:.2f}"
                size = "-" if v.get("size_bytes") is None else f"{v['size_bytes'] / 1024:.1f}"
                ms = "-" if v.get("median_ms") is None else f"{v['median_ms']:.4f}"
                sps = "-" if sp is None else f"{sp:.2f}x"
                lines.append(f"| {rt} | {tag} | {acc} | {size} | {ms} | {sps} | "
                             f"{v.get('executed_precision') or '-'} | {note.strip()[:160]} |")
        lines += ["", "edgekit / native (accuracy in points, speed = native ms / edgekit ms):", ""]
        for rt in RUNTIMES:
            for tag in ("ptq", "qat"):
                r = rat.get(rt, {}).get(f"{tag}_vs_native")
                if r:
                    lines.append(f"- {rt} {tag}: accuracy {r['accuracy_points']:+.2f} points, "
                                 f"speed {r['speed_ratio']:.2f}x native")
        lines.append("")
    lines += ["## Against the bar", "",
              "Aim: PTQ within 1.0 point and QAT within 0.5 of fp32 on cnn, mobilenet_v2 and "
              "ds_cnn; never below the runtime's own default flow on accuracy; int8 speed-up over "
              "fp32 reported everywhere, slower included.", ""]
    lines += [f"- {m}" for m in against_the_bar(report)] or ["- met everywhere."]
    if report.get("transforms_ablation"):
        ab = report["transforms_ablation"]
        lines += ["", f"Ablation run: threads {ab['threads']}, calibration {CALIB} training "
                  "samples (the same for every build and the native flows).", ""]
        lines += transforms_markdown(ab["models"])
    return "\n".join(lines) + "\n"


BAR_MODELS, PTQ_BAR, QAT_BAR = ("cnn", "mobilenet_v2", "ds_cnn"), 1.0, 0.5


def against_the_bar(report: dict) -> list[str]:
    """Each place a measured number misses the aim, in words."""
    out = []
    for rows in report["models"]:
        name = rows["model"]
        if "error" in rows:
            out.append(f"{name}: not measured ({rows['error'][:120]})")
            continue
        for rt in RUNTIMES:
            rat, v = rows["ratios"].get(rt, {}), rows["variants"]
            for tag, bar in (("ptq", PTQ_BAR), ("qat", QAT_BAR)):
                r = rat.get(tag)
                if r is None:
                    if name in BAR_MODELS:
                        out.append(f"{name} {tag} on {rt}: no artifact "
                                   f"({(v.get(f'{tag}/{rt}') or {}).get('error', '?')[:120]})")
                    continue
                if name in BAR_MODELS and r["acc_drop"] is not None and r["acc_drop"] > bar:
                    out.append(f"{name} {tag} on {rt}: drop {r['acc_drop']:.2f} points "
                               f"(aim: at most {bar})")
                nat = rat.get(f"{tag}_vs_native")
                if nat and nat["accuracy_points"] is not None and nat["accuracy_points"] < 0:
                    out.append(f"{name} {tag} on {rt}: {-nat['accuracy_points']:.2f} points below "
                               "the native default flow")
                if r["speedup_vs_fp32"] is not None and r["speedup_vs_fp32"] < 1.0:
                    out.append(f"{name} {tag} on {rt}: int8 is slower than fp32 "
                               f"({r['speedup_vs_fp32']:.2f}x)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,mobilenet_v2,ds_cnn,lstm,transformer")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="fraction of each zoo model's default training epochs")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="only merge the models of earlier runs' quantization.json files (split "
                    "runs of one benchmark, each model measured side by side in its own run) "
                    "into --out; later files win")
    ap.add_argument("--transforms", action="store_true",
                    help="run only the float-domain transform ablation on --models and merge it "
                    "into --out's quantization.json (other results kept)")
    args = ap.parse_args(argv)
    if args.transforms:
        return main_transforms(args)
    if args.combine:
        runs = [json.loads(Path(f).read_text()) for f in args.combine]
        by_model = {m["model"]: m for run in runs for m in run["models"]}
        report = {**runs[0], "models": list(by_model.values()),
                  "note": "models measured in separate runs of this script on the same machine"}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "quantization.md").write_text(to_markdown(report))
        return 0
    torch.set_num_threads(2)
    report = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "threads": args.threads, "runs": args.runs, "calibration_samples": CALIB,
              "epochs_scale": args.epochs_scale, "qat_epochs": args.qat_epochs, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            try:
                rows = run_model(name, args.runs, args.threads, args.epochs_scale,
                                 args.qat_epochs, Path(tmp))
                rows["ratios"] = ratios(rows)
            except Exception as exc:
                traceback.print_exc()
                rows = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:600]}
            rows["seconds"] = round(time.perf_counter() - t0, 1)
            report["models"].append(rows)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
            (out / "quantization.md").write_text(to_markdown(report))
            log(f"{name}: done in {rows['seconds']} s")
    return 0


def main_transforms(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quantization.json"
    report = json.loads(path.read_text()) if path.is_file() else {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads, "runs": args.runs, "models": []}
    ab = report.get("transforms_ablation") or {"threads": args.threads, "models": []}
    ab["threads"] = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            try:
                rows = run_transforms(name, args.threads, args.epochs_scale, Path(tmp))
            except Exception as exc:
                traceback.print_exc()
                rows = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:600]}
            rows["seconds"] = round(time.perf_counter() - t0, 1)
            ab["models"] = [m for m in ab["models"] if m["model"] != name] + [rows]
            report["transforms_ablation"] = ab
            path.write_text(json.dumps(report, indent=2) + "\n")
            (out / "quantization.md").write_text(to_markdown(report))
            log(f"{name}: ablation done in {rows['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
