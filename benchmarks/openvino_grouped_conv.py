"""OpenVINO's int8 grouped convolution on this CPU: SQNR against PyTorch, per shape.

    python -m benchmarks.openvino_grouped_conv [--out benchmarks/results]

One ``Conv1d`` / ``Conv2d`` layer (random weights, seed 0), quantized by OpenVINO's default
int8 flow (``nncf.quantize`` on ``ov.convert_model``, 16 random calibration inputs) and run
by the CPU plugin at f32 inference precision on one held-out input. Reported per shape: the
kernel the plugin chose (``primitiveType`` of the compiled graph) and the output SQNR against
PyTorch fp32. An int8 convolution of these sizes keeps 33-41 dB; a far lower number is the
kernel, not the rounding. Found through wav2vec2's positional convolution (groups 16 of a
768-wide layer; 4 of 32 in the library benchmark), whose OpenVINO int8 build failed its gate
on an Intel Xeon with AMX and passed on an AVX2 EPYC; that wav2vec2 is also built with
edgekit's defaults (the fallback on), recording what it keeps in float. Writes
``openvino_grouped_conv.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import cpu_name, log

RESULTS = Path(__file__).resolve().parent / "results"
#: (dims, channels, kernel, groups, length)
SHAPES = [(1, 32, 16, 1, 79), (1, 32, 16, 2, 79), (1, 32, 16, 4, 79), (1, 32, 16, 8, 79),
          (1, 32, 16, 32, 79), (1, 32, 3, 4, 79), (1, 32, 8, 4, 79), (1, 64, 16, 4, 79),
          (2, 32, 3, 4, 14), (2, 32, 7, 4, 14)]


def measure(dims: int, channels: int, kernel: int, groups: int, length: int
            ) -> dict[str, Any]:
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    torch.manual_seed(0)
    conv = (torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d)(
        channels, channels, kernel, padding=kernel // 2, groups=groups).eval()
    shape = (1, channels, *([length] * dims))
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(*shape, generator=g) for _ in range(17)]
    q = nncf.quantize(ov.convert_model(conv, example_input=data[0]),
                      nncf.Dataset(data[:16], lambda t: t.numpy()))
    compiled = ov.Core().compile_model(q, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                  "INFERENCE_NUM_THREADS": 1})
    with torch.no_grad():
        ref = conv(data[16]).numpy()
    out = compiled(data[16].numpy())[0]
    sqnr = 10 * np.log10(float((ref ** 2).sum()) / max(float(((ref - out) ** 2).sum()), 1e-30))
    kernels = sorted({op.get_rt_info()["primitiveType"].astype(str)
                      for op in compiled.get_runtime_model().get_ordered_ops()
                      if op.get_rt_info()["layerType"].astype(str) == "Convolution"})
    return {"conv": f"Conv{dims}d", "channels": channels, "kernel": kernel, "groups": groups,
            "input": list(shape), "kernels": kernels, "sqnr_db": round(float(sqnr), 2)}


def wav2vec2_default_build() -> dict[str, Any]:
    """The library benchmark's wav2vec2 (``benchmarks/library_models.py``) built for
    OpenVINO int8 by ``compress`` with edgekit's defaults (the fallback on): what it keeps
    in float, and the held-out SQNR its gate measured; or the error."""
    import tempfile

    from benchmarks.library_models import _models
    from edgekit.pipeline import compress

    factory, makers = _models()["wav2vec2"]
    torch.manual_seed(0)
    model = factory().eval()
    g = torch.Generator().manual_seed(1)
    data = [tuple(make(g) for make in makers) for _ in range(32)]
    target = "x86-openvino-int8"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            compress(model, data[0], targets=[target], out_dir=Path(tmp) / "b",
                     calibration=data, progress=False, quantization={"latency_check": False})
        except Exception as exc:  # noqa: BLE001 - a failed build is a result, with its reason
            return {"built": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        q = json.loads((Path(tmp) / "b" / "manifest.json").read_text())["targets"][target][
            "quantization"]
    return {"built": True, "float_layers": q["float_layers"],
            "first_jump": (q.get("culprits") or {}).get("first_jump"),
            "heldout_sqnr_db": round(min(float(o["sqnr_db"])
                                         for o in q["heldout_fidelity"]["outputs"]), 2)}


def markdown(res: dict[str, Any]) -> list[str]:
    lines = ["# OpenVINO int8 grouped convolution, per shape", "",
             f"`python -m benchmarks.openvino_grouped_conv` on {res['machine']}, OpenVINO "
             f"{res['openvino']}, NNCF {res['nncf']}, measured {res['measured']}. One "
             "convolution (random weights), OpenVINO's default int8 flow (nncf.quantize, 16 "
             "calibration inputs), run by the CPU plugin (f32 inference precision, one "
             "thread) on a held-out input; SQNR against PyTorch fp32.", "",
             "| conv | channels | kernel | groups | input | kernel run | SQNR dB |",
             "|---|---:|---:|---:|---|---|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['conv']} | {r['channels']} | {r['kernel']} | {r['groups']} | "
                     f"{'x'.join(map(str, r['input']))} | {', '.join(r['kernels'])} | "
                     f"{r['sqnr_db']} |")
    bad = [r for r in res["rows"] if r["sqnr_db"] < 20]
    lines += ["", f"{len(bad)} of {len(res['rows'])} shapes under 20 dB" + (
        ": " + "; ".join(f"{r['conv']} kernel {r['kernel']} groups {r['groups']} "
                         f"({r['sqnr_db']} dB, {', '.join(r['kernels'])})" for r in bad)
        if bad else "."), ""]
    w = res.get("wav2vec2")
    if w:
        lines += ["The library benchmark's wav2vec2 (random config: positional convolution of "
                  "32 channels, kernel 16, groups 4) built for `x86-openvino-int8` by "
                  "`compress` with edgekit's defaults (the fallback on): " + (
                      f"first jump at `{w['first_jump']}`; kept in float: "
                      f"{', '.join(f'`{n}`' for n in w['float_layers']) or 'none'}; held-out "
                      f"SQNR {w['heldout_sqnr_db']} dB." if w["built"]
                      else f"failed: {w['error']}"), ""]
    return lines


def main() -> None:
    import nncf
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = []
    for shape in SHAPES:
        rows.append(measure(*shape))
        log("grouped_conv", str(rows[-1]))
    res = {"machine": f"{cpu_name()} ({platform.machine()})", "openvino": ov.get_version(),
           "nncf": nncf.__version__, "measured": time.strftime("%Y-%m-%d %H:%M"),
           "rows": rows, "wav2vec2": wav2vec2_default_build()}
    log("grouped_conv", f"wav2vec2: {res['wav2vec2']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino_grouped_conv.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "openvino_grouped_conv.md").write_text("\n".join(markdown(res)))


if __name__ == "__main__":
    main()
