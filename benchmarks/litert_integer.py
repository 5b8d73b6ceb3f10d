"""LiteRT int8 integer end to end: edgekit's graph rewrites against LiteRT's default flow.

litert-torch's PT2E quantizer finds adds, concatenations and pools by a source that
``torch.export``'s default (non-strict) tracing does not record, and TFLite has no
HARD_SIGMOID and XNNPACK no int8 HARD_SWISH: the default flow's "int8" files run residual
adds, squeeze-excitation gates and some Hardswishes on float data, and split XNNPACK's graph
where an int8 HARD_SWISH runs on TFLite's own kernel. edgekit rewrites the exported graph
(``edgekit/backends/pt2e_rewrites.py``). Per model, side by side in one run on this machine:

- ``default``: litert-torch's PT2E flow (``benchmarks/native.py``);
- ``edgekit, no rewrites``: edgekit's build (every layer int8, no fallback) with
  ``integer_ops = false`` (the build before the rewrites);
- ``edgekit``: the same build with its defaults (``integer_ops = true``).

Each: ops on float data and XNNPACK partitions read from the file, SQNR against PyTorch fp32
and accuracy on the held-out inputs, and the median of interleaved one-thread calls (batch 1,
the first held-out input). Writes benchmarks/results/litert_integer.{json,md}.

    python -m benchmarks.litert_integer [--models mobilenet_v3_glyphs,...] [--runs 200]
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
TARGET = "arm64-tflite-int8"
FLOWS = ("default", "edgekit, no rewrites", "edgekit")


def file_ops(path: Path) -> dict[str, Any]:
    """Ops on float data (other than the I/O QUANTIZE / DEQUANTIZE), per op type, and the
    number of XNNPACK partitions, read from a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.backends.tflite_int8 import tflite_precision_summary

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    summary = tflite_precision_summary(interp)
    return {"float_ops": summary["float_ops"],
            "xnnpack_partitions": sum(1 for o in interp._get_ops_details()
                                      if o["op_name"] == "DELEGATE"),
            "layer_precisions": dict(Counter(str(r["precision"]) for r in summary["layers"]))}


def run_model(name: str, tmp: Path, runs: int) -> dict[str, Any]:
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
                                                    s["calib"], tmp)["tflite"]()
    row["flows"]["default"] = {
        **file_ops(next((tmp / "native-tfl").rglob("*.tflite"))),
        "seconds": round(time.perf_counter() - t0, 1)}
    for flow in FLOWS[1:]:
        t0 = time.perf_counter()
        out = tmp / flow.replace(", ", "-").replace(" ", "-")
        bundle = compress(model, s["x"], targets=[TARGET], out_dir=out, name="m",
                          input_names=s["names"], output_names=s["outs"],
                          calibration=s["calib"], progress=False,
                          quantization={"fallback": False,
                                        "integer_ops": flow == "edgekit"})
        sessions[flow] = bundle.load(TARGET, threads=1)
        row["flows"][flow] = {**file_ops(next(out.rglob("*.tflite"))),
                              "seconds": round(time.perf_counter() - t0, 1)}
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


def markdown(res: dict[str, Any]) -> list[str]:
    lines = ["# LiteRT int8 integer end to end", "",
             f"`python -m benchmarks.litert_integer` on {res['machine']}, 1 thread, batch 1, "
             f"measured {res['measured']}; latency: median of {res['runs']} interleaved calls "
             "of the three files in one process. `default` = litert-torch's PT2E flow; "
             "`edgekit, no rewrites` = edgekit's build with `integer_ops = false`; "
             "`edgekit` = edgekit's build with its defaults. Every compute layer "
             "int8 in all three (no fallback); float ops = the other ops computing on float data "
             "(DEQUANTIZE -> op -> QUANTIZE), read from each file.", "",
             "| model | flow | float ops | XNNPACK partitions | SQNR dB | accuracy % | "
             "median ms | vs default |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in res["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:150]} | | | | | | |")
            continue
        for flow in FLOWS:
            c = r["flows"][flow]
            ops = ", ".join(f"{k} {v}" for k, v in c["float_ops"].items()) or "none"
            lines.append(f"| {r['model']} | {flow} | {ops} | {c['xnnpack_partitions']} | "
                         f"{c['sqnr_db']} | {c.get('accuracy', '-')} | {c['median_ms']} | "
                         f"{c['vs_default']}x |")
    lines += ["", "Settings:", ""]
    lines += [f"- {r['model']}: {r['setting']}" for r in res["models"] if "error" not in r]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--runs", type=int, default=200, help="timed rounds (default 200)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                rows.append(run_model(name, Path(tmp), args.runs))
            except Exception as exc:  # noqa: BLE001 - a failed model is a result
                rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
    res = {"machine": cpu_name(), "measured": time.strftime("%Y-%m-%d %H:%M"),
           "runs": args.runs, "threads": 1, "models": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "litert_integer.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "litert_integer.md").write_text("\n".join(markdown(res)))
    print("\n".join(markdown(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
