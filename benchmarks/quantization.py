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

import torch

from edgekit.backends import Artifact, get_backend
from edgekit.measure.scoring import evaluate_session
from edgekit.measure.timing import time_interleaved
from edgekit.models import get_spec
from edgekit.pipeline import compress
from edgekit.quantize.qat import qat_finetune
from edgekit.train import evaluate

import native
from common import FP32, INT8, RUNTIMES, trained

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
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
