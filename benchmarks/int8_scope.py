"""What ``int8_scope = "layers"`` costs and gives against the default ``"all"``, side by side.

    python -m benchmarks.int8_scope [--models bert_mini_docstrings,hf_vit] [--runs 300]
                                    [--out benchmarks/results/int8_scope]

For each transformer (the zoo's BERT-mini and DeiT-tiny at their deployment shapes, and the
library benchmark's random-config Hugging Face ViT, DINOv2, DeiT, GPT-2, CLIP, and the
convolutional hybrids with layer norms Swin, ConvNeXt, MobileViT and SegFormer; random
weights, seed 0) and each runtime whose int8 build reads ``int8_scope`` (ONNX Runtime, and
OpenVINO, whose QDQ source it shapes), three builds by ``compress`` on the same 32 random
calibration inputs: fp32, int8 with ``int8_scope = "all"`` and with ``"layers"`` (every layer
int8: fallback off, no latency check, OpenVINO's source pinned to ``qdq``). Reported: the
held-out SQNR the gate measured (the last quarter of the calibration inputs against PyTorch
fp32) and the median latency of the three files timed side by side (interleaved, one thread,
batch 1), with the ratio of each int8 build to fp32. Writes ``scope_latency.{json,md}``.
Random weights make the SQNR a measure of the build, not of a task (``int8_switches.md``
scores the trained BERT-mini). Numbers are measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import cpu_name, log, run_models

RESULTS = Path(__file__).resolve().parent / "results" / "int8_scope"
TARGETS = {"onnxruntime": "x86-onnxruntime-int8", "openvino": "x86-openvino-int8"}
FP32 = {"onnxruntime": "x86-onnxruntime-fp32", "openvino": "x86-openvino-fp32"}
ZOO = ("bert_mini_docstrings", "deit_tiny_glyphs")
LIBRARY = ("vit", "dinov2", "deit", "gpt2", "clip", "swin", "convnext", "mobilevit",
           "segformer")


def _model(name: str) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, ...]], list[str]]:
    """(model, 32 calibration inputs, input names)."""
    torch.manual_seed(0)
    if name in ZOO:
        from edgekit.models import build, get_spec

        spec = get_spec(name)
        xs = spec.example_inputs(32)
        return (build(name), [tuple(t[i:i + 1] for t in xs) for i in range(32)],
                list(spec.input_names))
    from benchmarks.library_models import _models

    factory, makers = _models()[name.removeprefix("hf_")]
    model = factory().eval()
    g = torch.Generator().manual_seed(1)
    data = [tuple(make(g) for make in makers) for _ in range(32)]
    return model, data, [f"input_{i}" for i in range(len(makers))]


def run_model(name: str, tmp: Path, runs: int = 300) -> dict[str, Any]:
    import edgekit
    from edgekit.measure.metrics import json_number

    model, data, inputs = _model(name)
    row: dict[str, Any] = {"model": name, "runtimes": {}}
    for rt, target in TARGETS.items():
        folders, cell = {}, {}
        for scope in ("fp32", "all", "layers"):
            out = tmp / f"{rt}-{scope}"
            t0 = time.perf_counter()
            if scope == "fp32":
                edgekit.compress(model, data[0], targets=[FP32[rt]], out_dir=out,
                                 input_names=inputs, progress=False)
            else:
                quant = {"int8_scope": scope, "latency_check": False, "fallback": False}
                if rt == "openvino":
                    quant["openvino_source"] = "qdq"
                edgekit.compress(model, data[0], targets=[target], out_dir=out,
                                 calibration=data, input_names=inputs, progress=False,
                                 quantization=quant)
                q = json.loads((out / "manifest.json").read_text())["targets"][target][
                    "quantization"]
                outs = q["heldout_fidelity"]["outputs"]
                cell[f"{scope}_sqnr_db"] = json_number(
                    round(min(float(o["sqnr_db"]) for o in outs), 2))
                cell[f"{scope}_int8_layers"] = sum(r.get("precision") == "int8"
                                                   for r in q["layers"])
                # what was built: the gate's alternative may have replaced the setting
                cell[f"{scope}_built_as"] = {k: q["config"].get(k) for k in
                                             ("int8_scope", "openvino_source") if k in q["config"]}
                cell[f"{scope}_alternative"] = q.get("accuracy_alternative")
            cell[f"{scope}_build_s"] = round(time.perf_counter() - t0, 1)
            folders[scope] = out
        rep = edgekit.bench(list(folders.values()), threads=1, runs=runs, warmup=30,
                            data="none", memory=False, formats=(), progress=False)
        by_source = {Path(r["source"]).name: r for r in rep["results"]}
        for scope, folder in folders.items():
            lat = (by_source[folder.name].get("latency") or {}).get("median_ms")
            cell[f"{scope}_ms"] = None if lat is None else round(lat, 4)
        log("int8-scope", f"{name} {rt}: {cell}")
        row["runtimes"][rt] = cell
    return row


def _db(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:.1f}"  # "inf": int8 equal to fp32


def _gain(a: Any, b: Any) -> str:
    return "—" if isinstance(a, str) or isinstance(b, str) else f"{b - a:+.1f}"


def markdown(res: dict[str, Any]) -> list[str]:
    md = ["# `int8_scope`: \"layers\" against the default \"all\", side by side", "",
          f"Machine: {res['cpu']} ({res['machine']}); one thread, batch 1, {res['runs']} timed "
          "calls per file, interleaved (fp32 and both int8 files in one run). Random weights; "
          "held-out SQNR against PyTorch fp32 (the gate's). Command: `python -m "
          "benchmarks.int8_scope --out benchmarks/results/int8_scope`.", "",
          "| model | runtime | fp32 ms | all: SQNR | all: ms (x fp32) | layers: SQNR | "
          "layers: ms (x fp32) | layers vs all: dB | layers vs all: latency |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes: list[str] = []
    for row in res["models"]:
        if "error" in row:
            md.append(f"| {row['model']} | failed: {row['error'][:150]} ||||||||")
            continue
        for rt, c in row["runtimes"].items():
            f, a, lay = c["fp32_ms"], c["all_ms"], c["layers_ms"]
            swapped = c.get("all_alternative") is not None
            if swapped:
                label, _, why = c["all_alternative"].partition(": the configured realisation ")
                why = why.split(", this one met it")[0]
                same = c.get("all_built_as") == c.get("layers_built_as")
                why = why if len(why) <= 160 else why[:156] + "...)"
                notes.append(f"{row['model']} on {rt}: the \"all\" build {why}; "
                             f"the gate's alternative {label!r} was built instead "
                             f"({c.get('all_built_as')})"
                             + (", the same as the \"layers\" column." if same else "."))
            md.append(
                f"| {row['model']} | {rt} | {f:.3f} | {_db(c['all_sqnr_db'])}"
                f"{'*' if swapped else ''} | {a:.3f} ({a / f:.2f}) | "
                f"{_db(c['layers_sqnr_db'])} | {lay:.3f} ({lay / f:.2f}) | "
                f"{_gain(c['all_sqnr_db'], c['layers_sqnr_db'])} | {lay / a - 1:+.0%} |")
    if notes:
        md += ["", *(f"\\* {n}" for n in notes)]
    return md


def main() -> None:
    import functools

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join((*ZOO, *(f"hf_{n}" for n in LIBRARY))))
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(1)
    res: dict[str, Any] = {"cpu": cpu_name(), "machine": platform.machine(), "runs": args.runs,
                           "models": []}
    run_models(args.models.split(","), res, functools.partial(run_model, runs=args.runs),
               args.out, "scope_latency", markdown)


if __name__ == "__main__":
    main()
