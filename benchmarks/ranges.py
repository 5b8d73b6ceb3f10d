"""Per-tensor activation ranges (``range_method``) and 16-bit activations on ONNX Runtime.

For each model: the trained zoo model with edgekit's default float-domain transforms
(equalization + bias correction), exported once, quantized by ``quantize_static`` (QDQ,
per-channel int8 weights, uint8 activations) with ONNX Runtime's own min-max calibration (the
default flow, ``range_method = "runtime"``) and with each ``range_method``; plus ``auto`` with
16-bit activations (``activations_16bit = 2`` and ``"auto"``). Fidelity against the PyTorch
fp32 model on the test split (SQNR, centred cosine, top-1 agreement), the task accuracy, the
per-tensor choices, and the int8 latency (one thread, interleaved) of the 16-bit variants
against the all-8-bit build.

    python -m benchmarks.ranges                      # writes benchmarks/results/ranges.{json,md}
    python -m benchmarks.ranges --models cnn --calib 32
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import log as _log
from benchmarks.common import trained

MODELS = ("cnn", "ds_cnn", "resnet8", "mobilenet_v2", "transformer", "mobilenet_v2_glyphs",
          "resnet18_glyphs")
VARIANTS: dict[str, dict[str, Any]] = {
    "default (ORT min-max)": {},
    "minmax": {"range_method": "minmax"},
    "percentile": {"range_method": "percentile"},
    "mse": {"range_method": "mse"},
    "entropy": {"range_method": "entropy"},
    "auto": {"range_method": "auto"},
    "auto + 2 x 16-bit": {"range_method": "auto", "activations_16bit": 2},
    "auto + 16-bit auto": {"range_method": "auto", "activations_16bit": "auto"},
}
RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    _log("ranges", msg)


def _fidelity(sess: Any, inputs: list[np.ndarray], ref: np.ndarray,
              task: Any = None) -> dict[str, Any]:
    """Fidelity of ``sess`` against the PyTorch fp32 outputs ``ref`` on ``inputs`` (one
    sample per call), and the task metric when there is a task."""
    from edgekit.measure.metrics import centred_cosine, json_number, sqnr_db, top1_agreement

    outs = np.concatenate([np.asarray(sess.run([a[i:i + 1] for a in inputs])[0])
                           for i in range(len(inputs[0]))])
    acc = None if task is None else round(float(task.score(
        [outs], task.test.targets[:len(outs)].numpy(), inputs)), 3)
    r = ref[:len(outs)]
    agree = top1_agreement(r, outs)
    return {"accuracy": acc,
            "sqnr_db": json_number(round(float(sqnr_db(r, outs)), 2)),
            "centred_cosine": round(float(np.nanmean(centred_cosine(r, outs))), 5),
            "top1_agreement": None if agree is None else round(float(agree), 4)}


def _latency(paths: dict[str, Path], feed: list[np.ndarray], names: list[str],
             runs: int) -> dict[str, float]:
    from edgekit.backends.onnxruntime_int8 import _median_ms

    return _median_ms(paths, names, feed, runs)


def run_model(name: str, calib_n: int, test_n: int, runs: int, tmp: Path,
              variants: list[str] | None = None) -> dict[str, Any]:
    from edgekit.backends import get_backend
    from edgekit.models import get_spec
    from edgekit.quantize import QuantConfig
    from edgekit.quantize.transforms import apply_transforms

    task: Any = None
    if name.startswith("deploy:"):  # a deployment-scale model, random weights, random inputs
        from edgekit.models.deploy import build_deploy, deploy_inputs

        model, meta = build_deploy(name[7:]), {"epochs": None}
        x = deploy_inputs(name[7:])
        g = torch.Generator().manual_seed(1)

        def sample() -> list[np.ndarray]:
            return [torch.rand(t.shape, generator=g).numpy() for t in x]
        calib = [sample() for _ in range(calib_n)]
        tests = [sample() for _ in range(test_n)]
        test_inputs = [np.concatenate([t[i] for t in tests]) for i in range(len(x))]
        names = [f"input{i}" for i in range(len(x))]
        outs = ["output"]
    else:
        spec = get_spec(name)
        task = spec.task()
        model, meta = trained(name)
        calib = [[t[i:i + 1].numpy() for t in task.train.inputs] for i in range(calib_n)]
        test_inputs = [t[:test_n].numpy() for t in task.test.inputs]
        x = spec.example_inputs(1)
        names, outs = list(spec.input_names), list(spec.output_names)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(t) for t in test_inputs))
    ref_np = np.asarray((ref if isinstance(ref, torch.Tensor) else ref[0]).numpy(), np.float64)
    fp32_acc = None if task is None else float(task.score(
        [ref_np], task.test.targets[:test_n].numpy(), test_inputs))
    qmodel, record = apply_transforms(model, calib, equalize=True, relu6="skip",
                                      bias_correction=True, smoothquant=False, alpha=0.5,
                                      keep_float=[])
    be = get_backend("onnxruntime")
    safe = name.replace(":", "_")
    fp32 = be.export(qmodel, x, tmp / f"{safe}-fp32", input_names=names, output_names=outs,
                     options={})
    out: dict[str, Any] = {"model": name, "epochs": meta.get("epochs"),
                           "fp32_accuracy": None if fp32_acc is None else round(fp32_acc, 3),
                           "calibration": calib_n,
                           "test": test_n, "transforms": record.get("applied"), "builds": {}}
    paths: dict[str, Path] = {}
    for tag, changes in VARIANTS.items():
        if variants and tag not in variants:
            continue
        t0 = time.perf_counter()
        try:
            art = be.quantize(qmodel, x, tmp / f"{safe}-{len(out['builds'])}", input_names=names,
                              output_names=outs, options={}, calibration=calib,
                              config=QuantConfig(latency_check=False, **changes), fp32=fp32)
        except Exception as exc:  # noqa: BLE001 - a benchmark row, not a crash
            out["builds"][tag] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            log(f"{name} {tag}: {out['builds'][tag]['error']}")
            continue
        seconds = time.perf_counter() - t0
        paths[tag] = art.path
        sess = be.load(art, threads=1, options={})
        ranges = art.info["quantization"].get("ranges") or {}
        row = {**_fidelity(sess, test_inputs, ref_np, task),
               "quantize_seconds": round(seconds, 2),
               "chosen": ranges.get("chosen"),
               "activations_16bit": ranges.get("activations_16bit"),
               "int16_layers": sum(1 for r in art.info["quantization"]["layers"]
                                   if r["precision"] == "int16")}
        if ranges.get("guard"):
            row["guard"] = ranges["guard"]
        if ranges.get("search"):
            row["search"] = {k: v for k, v in ranges["search"].items() if k != "criterion"}
        if ranges.get("activations_16bit_choice"):
            row["choice_16bit"] = ranges["activations_16bit_choice"]
        out["builds"][tag] = row
        log(f"{name} {tag}: {row['sqnr_db']} dB, acc {row['accuracy']}, {seconds:.1f} s, "
            f"{row['chosen']}")
    timed = {k: p for k, p in paths.items() if k in ("auto", "auto + 2 x 16-bit")}
    if len(timed) == 2 and runs > 0:
        ms = _latency(timed, [a for a in calib[0]], names, runs)
        out["latency_ms"] = ms
        log(f"{name} latency (1 thread): {ms}")
    return out


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# Per-tensor activation ranges and 16-bit activations (ONNX Runtime)", "",
             report["setup"], ""]
    summary = []
    for m in report["models"]:
        acc = (f"PyTorch fp32 accuracy {m['fp32_accuracy']}" if m["fp32_accuracy"] is not None
               else "random weights, uniform random inputs")
        lines += [f"## {m['model']} ({acc}, "
                  f"{m['calibration']} calibration samples, {m['test']} test samples)", "",
                  "| variant | SQNR dB | centred cosine | top-1 agreement | accuracy | "
                  "ranges chosen | auto's held-out check | 16-bit tensors | quantize s |",
                  "|---|---:|---:|---:|---:|---|---|---:|---:|"]
        for tag, r in m["builds"].items():
            if "error" in r:
                lines.append(f"| {tag} | error: {r['error'][:80]} | | | | | | | |")
                continue
            chosen = ", ".join(f"{k} {v}" for k, v in (r.get("chosen") or {}).items()) or "-"
            g = r.get("guard")
            guard = (f"kept {g['kept']} ({g['sqnr_auto_db']} vs {g['sqnr_minmax_db']} dB on "
                     f"{g['batches']} batches)" if g else "-")
            lines.append(f"| {tag} | {r['sqnr_db']} | {r['centred_cosine']} | "
                         f"{r['top1_agreement']} | {r['accuracy']} | {chosen} | {guard} | "
                         f"{len(r.get('activations_16bit') or [])} | {r['quantize_seconds']} |")
        if m.get("latency_ms"):
            ms = m["latency_ms"]
            lines += ["", f"Latency, 1 thread, median: auto {ms['auto']} ms, auto + 2 x 16-bit "
                      f"{ms['auto + 2 x 16-bit']} ms ("
                      f"{ms['auto + 2 x 16-bit'] / ms['auto']:.2f}x)."]
        choice = (m["builds"].get("auto + 16-bit auto") or {}).get("choice_16bit")
        if choice:
            trials = "; ".join(f"{t['tensors_16bit']} tensor(s) {t['mixed_ms']} ms vs "
                               f"{t['int8_ms']} ms all-8-bit ({t['ratio']}x)"
                               for t in choice["trials"]) or "none timed"
            lines += ["", f"16-bit auto: {len(choice['candidates'])} tensor(s) under "
                      f"{choice['sqnr_threshold_db']} dB 8-bit SQNR; trials: {trials}; kept "
                      f"{len(choice['chosen'])}."]
        lines.append("")
        b = m["builds"]
        if "sqnr_db" in b.get("auto", {}) and "sqnr_db" in b.get("default (ORT min-max)", {}):
            d = b["auto"]["sqnr_db"] - b["default (ORT min-max)"]["sqnr_db"]
            best = max((k for k in b if "sqnr_db" in b[k] and "16-bit" not in k),
                       key=lambda k: b[k]["sqnr_db"])
            summary.append(f"- {m['model']}: auto {b['auto']['sqnr_db']} dB vs default "
                           f"{b['default (ORT min-max)']['sqnr_db']} dB ({d:+.2f} dB); best "
                           f"8-bit variant: {best} ({b[best]['sqnr_db']} dB)")
    return "\n".join(lines[:4] + ["## Summary", "", *summary, ""] + lines[4:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--calib", type=int, default=64, help="calibration samples")
    ap.add_argument("--test", type=int, default=300, help="test samples scored")
    ap.add_argument("--runs", type=int, default=200, help="timed calls per latency (0: skip it)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=None,
                    help="variants built (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "setup": (f"Machine: {platform.machine()}; torch threads 1; ONNX Runtime CPU EP, 1 "
                  "thread; QDQ per-channel int8 weights, uint8 activations; edgekit's default "
                  "float-domain transforms (equalize + bias correction) before every variant; "
                  "fidelity against PyTorch fp32 on the first test samples; 'default' = "
                  "quantize_static's own min-max calibration (range_method = \"runtime\")."),
        "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            t0 = time.perf_counter()
            try:
                report["models"].append(run_model(name, args.calib, args.test, args.runs,
                                                  Path(tmp), args.variants))
            except Exception as exc:  # noqa: BLE001
                log(f"{name}: failed: {type(exc).__name__}: {exc}")
            log(f"{name}: {time.perf_counter() - t0:.0f} s")
            _write(report, args.out)  # after each model: a cut run keeps what it measured
    print(to_markdown(report))
    return 0


def _write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranges.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "ranges.md").write_text(to_markdown(report))


if __name__ == "__main__":
    sys.exit(main())
