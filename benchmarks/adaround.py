"""Learned rounding (AdaRound) on the zoo's trained models, per runtime: int8 fidelity to
PyTorch fp32 (SQNR, centred cosine, top-1 agreement, accuracy) with edgekit's default
float-domain transforms, and with AdaRound added; AdaRound's build cost and per-layer output
error; and whether each runtime's quantizer reproduces edgekit's integers (the int8 weights
read back from the artifact: ONNX QDQ initializers, OpenVINO i8 constants, TFLite int8
buffers).

    python benchmarks/adaround.py [--models cnn,ds_cnn,resnet8,mobilenet_v2,transformer]
                                  [--runtimes onnxruntime,openvino,tflite] [--threads 1]

Every build: every layer int8 (no fallback), 300 calibration samples from the training
split, OpenVINO through NNCF; the transforms (BN folding, equalization with ReLU6 pairs
skipped, bias correction, and AdaRound or not) are applied once per model in PyTorch and the
same transformed model goes to the three quantizers. Writes
benchmarks/results/adaround.{json,md}. Numbers are measured, not asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
CALIB = 300


# -- the int8 weights each artifact holds -----------------------------------------------------
def artifact_integers(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors stored in an int8 artifact (.onnx, OpenVINO .xml, .tflite)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(path))
        inits = {i.name: i for i in proto.graph.initializer}
        out = []
        for n in proto.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in inits:
                a = numpy_helper.to_array(inits[n.input[0]])
                if a.dtype == np.int8 and a.ndim >= 2:
                    out.append(a)
        return out
    if path.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return [op.get_data().copy() for op in model.get_ordered_ops()
                if op.get_type_name() == "Constant"
                and op.get_output_element_type(0) == ov.Type.i8
                and len(op.get_output_shape(0)) >= 2]
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path))
        out = []
        for t in interp.get_tensor_details():
            if np.dtype(t["dtype"]) == np.int8 and len(t["shape"]) >= 2:
                try:
                    out.append(np.array(interp.get_tensor(t["index"])))
                except ValueError:  # an activation tensor: no buffer before a run
                    continue
        return out
    raise ValueError(f"no int8 weight reader for {path.suffix!r} files")


def _views(a: np.ndarray) -> list[np.ndarray]:
    """``a`` with size-1 axes dropped, under every axis order (weights are stored OIHW, OHWI,
    1HWC, [in, out] or grouped [G, O/G, I/G, H, W] depending on the runtime)."""
    s = np.squeeze(a)
    if s.ndim > 5:
        return [s]
    return [np.transpose(s, p) for p in itertools.permutations(range(s.ndim))]


def compare_integers(ours: dict[str, np.ndarray], stored: list[np.ndarray]
                     ) -> dict[str, dict[str, Any]]:
    """For each of edgekit's integer tensors, the stored tensor that matches it best (same
    elements, any layout): ``{"found": bool, "differ": count, "elements": n}``."""
    out: dict[str, dict[str, Any]] = {}
    for name, q in ours.items():
        qs = np.squeeze(q)
        best: dict[str, Any] = {"found": False, "elements": int(q.size)}
        for a in stored:
            if a.size != q.size:
                continue
            for v in _views(a):
                if v.shape != qs.shape:
                    # grouped layouts: compare after flattening the group axes together
                    if v.size == qs.size and v.ndim != qs.ndim:
                        v = v.reshape(qs.shape)
                    else:
                        continue
                differ = int((v.astype(np.int16) != qs.astype(np.int16)).sum())
                if not best["found"] or differ < best["differ"]:
                    best = {"found": True, "elements": int(q.size), "differ": differ}
                if differ == 0:
                    break
            if best.get("differ") == 0:
                break
        out[name] = best
    return out


def edgekit_integers(model: torch.nn.Module, qmax: int = 127) -> dict[str, np.ndarray]:
    """Every Conv1d/Conv2d/Linear weight of ``model`` on the per-channel grid ``-qmax..qmax``."""
    from edgekit.quantize.transforms.adaround import grid_integers

    return {n: grid_integers(m.weight, qmax)[0].numpy() for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and n}


# -- the benchmark ------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[adaround] {msg}", file=sys.stderr, flush=True)


def run_model(name: str, runtimes: tuple[str, ...], threads: int, tmp: Path) -> dict[str, Any]:
    from edgekit.backends import get_backend
    from edgekit.models import get_spec
    from edgekit.quantize.config import QuantConfig
    from edgekit.quantize.transforms import apply_transforms

    from common import task_fidelity, trained  # benchmarks/common.py

    spec = get_spec(name)
    task = spec.task()
    model, _ = trained(name, spec.default_epochs)
    with torch.no_grad():
        ref = model(*task.test.inputs)
    ref = np.asarray((ref if isinstance(ref, torch.Tensor) else ref[0]).numpy(), np.float64)
    calib = [[t[i:i + 1].numpy() for t in task.train.inputs] for i in range(CALIB)]
    x = spec.example_inputs(1)
    defaults = {"equalize": True, "bias_correction": True, "relu6": "skip"}
    t0 = time.perf_counter()
    base, _ = apply_transforms(model, calib, **defaults)
    base_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ada, rec = apply_transforms(model, calib, **defaults, adaround=True)
    ada_s = time.perf_counter() - t0
    layers = rec.get("adaround_layers", [])
    out: dict[str, Any] = {
        "model": name, "epochs": spec.default_epochs,
        "transform_seconds": {"defaults": round(base_s, 2), "defaults+adaround": round(ada_s, 2)},
        "adaround": {"applied": rec["applied"], "layers": layers,
                     "skipped": rec.get("adaround_skipped", {}),
                     "seconds": rec.get("adaround_seconds"),
                     "kept_learned": sum(1 for r in layers if r["kept"] == "adaround"),
                     "median_reduction_pct": (float(np.median([r["reduction_pct"]
                                                               for r in layers]))
                                              if layers else None)},  # of the kept rounding
        "builds": {}}
    log(f"{name}: transforms {base_s:.1f} s, with adaround {ada_s:.1f} s "
        f"({len(layers)} layers, median error reduction "
        f"{out['adaround']['median_reduction_pct']}%)")
    grids = {127: (base, ada)}  # the weight grid -> (defaults, defaults+adaround) on it
    for rt in runtimes:
        be = get_backend(rt)
        qmax = getattr(be, "weight_qmax", lambda _c: 127)(QuantConfig(adaround=True))
        if qmax not in grids:  # ONNX Runtime's 7-bit weights where its kernels saturate
            grids[qmax] = tuple(apply_transforms(model, calib, **defaults, adaround=a,
                                                 weight_qmax=qmax)[0] for a in (False, True))
        base_q, ada_q = grids[qmax]
        variants = [("defaults", base_q, False), ("defaults+adaround", ada_q, True)]
        if rt == "openvino":  # NNCF's first layer on 8 bits (as with adaround), no adaround
            variants.insert(1, ("defaults_8bit_first", base_q, True))
        for tag, m, ada_config in variants:
            t1 = time.perf_counter()
            cfg = QuantConfig(fallback=False, latency_check=False, openvino_source="nncf",
                              equalize=False, bias_correction=False, adaround=ada_config)
            d = tmp / f"{name}-{rt}-{tag}"
            try:
                art = be.quantize(m, x, d, input_names=list(spec.input_names),
                                  output_names=list(spec.output_names), options={},
                                  calibration=calib, config=cfg)
                opts = {"io": "float"} if "io" in getattr(be, "options_schema", {}) else {}
                sess = be.load(art, threads=threads, options=opts)
                match = compare_integers(edgekit_integers(m, qmax),
                                         artifact_integers(art.path))
                found = [v for v in match.values() if v["found"]]
                row = {**task_fidelity(sess, task, ref),
                       "build_seconds": round(time.perf_counter() - t1, 1),
                       "integers": {"layers": len(match), "found": len(found),
                                    "layers_identical": sum(1 for v in found if v["differ"] == 0),
                                    "elements": sum(v["elements"] for v in found),
                                    "differ": sum(v["differ"] for v in found),
                                    "differ_by_layer": {k: v["differ"] for k, v in match.items()
                                                        if v.get("differ")}}}
            except Exception as exc:  # noqa: BLE001 - a benchmark row records the failure
                row = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            out["builds"][f"{tag}/{rt}"] = row
            log(f"{name} {tag}/{rt}: { {k: v for k, v in row.items() if k != 'integers'} } "
                f"integers {row.get('integers', {}).get('differ')} differ")
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["# AdaRound: int8 fidelity with and without learned rounding", "",
             f"Machine: {res['machine']}; {res['threads']} thread(s); {CALIB} calibration "
             "samples; every layer int8 (no fallback); OpenVINO through NNCF. `defaults` = "
             "BN folding + equalization (ReLU6 pairs skipped) + bias correction, "
             "`+adaround` adds learned rounding. SQNR (dB) and centred cosine of the int8 "
             "outputs against PyTorch fp32 on the test split; `int8 equal` = layers whose "
             "int8 weights in the artifact equal edgekit's integers / layers. OpenVINO: NNCF "
             "puts the first layer's weights on 7 bits by default (its overflow fix); with "
             "adaround edgekit turns that off, so the defaults row also gives the 8-bit "
             "first layer without adaround. Seconds are wall-clock on the machine as it was "
             "(shared: the run had a fraction of one core).", "",
             "| model | runtime | SQNR defaults | SQNR +adaround | delta dB | accuracy "
             "defaults | accuracy +adaround | centred cos +adaround | int8 equal "
             "(+adaround) | int8 equal (defaults) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        for rt in res["runtimes"]:
            b = m["builds"].get(f"defaults/{rt}", {})
            a = m["builds"].get(f"defaults+adaround/{rt}", {})
            if "error" in a or "error" in b:
                lines.append(f"| {m['model']} | {rt} | {b.get('error', b.get('sqnr_db'))} | "
                             f"{a.get('error', a.get('sqnr_db'))} | | | | | | |")
                continue
            delta = (a["sqnr_db"] - b["sqnr_db"]
                     if all(isinstance(v, float) for v in (a["sqnr_db"], b["sqnr_db"])) else "")

            def eq(r: dict) -> str:
                i = r["integers"]
                return (f"{i['layers_identical']}/{i['layers']} "
                        f"({i['differ']} of {i['elements']} differ)")

            first8 = m["builds"].get(f"defaults_8bit_first/{rt}", {}).get("sqnr_db")
            base_cell = f"{b['sqnr_db']}" + ("" if first8 is None
                                             else f" (first layer 8-bit: {first8})")
            lines.append(f"| {m['model']} | {rt} | {base_cell} | {a['sqnr_db']} | "
                         f"{delta if delta == '' else f'{delta:+.2f}'} | {b['accuracy']} | "
                         f"{a['accuracy']} | {a['centred_cosine']} | {eq(a)} | {eq(b)} |")
    lines += ["", "| model | AdaRound layers (learned kept) | median layer error reduction % | "
              "AdaRound seconds | transforms seconds without |", "|---|---|---|---|---|"]
    for m in res["models"]:
        a = m["adaround"]
        kept = [1 - r["error_adaround"] / r["error_nearest"]
                if r["kept"] == "adaround" and r["error_nearest"] > 0 else 0.0
                for r in a["layers"]]
        median = f"{100 * float(np.median(kept)):.1f}" if kept else "-"
        lines.append(f"| {m['model']} | {len(a['layers'])} ({a['kept_learned']}) | "
                     f"{median} | {a['seconds']} | {m['transform_seconds']['defaults']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,ds_cnn,resnet8,mobilenet_v2,transformer")
    ap.add_argument("--runtimes", default="onnxruntime,openvino,tflite")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--render", action="store_true",
                    help="rewrite adaround.md from adaround.json, measure nothing")
    args = ap.parse_args()
    if args.render:
        res = json.loads((Path(args.out) / "adaround.json").read_text())
        (Path(args.out) / "adaround.md").write_text(markdown(res))
        return
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    runtimes = tuple(args.runtimes.split(","))
    res: dict[str, Any] = {"machine": f"{platform.machine()} {platform.processor()}".strip(),
                           "threads": args.threads, "runtimes": list(runtimes), "models": []}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            res["models"].append(run_model(name, runtimes, args.threads, Path(tmp)))
            (out_dir / "adaround.json").write_text(json.dumps(res, indent=1))
            (out_dir / "adaround.md").write_text(markdown(res))
    log(f"wrote {out_dir / 'adaround.md'}")


if __name__ == "__main__":
    main()
