"""MobileNet-class int8 fidelity: edgekit against each runtime's default int8 flow.

Per model and runtime, side by side in one run on this machine: the runtime's own default
int8 flow (``benchmarks/native.py``) and edgekit's int8 build (``edgekit.compress`` with its
defaults, every layer int8: no fallback), both calibrated on the same inputs and scored
against PyTorch fp32 on the same held-out inputs (SQNR over every output element, centred
cosine per sample). Models:

- ``mobilenet_v2`` (zoo): trained on digits; ``mobilenet_v2_glyphs`` and
  ``mobilenet_v3_glyphs`` (the realistic-scale zoo: torchvision's MobileNetV2 and
  MobileNetV3-Large trained on glyphs): 300 calibration samples from the validation split,
  the whole test split held out; accuracy too.
- ``mobilenet_v2_224`` and ``mobilenet_v3_large_224`` as built (random weights, default
  BatchNorm statistics: logits of ~1e-9 whose input-dependent part is what a user's smoke
  test of an untrained checkpoint sees) and ``...+bn`` (random weights with BatchNorm
  statistics estimated on the calibration inputs, so each layer passes on normalised
  activations as a trained network does); 16 uniform random calibration inputs, 16 held out.

Aim (the int8 issue): SQNR on MobileNet-class models >= the default flow's + 6 dB.
On LiteRT, edgekit's 16x8 build (``activations_16bit = "all"``: int16 activations, int8
weights) is scored too, timed against edgekit's 8-bit build in the same run (one thread,
interleaved): the accuracy it buys and what it costs.
Writes benchmarks/results/mobilenet_fidelity.{json,md}.

    python -m benchmarks.mobilenet_fidelity [--models mobilenet_v2,...] [--runtimes tflite]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import cpu_name, log, run_models, settle_batchnorm, trained

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenet_v2,mobilenet_v2_glyphs,mobilenet_v3_glyphs,mobilenet_v2_224,"
          "mobilenet_v2_224+bn,mobilenet_v3_large_224,mobilenet_v3_large_224+bn")
#: Zoo models scored trained (weights cached by ``benchmarks.common.trained``): their data.
TRAINED = {"mobilenet_v2": "digits",
           "mobilenet_v2_glyphs": "glyphs (64x64, fonts unseen in training)",
           "mobilenet_v3_glyphs": "glyphs (64x64, fonts unseen in training)"}
TARGETS = {"onnxruntime": "x86-onnxruntime-int8", "openvino": "x86-openvino-int8",
           "tflite": "arm64-tflite-int8"}
AIM_DB = 6.0
RANDOM_INPUTS = 16
WIDE_RUNS = 30


def _setup(name: str) -> dict[str, Any]:
    """The model, its example inputs and names, calibration feeds, held-out feeds, and the
    task (for accuracy) where it has one."""
    from benchmarks import native
    from edgekit.models import get_spec
    from edgekit.models.deploy import build_deploy, deploy_inputs

    if name in TRAINED:
        spec = get_spec(name)
        task = spec.task()
        model, meta = trained(name)
        test = [[t[i:i + 1].numpy() for t in task.test.inputs] for i in range(len(task.test))]
        return {"model": model, "x": spec.example_inputs(1), "names": list(spec.input_names),
                "outs": list(spec.output_names), "task": task, "test": test,
                "calib": native.calibration_batches(task, 300),
                "setting": f"trained {meta.get('epochs')} epochs on {TRAINED[name]}; 300 "
                           f"calibration, {len(test)} test samples"}
    base, settled = name.split("+")[0], name.endswith("+bn")
    x = deploy_inputs(base)
    g = torch.Generator().manual_seed(1)
    feeds = [[torch.rand(x[0].shape, generator=g).numpy()] for _ in range(2 * RANDOM_INPUTS)]
    model = build_deploy(base)
    if settled:
        model = settle_batchnorm(model, feeds[:RANDOM_INPUTS])
    bn = "BatchNorm settled on the calibration inputs" if settled else \
        "default BatchNorm statistics"
    return {"model": model, "x": x, "names": ["input"], "outs": ["output"], "task": None,
            "calib": feeds[:RANDOM_INPUTS], "test": feeds[RANDOM_INPUTS:],
            "setting": f"random weights, {bn}; {RANDOM_INPUTS} uniform calibration, "
                       f"{RANDOM_INPUTS} held-out inputs"}


def _score(sess: Any, s: dict[str, Any], ref: np.ndarray) -> dict[str, Any]:
    from edgekit.measure.metrics import centred_cosine, json_number, sqnr_db, top1_agreement

    out = np.concatenate([np.asarray(sess.run(f)[0], np.float64).reshape(1, -1)
                          for f in s["test"]])
    cell: dict[str, Any] = {
        "sqnr_db": json_number(round(float(sqnr_db(ref, out)), 2)),
        "centred_cosine": round(float(np.nanmean(centred_cosine(ref, out))), 5),
        "top1_agreement": round(float(top1_agreement(ref, out) or 0.0), 4),
        "output_max_abs": float(f"{float(np.abs(out).max()):.3g}")}
    if s["task"] is not None:
        t = s["task"]
        cell["accuracy"] = round(float(t.score([out.astype(np.float32)],
                                               t.test.targets.numpy()[:len(out)],
                                               [a[:len(out)].numpy() for a in t.test.inputs])), 3)
    return cell


def _wide_cell(model: torch.nn.Module, s: dict[str, Any], ref: np.ndarray, tmp: Path,
               eight: Any) -> dict[str, Any]:
    """edgekit's LiteRT 16x8 build, scored like the others and timed against ``eight`` (the
    8-bit build's session), interleaved on the first held-out input."""
    from benchmarks.deploy import int8_record
    from edgekit.measure.timing import time_interleaved
    from edgekit.pipeline import compress

    target = TARGETS["tflite"]
    t0 = time.perf_counter()
    bundle = compress(model, s["x"], targets=[target], out_dir=tmp / "tflite16", name="m",
                      input_names=s["names"], output_names=s["outs"], calibration=s["calib"],
                      quantization={"fallback": False, "activations_16bit": "all"},
                      progress=False)
    sess = bundle.load(target, threads=1)
    cell = {**_score(sess, s, ref), "seconds": round(time.perf_counter() - t0, 1),
            **int8_record(bundle.target(target).quantization)}
    stats = time_interleaved({"int8": eight, "16x8": sess},
                             {"int8": list(s["test"][0]), "16x8": list(s["test"][0])},
                             warmup=5, runs=WIDE_RUNS)
    cell["median_ms"] = round(stats["16x8"].median_ms, 3)
    cell["int8_median_ms"] = round(stats["int8"].median_ms, 3)
    cell["slowdown"] = round(stats["16x8"].median_ms / stats["int8"].median_ms, 2)
    return cell


def run_model(name: str, tmp: Path, runtimes: tuple[str, ...] = tuple(TARGETS)
              ) -> dict[str, Any]:
    from benchmarks import native
    from benchmarks.deploy import int8_record
    from edgekit.pipeline import compress

    s = _setup(name)
    model = s["model"].eval()
    with torch.no_grad():
        ref = np.concatenate([np.asarray(model(*(torch.from_numpy(a) for a in f)).numpy(),
                                         np.float64).reshape(1, -1) for f in s["test"]])
    row: dict[str, Any] = {"model": name, "setting": s["setting"],
                           "fp32_output_max_abs": float(f"{float(np.abs(ref).max()):.3g}"),
                           "runtimes": {}}
    if s["task"] is not None:
        t = s["task"]
        row["fp32_accuracy"] = round(float(t.score([ref.astype(np.float32)],
                                                   t.test.targets.numpy(),
                                                   [a.numpy() for a in t.test.inputs])), 3)
    flows = native.default_int8_flows(model, s["x"], s["names"], s["outs"], s["calib"], tmp)
    for rt, target in TARGETS.items():
        if rt not in runtimes:
            continue
        cells: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            cells["default"] = {**_score(flows[rt](), s, ref),
                                "seconds": round(time.perf_counter() - t0, 1),
                                "layer_precisions": native.default_layer_precisions(rt, tmp)}
        except Exception as exc:  # noqa: BLE001 - a failed default flow is a result
            cells["default"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        t0 = time.perf_counter()
        try:
            bundle = compress(model, s["x"], targets=[target], out_dir=tmp / rt, name="m",
                              input_names=s["names"], output_names=s["outs"],
                              calibration=s["calib"], quantization={"fallback": False},
                              progress=False)
            cells["edgekit"] = {**_score(bundle.load(target, threads=1), s, ref),
                                "seconds": round(time.perf_counter() - t0, 1),
                                **int8_record(bundle.target(target).quantization)}
        except Exception as exc:  # noqa: BLE001 - a failed build is a result, with its reason
            cells["edgekit"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        if rt == "tflite" and "error" not in cells["edgekit"]:
            try:
                cells["edgekit_16x8"] = _wide_cell(model, s, ref, tmp,
                                                   bundle.load(target, threads=1))
            except Exception as exc:  # noqa: BLE001 - a failed build is a result
                cells["edgekit_16x8"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            log(name, f"tflite 16x8: {cells['edgekit_16x8']}")
        row["runtimes"][rt] = cells
        log(name, f"{rt}: default {cells['default']} edgekit "
                  f"{ {k: v for k, v in cells['edgekit'].items() if k != 'source'} }")
    return row


def _precisions(cell: dict[str, Any]) -> str:
    """Compute layers per precision, read from the file (e.g. ``int8 48, fp32 16``)."""
    counts = cell.get("layer_precisions") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _gain(cells: dict[str, Any]) -> float | None:
    d, e = cells.get("default", {}), cells.get("edgekit", {})
    if "sqnr_db" not in e:
        return None
    return float(e["sqnr_db"]) - float(d.get("sqnr_db", 0.0) if "sqnr_db" in d else 0.0)


def markdown(res: dict[str, Any]) -> list[str]:
    lines = ["# MobileNet-class int8: edgekit against each runtime's default flow", "",
             f"`python -m benchmarks.mobilenet_fidelity` on {res['machine']}, 1 thread per "
             "session, measured " + res["measured"] + ". Default = the runtime's own int8 "
             "flow (ONNX Runtime: quant_pre_process + quantize_static(QDQ, per_channel=True); "
             "OpenVINO: nncf.quantize defaults; LiteRT: litert-torch's PT2E quantizer), "
             "edgekit = `compress` with its defaults and no float fallback; same calibration "
             "inputs, scored against PyTorch fp32 on the same held-out inputs. A failed "
             "default flow counts as 0 dB. "
             f"Aim: edgekit SQNR >= default + {AIM_DB:g} dB.", "",
             "| model | runtime | default SQNR dB | edgekit SQNR dB | gain dB | default centred "
             "cos | edgekit centred cos | default layers run | edgekit layers run | source kept "
             "| aim |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---|---|"]
    met = total = 0
    for r in res["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:120]} | | | | | | | | |")
            continue
        for rt, cells in r["runtimes"].items():
            d, e = cells["default"], cells["edgekit"]
            gain = _gain(cells)
            ok = gain is not None and gain >= AIM_DB and not e.get("float_layers")
            met, total = met + ok, total + 1
            lines.append(
                f"| {r['model']} | {rt} | {d.get('sqnr_db', 'failed')} | "
                f"{e.get('sqnr_db', 'failed: ' + e.get('error', '')[:80])} | "
                f"{'-' if gain is None else f'{gain:+.2f}'} | {d.get('centred_cosine', '-')} | "
                f"{e.get('centred_cosine', '-')} | {_precisions(d)} | {_precisions(e)} | "
                f"{(e.get('source') or {}).get('kept', '-')} | "
                f"{'met' if ok else 'missed'} |")
    lines += ["", f"Aim met in {met} of {total} cells."]
    lines += wide_markdown(res)
    lines += ["", "Settings:", ""]
    lines += [f"- {r['model']}: {r.get('setting', '-')}; fp32 output max |y| "
              f"{r.get('fp32_output_max_abs', '-')}"
              + (f"; accuracy fp32 {r['fp32_accuracy']}, default / edgekit int8: " + ", ".join(
                  f"{rt} {c['default'].get('accuracy', '-')} / {c['edgekit'].get('accuracy', '-')}"
                  for rt, c in r["runtimes"].items()) if "fp32_accuracy" in r else "")
              for r in res["models"] if "error" not in r]
    return lines + [""]


def wide_markdown(res: dict[str, Any]) -> list[str]:
    """The LiteRT 16x8 table: SQNR against the default flow and edgekit's 8-bit build, and
    the 16x8 file's latency over the 8-bit one's (same run)."""
    rows = [(r["model"], r["runtimes"]["tflite"]) for r in res["models"]
            if "error" not in r and "edgekit_16x8" in r.get("runtimes", {}).get("tflite", {})]
    if not rows:
        return []
    lines = ["", "## LiteRT 16x8: 16-bit activations, int8 weights", "",
             "edgekit with `activations_16bit = \"all\"` (every layer on int16 data, read "
             "back from the file; convolution biases int64), same inputs; latency: median of "
             f"{WIDE_RUNS} interleaved one-thread calls against edgekit's 8-bit file (XNNPACK "
             "runs the 8-bit file; it has no 16x8 kernels, TFLite's own int16 kernels run "
             "the other).", "",
             "| model | default SQNR dB | edgekit 8-bit dB | edgekit 16x8 dB | 16x8 gain over "
             "default dB | 8-bit ms | 16x8 ms | slowdown | int16 layers (other ops on float "
             "data) | aim (+6 dB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    met = 0
    for name, cells in rows:
        d, e, w = cells["default"], cells["edgekit"], cells["edgekit_16x8"]
        if "error" in w:
            lines.append(f"| {name} | {d.get('sqnr_db', 'failed')} | {e.get('sqnr_db', '-')} "
                         f"| failed: {w['error'][:100]} | | | | | | missed |")
            continue
        gain = float(w["sqnr_db"]) - float(d.get("sqnr_db", 0.0) or 0.0)
        ok = gain >= AIM_DB
        met += ok
        prec = w.get("layer_precisions", {})
        lines.append(f"| {name} | {d.get('sqnr_db', 'failed')} | {e.get('sqnr_db', '-')} | "
                     f"{w['sqnr_db']} | {gain:+.2f} | {w['int8_median_ms']} | "
                     f"{w['median_ms']} | {w['slowdown']}x | "
                     f"{prec.get('int16', 0)} of "
                     f"{sum(v for k, v in prec.items() if k != 'float ops')}"
                     f"{', float ops ' + str(prec['float ops']) if 'float ops' in prec else ''} | "
                     f"{'met' if ok else 'missed'} |")
    return lines + ["", f"16x8 meets the aim in {met} of {len(rows)} LiteRT cells."]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--runtimes", default=",".join(TARGETS),
                    help="comma-separated subset of " + ", ".join(TARGETS))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    runtimes = tuple(r for r in args.runtimes.split(",") if r)
    unknown = sorted(set(runtimes) - set(TARGETS))
    if unknown:
        ap.error(f"unknown runtime(s) {unknown}; known: {', '.join(TARGETS)}")
    torch.set_num_threads(1)
    from edgekit.backends.x86_saturation import u8s8_saturates

    # ONNX Runtime's default int8 flow saturates on x86-64 without VNNI: say which CPU this is
    res: dict[str, Any] = {"machine": f"{cpu_name()} ({u8s8_saturates()[1]})", "aim_db": AIM_DB,
                           "measured": time.strftime("%Y-%m-%d %H:%M"), "models": []}
    run_models(args.models.split(","), res,
               lambda name, tmp: run_model(name, tmp, runtimes), Path(args.out),
               "mobilenet_fidelity", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
