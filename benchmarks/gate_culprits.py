"""The int8 gate's fallback: the culprits read from the failing artifact's own tensors first
(``fallback_order = "runtime"``, the default) against the PyTorch-side sensitivity order
alone (``"sensitivity"``), on the zoo models and targets where the benchmark suite's int8
build needed the fallback or failed.

    python benchmarks/gate_culprits.py [--cases image_audio:arm64-tflite-int8,...]

Each case: the zoo model trained as in the suite (same cache; ``model:target:pruned`` for the
suite's pruned model, same plan and cache), built for one int8 target with
the suite's settings (its task's accuracy budget and tolerance, 300 calibration samples, 64
verification samples) and no latency check (so every float layer is there for accuracy),
once per order, one after the other, then with the fallback off: the error's hint (the
culprits to keep in float) followed by hand, in one more build. Per build: passed or not, the
layers kept in float, how many layer choices were tried, the culprits explain named (module,
SQNR there), and for a failure the error's first sentence naming them. Writes
benchmarks/results/gate_culprits.{json,md}.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgekit.errors import QuantizationError  # noqa: E402
from edgekit.models import get_spec  # noqa: E402
from edgekit.pipeline import compress  # noqa: E402

from common import log, pruned, trained  # noqa: E402
from suite_run import DEFAULT_PLAN, MODES, PLANS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Where the suite's int8 build (benchmarks/results/suite/) failed its gate (every other int8
#: cell passes with no layer in float for accuracy: its float layers are kept for speed).
CASES = [("image_audio", "arm64-tflite-int8", False),
         ("image_audio", "x86-onnxruntime-int8", True),
         ("image_audio", "x86-openvino-int8", True),
         ("image_text", "x86-onnxruntime-int8", True),
         ("image_text", "arm64-tflite-int8", True)]
ORDERS = ("runtime", "sensitivity")


def _model(name: str, prune: bool) -> torch.nn.Module:
    model, _ = trained(name)
    if prune:
        plan = {**PLANS.get(name, DEFAULT_PLAN),
                "epochs_scale": MODES["full"].prune_epochs_scale}
        model, _ = pruned(name, model, plan)
    return model


def _compress(name: str, model: torch.nn.Module, target: str, out: Path,
              **quantization: Any) -> None:
    spec = get_spec(name)
    compress(model, spec.example_inputs(1), targets=[target], out_dir=out, task=spec.task(),
             verify_samples=64, progress=False, input_names=list(spec.input_names),
             output_names=list(spec.output_names),
             quantization={"samples": 300, "latency_check": False, **quantization})


def hinted(name: str, target: str, prune: bool, tmp: Path) -> dict[str, Any]:
    """With the fallback off: the error's hint (the culprits to keep in float), then a build
    with exactly that ``keep_float`` and the fallback still off."""
    model = _model(name, prune)
    row: dict[str, Any] = {"model": name + (" (pruned)" if prune else ""), "target": target,
                           "order": "error's hint"}
    t0 = time.perf_counter()
    try:
        _compress(name, model, target, tmp / f"{name}-{target}-nofallback", fallback=False)
        row.update(passed=True, float_layers=[], note="passes with every layer in int8")
        return row
    except QuantizationError as exc:
        found = re.search(r"keep_float = (\[[^\]]*\])", exc.hint or "")
        keep = ast.literal_eval(found.group(1)) if found else []
        row["hint"] = exc.hint
    row["float_layers"] = keep
    try:
        _compress(name, model, target, tmp / f"{name}-{target}-hint", fallback=False,
                  keep_float=keep)
        row["passed"] = True
    except QuantizationError as exc:
        row.update(passed=False, error=f"keep_float {keep}: " + str(exc).split(
            " Per-layer sensitivity")[0][:400])
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def one(name: str, target: str, prune: bool, order: str, tmp: Path) -> dict[str, Any]:
    model = _model(name, prune)
    out = tmp / f"{name}-{target}-{order}"
    row: dict[str, Any] = {"model": name + (" (pruned)" if prune else ""), "target": target,
                           "order": order}
    t0 = time.perf_counter()
    try:
        _compress(name, model, target, out, fallback_order=order)
    except QuantizationError as exc:
        text = str(exc)
        row.update(passed=False, error=text.split(" Per-layer sensitivity")[0][:600],
                   seconds=round(time.perf_counter() - t0, 1))
        return row
    q = json.loads((out / "manifest.json").read_text())["targets"][target]["quantization"]
    culprits = q.get("culprits") or {}
    row.update(passed=True, float_layers=list(q.get("fallback_layers") or []),
               all_float=list(q.get("float_layers") or []),
               alternative=(q.get("accuracy_alternative") or "").split(":")[0] or None,
               choices_tried=len(q.get("attempts") or []),
               culprits=[(c["module"], c["sqnr_db"]) for c in culprits.get("layers", [])],
               culprit_source=culprits.get("source"),
               seconds=round(time.perf_counter() - t0, 1))
    return row


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["# The int8 gate's fallback: runtime culprits first vs the sensitivity order", "",
             f"Zoo models trained as in the suite, one int8 target each, the suite's gate "
             f"settings, no latency check ({summary['machine']}; {summary['seconds']:.0f} s). "
             "`runtime`: the layers explain finds in the failing artifact's own tensors are "
             "kept in float first (each with its reader and the layer it reads), then the "
             "PyTorch order, both tried at each number of float layers (the default); "
             "`sensitivity`: the PyTorch order alone (one layer fake-quantized at a "
             "time). `float layers`: those the fallback kept in float; fewer is better. "
             "`error's hint`: the fallback off, the error's hint (`keep_float = [...]`, the "
             "culprits read from the artifact) followed by hand: one build with exactly that, "
             "the fallback still off.", "",
             "| model | target | order | passed | float layers | choices tried | culprits "
             "(SQNR dB there) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["order"] == "error's hint":
            fl = r.get("float_layers") or []
            said = (r.get("note") or r.get("error") or r.get("hint") or "").replace("|", "/")
            lines.append(f"| {r['model']} | {r['target']} | {r['order']} | "
                         f"{'yes' if r['passed'] else '**no**'} | "
                         f"{len(fl)}: {', '.join(fl) or '-'} | {1 if r.get('note') else 2} | "
                         f"{said} |")
            continue
        if r["passed"]:
            cul = ", ".join(f"{m} ({s})" for m, s in r.get("culprits") or []) or "-"
            fl = r["float_layers"]
            lines.append(f"| {r['model']} | {r['target']} | {r['order']} | yes"
                         f"{' (' + r['alternative'] + ')' if r.get('alternative') else ''} | "
                         f"{len(fl)}: {', '.join(fl) or '-'} | {r['choices_tried']} | {cul} |")
        else:
            lines.append(f"| {r['model']} | {r['target']} | {r['order']} | **no** | - | - | "
                         f"{r['error'].replace('|', '/')} |")
    lines += ["", "Per case: " + "; ".join(summary["verdicts"])]
    return "\n".join(lines) + "\n"


def verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``a``: the runtime order's row, ``b``: the sensitivity order's, same case."""
    case = f"{a['model']} {a['target']}: "
    if a["passed"] and not b["passed"]:
        return case + f"runtime order passes with {len(a['float_layers'])} float layer(s), " \
                      "sensitivity order fails"
    if b["passed"] and not a["passed"]:
        return case + "sensitivity order passes, runtime order fails"
    if not a["passed"]:
        return case + "both fail"
    na, nb = len(a["float_layers"]), len(b["float_layers"])
    word = ("fewer than" if na < nb else "more than" if na > nb else "as many as")
    return case + f"runtime order {na} float layer(s), {word} the sensitivity order's {nb}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", help="comma-separated model:target pairs (default: CASES)")
    args = ap.parse_args()
    cases = ([(c.split(":")[0], c.split(":")[1], c.endswith(":pruned"))
              for c in args.cases.split(",")] if args.cases else CASES)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    verdicts = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-gate-") as tmp:
        for name, target, prune in cases:
            pair = []
            for order in ORDERS:
                row = one(name, target, prune, order, Path(tmp))
                log("gate_culprits", f"{row['model']} {target} {order}: " + (
                    f"passed, float {row['float_layers']}" if row["passed"] else "failed"))
                rows.append(row)
                pair.append(row)
            verdicts.append(verdict(*pair))
            row = hinted(name, target, prune, Path(tmp))
            log("gate_culprits", f"{row['model']} {target} error's hint: " + (
                f"passes with {row.get('float_layers')}" if row["passed"] else "fails"))
            rows.append(row)
            verdicts[-1] += (f"; the error's hint {row.get('float_layers')} "
                             + ("passes" if row["passed"] else "fails"))
    summary = {"machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
               "seconds": round(time.perf_counter() - start, 1), "verdicts": verdicts}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gate_culprits.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    (RESULTS / "gate_culprits.md").write_text(markdown(rows, summary))
    for v in verdicts:
        log("gate_culprits", v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
