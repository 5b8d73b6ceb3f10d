"""OpenVINO int8: which source edgekit keeps, and what it gives against OpenVINO's default flow.

edgekit builds an OpenVINO int8 model two ways (``nncf.quantize`` on the IR, and its ONNX
Runtime QDQ model read by OpenVINO), gates both and keeps one (``openvino_source="auto"``,
the default). Per zoo model, side by side in one run on this machine:

- ``native``: OpenVINO's own default flow (``nncf.quantize`` defaults on the converted model);
- ``nncf`` / ``qdq``: edgekit with that source forced (latency check off: it would try the
  other source);
- ``auto``: edgekit's default, with the source it kept, the held-out SQNR and the medians
  its choice compared (from the manifest), and why.

Every build: no task (the held-out fidelity gate), every layer int8 (no fallback), 300
calibration samples from the validation split (75 of them held out by the gate); ``auto``
with the latency check on at 2 threads, as a default build runs. Fidelity and accuracy on the test
split against PyTorch fp32. Writes benchmarks/results/openvino_source.{json,md}.

    python -m benchmarks.openvino_source [--models cnn,ds_cnn,resnet8,mobilenet_v2,transformer]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import cpu_name, log, run_models, task_fidelity, trained

RESULTS = Path(__file__).resolve().parent / "results"
CALIB = 300
MODELS = "cnn,ds_cnn,resnet8,mobilenet_v2,transformer"
TARGET = "x86-openvino-int8"


def run_model(name: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import native
    from benchmarks.deploy import int8_record
    from edgekit.backends import get_backend
    from edgekit.models import get_spec
    from edgekit.pipeline import compress

    spec = get_spec(name)
    task = spec.task()
    model, meta = trained(name)
    with torch.no_grad():
        ref = model(*task.test.inputs)
    ref = np.asarray((ref if isinstance(ref, torch.Tensor) else ref[0]).numpy(), np.float64)
    calib = native.calibration_batches(task, CALIB)
    x = spec.example_inputs(1)
    names, outs = list(spec.input_names), list(spec.output_names)
    row: dict[str, Any] = {"model": name, "epochs": meta.get("epochs"),
                           "fp32_accuracy": round(float(task.score(
                               [ref], task.test.targets.numpy(),
                               [t.numpy() for t in task.test.inputs])), 3),
                           "builds": {}}
    fp32 = get_backend("onnxruntime").export(model, x, tmp / "fp32", input_names=names,
                                             output_names=outs, options={})
    t0 = time.perf_counter()
    try:
        sess, _ = native.openvino_int8(model, x, tmp / "native", calib, fp32.inputs,
                                       fp32.outputs, 1)
        row["builds"]["native"] = {**task_fidelity(sess, task, ref),
                                   "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as exc:  # noqa: BLE001 - a failed default flow is a result
        row["builds"]["native"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    for source in ("nncf", "qdq", "auto"):
        t0 = time.perf_counter()
        try:
            bundle = compress(model, x, targets=[TARGET], out_dir=tmp / source, name=name,
                              input_names=names, output_names=outs, calibration=calib,
                              quantization={"openvino_source": source, "fallback": False,
                                            # forced: the latency check would try the other
                                            "latency_check": source == "auto"},
                              verify_samples=8, progress=False)
            q = bundle.target(TARGET).quantization or {}
            cell = {**task_fidelity(bundle.load(TARGET, threads=1), task, ref),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "float_layers": int8_record(q)["float_layers"],
                    "heldout_sqnr_db": round(min(o["sqnr_db"] for o in
                                                 q["heldout_fidelity"]["outputs"]), 2)}
            if choice := q.get("source_choice"):
                cell["choice"] = choice
        except Exception as exc:  # noqa: BLE001 - a failed build is a result, with its reason
            cell = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        row["builds"][source] = cell
        log(name, f"{source}: { {k: v for k, v in cell.items() if k != 'choice'} }")
    return row


def _cell(c: dict[str, Any], key: str) -> str:
    if "error" in c:
        return "failed"
    v = c.get(key)
    return "-" if v is None else f"{v}"


def markdown(res: dict[str, Any]) -> list[str]:
    lines = [
        "# OpenVINO int8: the source edgekit keeps, beside OpenVINO's default flow", "",
        f"Machine: {res['machine']}; {res['calibration_samples']} calibration samples (75 held "
        "out by the gate); no task; every layer int8. Test split against PyTorch fp32: "
        "SQNR dB / accuracy %. `auto` is edgekit's default; its choice compares held-out SQNR "
        "and medians timed against each other at 2 threads (from the manifest). Generated by "
        "`python -m benchmarks.openvino_source`.", "",
        "| model | fp32 acc | native SQNR / acc | nncf SQNR / acc | qdq SQNR / acc | auto "
        "kept | auto SQNR / acc | held-out SQNR nncf / qdq | median ms nncf / qdq | auto - "
        "native dB |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in res["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:80]} |")
            continue
        b = r["builds"]
        sa = {k: f"{_cell(b[k], 'sqnr_db')} / {_cell(b[k], 'accuracy')}"
              for k in ("native", "nncf", "qdq", "auto")}
        ch = b["auto"].get("choice") or {}
        src = ch.get("sources", {})
        held = " / ".join(str(src.get(k, {}).get("heldout_sqnr_db", "-")) for k in ("nncf", "qdq"))
        ms = " / ".join(str(src.get(k, {}).get("median_ms", "-")) for k in ("nncf", "qdq"))
        gain = "-"
        if "error" not in b["auto"] and "error" not in b["native"]:
            gain = f"{b['auto']['sqnr_db'] - b['native']['sqnr_db']:+.2f}"
        lines.append(f"| {r['model']} | {r['fp32_accuracy']} | {sa['native']} | {sa['nncf']} | "
                     f"{sa['qdq']} | {ch.get('kept', '-')} | {sa['auto']} | {held} | {ms} | "
                     f"{gain} |")
    lines += ["", "Why each source was kept:", ""]
    lines += [f"- {r['model']}: {(r['builds']['auto'].get('choice') or {}).get('why', '-')}"
              for r in res["models"] if "builds" in r]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res: dict[str, Any] = {"machine": f"{cpu_name()}", "calibration_samples": CALIB,
                           "measured": time.strftime("%Y-%m-%d %H:%M"), "models": []}
    run_models(args.models.split(","), res, run_model, Path(args.out), "openvino_source", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
