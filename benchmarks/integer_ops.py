"""int8 integer end to end: edgekit's graph rewrites (``integer_ops``) against each runtime's
default flow.

* LiteRT: litert-torch's PT2E quantizer finds adds, concatenations and pools by a source that
  ``torch.export``'s default (non-strict) tracing does not record, and TFLite has no
  HARD_SIGMOID and XNNPACK no int8 HARD_SWISH: the default flow's "int8" files run residual
  adds, squeeze-excitation gates and some Hardswishes on float data, and split XNNPACK's graph
  where an int8 HARD_SWISH runs on TFLite's own kernel (``edgekit/backends/pt2e_rewrites.py``).
* ONNX Runtime: its QDQ quantizer has no int8 HardSigmoid, HardSwish or ReduceMean, so each
  squeeze-excitation gate, each hardswish and each spatial mean runs on float data between a
  DequantizeLinear and a QuantizeLinear; OpenVINO, reading that QDQ file, runs the
  HardSigmoids on a reference kernel between layout reorders
  (``edgekit/backends/onnx_rewrites.py``).

Per model, side by side in one run on this machine:

- ``default``: the runtime's own default int8 flow (``benchmarks/native.py``);
- ``edgekit, no rewrites``: edgekit's build (every layer int8, no fallback) with
  ``integer_ops = false`` (the build before the rewrites);
- ``edgekit``: the same build with its defaults (``integer_ops = true``).

Each: the ops the runtime runs on float data (``float_ops``, read from the file or from what
the runtime executes: ``edgekit/backends/float_ops.py``) and, for LiteRT, XNNPACK partitions;
SQNR against PyTorch fp32 and accuracy on the held-out inputs; the median of interleaved
one-thread calls (batch 1, the first held-out input). OpenVINO builds keep the source their
own choice picked (``openvino_source = "auto"``), recorded as ``source``. Writes
benchmarks/results/<litert|onnxruntime|openvino>_integer.{json,md}.

    python -m benchmarks.integer_ops --runtime tflite [--models mobilenet_v3_glyphs,...]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import cpu_name, log

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = "mobilenet_v2_glyphs,mobilenet_v3_glyphs,mobilenet_v3_large_224+bn"
TARGETS = {"tflite": "arm64-tflite-int8", "onnxruntime": "x86-onnxruntime-int8",
           "openvino": "x86-openvino-int8"}
#: results file per runtime
NAMES = {"tflite": "litert_integer", "onnxruntime": "onnxruntime_integer",
         "openvino": "openvino_integer"}
FLOWS = ("default", "edgekit, no rewrites", "edgekit")


def file_ops(runtime: str, folder: Path) -> dict[str, Any]:
    """Ops on float data per op type as ``runtime`` runs the int8 file in ``folder``, the
    layers per precision, and for LiteRT the number of XNNPACK partitions."""
    from benchmarks.native import precision_summary

    summary = precision_summary(runtime, folder)
    out = {"float_ops": summary["float_ops"],
           "layer_precisions": dict(Counter(str(r["precision"]) for r in summary["layers"]))}
    if runtime == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(next(folder.rglob("*.tflite"))), num_threads=1)
        interp.allocate_tensors()
        out["xnnpack_partitions"] = sum(1 for o in interp._get_ops_details()
                                        if o["op_name"] == "DELEGATE")
    return out


def run_model(name: str, tmp: Path, runs: int, runtime: str = "tflite") -> dict[str, Any]:
    from benchmarks import native
    from benchmarks.mobilenet_fidelity import _score, _setup
    from edgekit.measure.timing import time_interleaved
    from edgekit.pipeline import compress

    s = _setup(name)
    model = s["model"].eval()
    with torch.no_grad():
        ref = np.concatenate([np.asarray(model(*(torch.from_numpy(a) for a in f)).numpy(),
                                         np.float64).reshape(1, -1) for f in s["test"]])
    row: dict[str, Any] = {"model": name, "setting": s["setting"], "flows": {}}
    sessions: dict[str, Any] = {}
    t0 = time.perf_counter()
    sessions["default"] = native.default_int8_flows(model, s["x"], s["names"], s["outs"],
                                                    s["calib"], tmp)[runtime]()
    row["flows"]["default"] = {**file_ops(runtime, tmp / native.DEFAULT_DIRS[runtime]),
                               "seconds": round(time.perf_counter() - t0, 1)}
    target = TARGETS[runtime]
    for flow in FLOWS[1:]:
        t0 = time.perf_counter()
        out = tmp / flow.replace(", ", "-").replace(" ", "-")
        bundle = compress(model, s["x"], targets=[target], out_dir=out, name="m",
                          input_names=s["names"], output_names=s["outs"],
                          calibration=s["calib"], progress=False,
                          quantization={"fallback": False,
                                        "integer_ops": flow == "edgekit"})
        sessions[flow] = bundle.load(target, threads=1)
        q = bundle.manifest.targets[target].quantization or {}
        row["flows"][flow] = {**file_ops(runtime, out / target),
                              "seconds": round(time.perf_counter() - t0, 1)}
        if runtime == "openvino":
            row["flows"][flow]["source"] = (q.get("config") or {}).get("openvino_source")
    for flow, sess in sessions.items():
        row["flows"][flow].update(_score(sess, s, ref))
    stats = time_interleaved(sessions, {k: list(s["test"][0]) for k in sessions}, warmup=20,
                             runs=runs)
    for flow in sessions:
        row["flows"][flow]["median_ms"] = round(stats[flow].median_ms, 4)
    base = stats["default"].median_ms
    for flow in sessions:
        row["flows"][flow]["vs_default"] = round(stats[flow].median_ms / base, 3)
    log(name, json.dumps(row["flows"]))
    return row


_TITLES = {"tflite": ("LiteRT", "litert-torch's PT2E flow"),
           "onnxruntime": ("ONNX Runtime", "onnxruntime's quantize_static (QDQ, per channel)"),
           "openvino": ("OpenVINO", "nncf.quantize defaults")}


def markdown(res: dict[str, Any]) -> list[str]:
    runtime = res.get("runtime", "tflite")
    title, default = _TITLES[runtime]
    tfl, ov = runtime == "tflite", runtime == "openvino"
    lines = [f"# {title} int8 integer end to end", "",
             f"`python -m benchmarks.integer_ops --runtime {runtime}` on {res['machine']}, "
             f"1 thread, batch 1, measured {res['measured']}; latency: median of {res['runs']} "
             f"interleaved calls of the three files in one process. `default` = {default}; "
             "`edgekit, no rewrites` = edgekit's build with `integer_ops = false`; "
             "`edgekit` = edgekit's build with its defaults. Every compute layer "
             "int8 in edgekit's builds (no fallback; `layers` shows the default flow's); float "
             "ops = the other ops computing on float data (between a dequantize and a "
             "quantize), " + ("read from each file." if tfl else
                              "as the runtime executes them (`edgekit/backends/float_ops.py`).")
             + (" `source`: the OpenVINO model edgekit's build kept (`nncf` or the ONNX Runtime "
                "QDQ model, `qdq`), by its own fidelity and speed comparison." if ov else ""),
             ""]
    extra = " XNNPACK partitions |" if tfl else " source |" if ov else ""
    lines += [f"| model | flow | layers | float ops |{extra} SQNR dB | accuracy % | median ms "
              "| vs default |",
              "|---|---|---|---|" + ("---:|" if tfl else "---|" if ov else "")
              + "---:|---:|---:|---:|"]
    for r in res["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:150]} | | | | | | |")
            continue
        for flow in FLOWS:
            c = r["flows"][flow]
            ops = ", ".join(f"{k} {v}" for k, v in (c["float_ops"] or {}).items()) or "none"
            layers = ", ".join(f"{k} {v}" for k, v in sorted(c["layer_precisions"].items()))
            cell = f" {c['xnnpack_partitions']} |" if tfl else \
                f" {c.get('source') or '-'} |" if ov else ""
            lines.append(f"| {r['model']} | {flow} | {layers} | {ops} |{cell} "
                         f"{c['sqnr_db']} | {c.get('accuracy', '-')} | {c['median_ms']} | "
                         f"{c['vs_default']}x |")
    lines += ["", "Settings:", ""]
    lines += [f"- {r['model']}: {r['setting']}" for r in res["models"] if "error" not in r]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", choices=sorted(TARGETS), default="tflite")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--runs", type=int, default=200, help="timed rounds (default 200)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                rows.append(run_model(name, Path(tmp), args.runs, args.runtime))
            except Exception as exc:  # noqa: BLE001 - a failed model is a result
                rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
    res = {"machine": cpu_name(), "measured": time.strftime("%Y-%m-%d %H:%M"),
           "runtime": args.runtime, "runs": args.runs, "threads": 1, "models": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = NAMES[args.runtime]
    (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{name}.md").write_text("\n".join(markdown(res)))
    print("\n".join(markdown(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
