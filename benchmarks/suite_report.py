"""The benchmark suite's report: ``suite.json`` and ``suite.md`` from the per-model JSON files,
the speed-up plot, the README's performance section, and the list of cells where edgekit's
flow loses to a runtime's own."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _readme import update_readme_section  # noqa: E402
from common import INT8, RUNTIMES  # noqa: E402
from suite_run import NATIVE, VARIANTS  # noqa: E402

#: The hand-measured baseline (development machine, 2026-11-22; same data, 1 thread): native
#: int8 accuracy change in points and speed-up over the same runtime's fp32.
HAND_BASELINE = {
    ("cnn", "onnxruntime"): (-0.3, 0.68), ("cnn", "openvino"): (0.0, 0.90),
    ("cnn", "tflite"): (0.0, 1.32),
    ("mobilenet_v2", "onnxruntime"): (0.0, 0.68), ("mobilenet_v2", "openvino"): (-0.6, 1.00),
    ("mobilenet_v2", "tflite"): (-0.3, 1.64),
    ("lstm", "onnxruntime"): (0.0, 0.96), ("lstm", "openvino"): (-38.1, 0.85),
    ("lstm", "tflite"): (0.0, 0.99),
    ("ds_cnn", "onnxruntime"): (0.3, 1.14), ("ds_cnn", "openvino"): (-0.6, 1.03),
    ("ds_cnn", "tflite"): (0.0, 1.50),
}
RT_LABEL = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tflite": "TFLite"}


def _threads(rt: str) -> str:
    """The thread count the int8 profile (and so the build's latency check) uses."""
    from edgekit.profiles import load_profile

    return f"{load_profile(INT8[rt]).threads} threads"


def machine() -> dict[str, Any]:
    import onnxruntime
    import openvino

    from edgekit.bench.summary import machine as _machine

    try:
        import ai_edge_litert
        litert = getattr(ai_edge_litert, "__version__", "installed")
    except ImportError:
        litert = "missing"
    return {**_machine(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.get_version().split("-")[0], "ai_edge_litert": litert}


def _fmt(v: Any, spec: str = ".2f", none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, str):
        return v
    return format(v, spec)


def _metric_fmt(report: dict[str, Any], v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) < 5e-5:  # no "-0.00"
        v = 0.0
    return f"{v:.2f}" if report["metric"] in ("top1", "retrieval_top1") else f"{v:.4g}"


def losses(models: list[dict[str, Any]]) -> list[str]:
    """Where edgekit loses: int8 slower than fp32, slower than the native int8, or more
    accurate natively; with what we will do about each kind."""
    out = []
    for rep in models:
        cells = rep.get("cells", {})
        for rt in RUNTIMES:
            e, n = cells.get(f"int8/{rt}", {}), cells.get(f"native_int8/{rt}", {})
            sp = e.get("speedup_vs_fp32")
            if sp is not None and sp < 0.97:
                lc = e.get("latency_check") or {}
                if lc.get("below_min_speedup"):
                    built = (f"the build flagged it (Int8SlowerWarning, {lc['speedup']:.2f}x "
                             f"at {_threads(rt)}; {len(lc.get('variants_tried', []))} variants "
                             "tried) and advises the fp32 target")
                elif lc.get("speedup"):
                    built = (f"the build's own check measured {lc['speedup']:.2f}x at "
                             f"{_threads(rt)} and kept '{lc.get('chosen')}'; with 1 thread it "
                             "loses")
                else:
                    built = "the build did not time it (" + str(lc.get("skipped") or
                                                               "no latency check") + ")"
                why = (" Calls this short are dominated by per-op overhead that int8 does not "
                       "shrink." if e["median_ms"] < 0.2 else "")
                out.append(f"{rep['model']} int8 on {RT_LABEL[rt]} is {sp:.2f}x its fp32 "
                           f"(slower): {built}.{why} Next: per-op timing from the runtime's "
                           "profiler to choose which ops stay float, and the latency check at "
                           "the deployment's thread count.")
            if e.get("median_ms") and n.get("median_ms") and e["median_ms"] > 1.05 * n[
                    "median_ms"]:
                out.append(f"{rep['model']} int8 on {RT_LABEL[rt]}: edgekit "
                           f"{e['median_ms']:.4f} ms vs native {n['median_ms']:.4f} ms "
                           f"({e['median_ms'] / n['median_ms']:.2f}x slower)"
                           + (f"; edgekit keeps {', '.join(e['float_layers'])} in float"
                              if e.get("float_layers") else "")
                           + ". Next: weigh latency in the fallback choice.")
            if e.get("metric_drop") is not None and n.get("metric_drop") is not None and \
                    e["metric_drop"] > n["metric_drop"] + 1e-9 and e["metric_drop"] > 0:
                out.append(f"{rep['model']} int8 on {RT_LABEL[rt]}: edgekit loses "
                           f"{e['metric_drop']:.3g} vs native {n['metric_drop']:.3g} "
                           f"({rep['metric']}). Next: compare calibration methods per model "
                           "and keep the better one.")
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    meta, peak = doc["meta"], doc["peak"]
    m = meta["machine"]
    lines = [
        "# edgekit benchmark suite", "",
        f"Mode **{meta['mode']}**; generated by `python -m benchmarks.suite --{meta['mode']}` "
        f"on {m['cpu']} ({m['cores']} cores), {meta['threads']} thread per runtime, batch 1; "
        f"onnxruntime {m['onnxruntime']}, openvino {m['openvino']}, ai-edge-litert "
        f"{m['ai_edge_litert']}, torch {m['torch']}. Latency: median and p90 of "
        f"{meta['runs']} interleaved calls per artifact after {meta['warmup']} warm-up calls; "
        "all artifacts of one model (edgekit's and the native flows', all three runtimes) "
        "timed side by side in one run. Accuracy: the task's metric on the test split "
        "(digits: 360 images, one image = 0.28 points); drop = PyTorch fp32 minus the "
        "artifact (positive = worse). Fidelity: worst-sample cosine and SQNR of the test "
        "outputs against the fp32 PyTorch model. Sizes: weight-bearing files. OpenVINO runs "
        "edgekit's artifacts with an f32 precision hint; the native OpenVINO flow compiles "
        "with defaults (its executed precision is listed).", "",
        "## Hardware limit", "",
        f"{peak['threads']} thread, {peak['n']}x{peak['n']} matrix multiply, fastest of "
        f"{peak['repeats']} calls per kernel: fp32 **{peak['fp32']['ops_per_s'] / 1e9:.1f} "
        f"GFLOP/s** ({peak['fp32']['kernel']}), int8 **{peak['int8']['ops_per_s'] / 1e9:.1f} "
        f"GOP/s** ({peak['int8']['kernel']}). Each artifact's `% peak` = 2 x MACs / median "
        "latency, over the peak of its precision (int8 artifacts against the int8 peak). "
        "Batch-1 models this small are bound by per-call and per-op overhead, not arithmetic, "
        "so their percentages are low; the column is there to compare machines and devices.",
        *[f"Peak {k}: {peak[k]['note']}." for k in ("fp32", "int8") if peak[k].get("note")],
        "",
        "## Overview: speed-up over the same runtime's fp32 (accuracy drop)", "",
        "| model | metric (fp32) | runtime | pruned | int8 | pruned + int8 | native int8 "
        "| native pruned |", "|---|---|---|---|---|---|---|---|"]
    for rep in doc["models"]:
        if "cells" not in rep:
            lines.append(f"| {rep['model']} | - | all | not run: {rep.get('error', '?')} "
                         "| | | | |")
            continue
        for rt in RUNTIMES:
            row = [rep["model"], f"{rep['metric']} {_metric_fmt(rep, rep['pytorch_fp32'])}",
                   RT_LABEL[rt]]
            for variant in ("pruned", "int8", "pruned_int8", "native_int8", "native_pruned"):
                c = rep["cells"].get(f"{variant}/{rt}", {})
                if c.get("status") != "ok" or c.get("median_ms") is None:
                    row.append(_short(c.get("status", "not run")))
                else:
                    row.append(f"{_fmt(c.get('speedup_vs_fp32'))}x "
                               f"({_metric_fmt(rep, c.get('metric_drop'))})")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "`native int8` speed-up is over the native fp32 flow of the same runtime "
              "(OpenVINO: its default precision); `native pruned` is torch-pruning by hand "
              "(ratio 0.5, plain 3-epoch fine-tune).", ""]
    lines += _native_section(doc)
    lines += ["## Where edgekit loses", ""]
    lost = losses(doc["models"])
    lines += [f"- {s}" for s in lost] or ["- nowhere in this run."]
    lines += ["", "## Per model", ""]
    for rep in doc["models"]:
        lines += _model_section(rep)
    return "\n".join(lines) + "\n"


def _short(status: str, width: int = 90) -> str:
    """A cell's status for a table: a failed gate reduced to its numbers, cut at a word."""
    gate = re.match(r"accuracy gate failed: target \S+: (.*?) \(tried", status)
    if gate:
        why = gate.group(1)
        tol = re.fullmatch(r"it misses the profile's tolerance \(logits: (.*)\)", why)
        drop = re.search(r"a drop of (\S+) points?, over the budget of (\S+)", why)
        why = (tol.group(1) if tol else
               f"drop {drop.group(1)} > budget {drop.group(2)}" if drop else why)
        status = "gate failed: " + re.sub(r"(\d\.\d\d)\d+", r"\1", why.replace("tolerance ", ""))
    status = status.replace("|", "/")
    return status if len(status) <= width else status[: width - 1].rsplit(" ", 1)[0] + " ..."


def _native_section(doc: dict[str, Any]) -> list[str]:
    lines = ["## edgekit int8 beside each runtime's default int8 flow", "",
             "Ratios edgekit / native: latency (below 1 = edgekit faster) and accuracy drop "
             "(points; lower is better). `hand baseline` = the same native flow measured by "
             "hand on the development machine kind (AMD EPYC Zen 5 with AVX-512 VNNI + BF16, 1 "
             "thread): its accuracy effects are what the native column must reproduce "
             "(`same drop` = within one point); its speed-ups belong to that CPU, so on another "
             "CPU they are context, not a target.", "",
             "| model | runtime | edgekit int8: drop, speed-up | native int8: drop, speed-up "
             "| hand baseline | same drop | latency edgekit / native |",
             "|---|---|---|---|---|---|---|"]
    for rep in doc["models"]:
        cells = rep.get("cells", {})
        for rt in RUNTIMES:
            e, n = cells.get(f"int8/{rt}", {}), cells.get(f"native_int8/{rt}", {})
            hand = HAND_BASELINE.get((rep["model"], rt))
            ratio = (f"{e['median_ms'] / n['median_ms']:.2f}" if e.get("median_ms")
                     and n.get("median_ms") else "-")
            same = "-"
            if hand and n.get("metric_drop") is not None:
                same = "yes" if abs(n["metric_drop"] - (0.0 - hand[0])) <= 1.0 else "no"
            lines.append(
                f"| {rep['model']} | {RT_LABEL[rt]} | {_pair(rep, e)} | {_pair(rep, n)} | "
                + (f"{0.0 - hand[0]:+.1f} drop, {hand[1]:.2f}x" if hand else "-")
                + f" | {same} | {ratio} |")
    return lines + [""]


def _pair(rep: dict[str, Any], c: dict[str, Any]) -> str:
    if c.get("status") != "ok" or c.get("median_ms") is None:
        return _short(c.get("status", "not run"))
    return f"{_metric_fmt(rep, c.get('metric_drop'))}, {_fmt(c.get('speedup_vs_fp32'))}x"


def _model_section(rep: dict[str, Any]) -> list[str]:
    if "cells" not in rep:
        return [f"### {rep['model']}", "", f"Not run: {rep.get('error')}", ""]
    pr = rep.get("pruning", {})
    head = [f"### {rep['model']} ({rep['task']}, {rep['metric']}; PyTorch fp32 "
            f"{_metric_fmt(rep, rep['pytorch_fp32'])}, {rep['train']['epochs']} epochs)", ""]
    if "macs" in pr:
        head.append(f"Pruning: {pr['macs'][0] / 1e6:.3f} M -> {pr['macs'][1] / 1e6:.3f} M MACs "
                    f"({pr['macs_reduction_x']:.2f}x), params {pr['params'][0] / 1e3:.1f} k -> "
                    f"{pr['params'][1] / 1e3:.1f} k; {rep['metric']} "
                    f"{_metric_fmt(rep, pr['metric_before'])} before, "
                    f"{_metric_fmt(rep, pr['metric_after_prune'])} right after pruning, "
                    f"{_metric_fmt(rep, pr['metric_after_fine_tune'])} after "
                    f"{pr['fine_tune_epochs']} epochs of distillation fine-tune.")
    elif pr.get("error"):
        head.append(f"Pruning failed: {pr['error']}")
    load = rep.get("timing_load")
    if load:
        busy = load["other_cores"] >= 0.25
        head.append(f"While timing ({load['seconds']} s), other processes kept "
                    f"{load['other_cores']} of {load['cores']} cores busy"
                    + (": the medians, OpenVINO's most, are distorted." if busy else "."))
    else:
        head.append("Other processes' CPU use while timing: not recorded in this run.")
    npr = rep.get("native_pruning")
    if npr:
        head.append(f"torch-pruning by hand: {npr['macs'][0] / 1e6:.3f} M -> "
                    f"{npr['macs'][1] / 1e6:.3f} M MACs; {rep['metric']} "
                    f"{_metric_fmt(rep, npr['metric_after_prune'])} right after, "
                    f"{_metric_fmt(rep, npr['metric_after_fine_tune'])} after plain fine-tune.")
    lines = head + ["", "| runtime | variant | metric (drop) | fidelity cos / SQNR dB | size kB "
                    "| median ms | p90 ms | speed-up | GOP/s | % peak | executed | note |",
                    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for rt in RUNTIMES:
        for variant in VARIANTS + NATIVE:
            c = rep["cells"].get(f"{variant}/{rt}", {})
            if c.get("status") != "ok":
                lines.append(f"| {RT_LABEL[rt]} | {variant} | {_short(c.get('status', '?'))} "
                             "| | | | | | | | | |")
                continue
            f = c.get("fidelity") or {}
            note = []
            if c.get("same_as"):
                note.append(f"same file as {c['same_as'].split('/')[0]}")
            if c.get("float_layers"):
                note.append(f"float: {', '.join(c['float_layers'])}")
            if c.get("openvino_source"):
                note.append(f"from {c['openvino_source'].upper()}")
            if c.get("dynamic_range_nodes"):
                note.append(f"dynamic-range: {c['dynamic_range_nodes']}")
            if c.get("noisy"):
                note.append("noisy")
            lat = c.get("latency_check") or {}
            if lat.get("slower_than_fp32"):
                note.append("int8 slower than fp32 (flagged at build)")
            lines.append(
                f"| {RT_LABEL[rt]} | {variant} | {_metric_fmt(rep, c.get('metric'))} "
                f"({_metric_fmt(rep, c.get('metric_drop'))}) | {_fmt(f.get('cosine_min'), '.4f')}"
                f" / {_fmt(f.get('sqnr_db'), '.1f')} | {_fmt(c.get('size_bytes', 0) / 1024, '.1f')}"
                f" | {_fmt(c.get('median_ms'), '.4f')} | {_fmt(c.get('p90_ms'), '.4f')} | "
                f"{_fmt(c.get('speedup_vs_fp32'))}x | {_fmt(c.get('gops'), '.2f')} | "
                f"{_fmt(c.get('percent_of_peak'), '.2f')} | {c.get('executed_precision') or '-'}"
                f" | {'; '.join(note)[:140]} |")
    return lines + [""]


def plots(doc: dict[str, Any], out: Path) -> list[str]:
    """suite_speedup.png: speed-up over fp32 per model, variant and runtime."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    models = [r for r in doc["models"] if "cells" in r]
    if not models:
        return []
    variants = ("pruned", "int8", "pruned_int8", "native_int8")
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(models) + 2.2), sharey=True)
    for ax, rt in zip(axes, RUNTIMES):
        y = np.arange(len(models))
        for k, v in enumerate(variants):
            vals = [r["cells"].get(f"{v}/{rt}", {}).get("speedup_vs_fp32") or 0 for r in models]
            ax.barh(y + (k - 1.5) * 0.2, vals, height=0.2, label=v)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(RT_LABEL[rt])
        ax.set_yticks(y, [r["model"] for r in models])
        ax.set_xlabel("speed-up over fp32 (x)")
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "suite_speedup.png", dpi=80)
    plt.close(fig)
    return ["suite_speedup.png"]


def readme_section(doc: dict[str, Any]) -> str:
    """The README's performance section: the overview and the losses, from the results."""
    text = to_markdown(doc)
    overview = text.split("## Overview", 1)[1].split("## Per model", 1)[0]
    peak = doc["peak"]
    return ("Generated by `make bench` from "
            "[benchmarks/results/suite.md](benchmarks/results/suite.md) "
            f"({doc['meta']['machine']['cpu']}, {doc['meta']['threads']} thread per runtime; "
            f"measured peak fp32 {peak['fp32']['ops_per_s'] / 1e9:.1f} GFLOP/s, int8 "
            f"{peak['int8']['ops_per_s'] / 1e9:.1f} GOP/s).\n\n### Overview" + overview)


def write_report(out: Path, mode: str, readme: bool) -> dict[str, Any]:
    run_dir = out / "suite"
    meta = json.loads((run_dir / "_meta.json").read_text())
    models = []
    for name in meta["models"]:
        f = run_dir / f"{name}.json"
        models.append(json.loads(f.read_text()) if f.is_file()
                      else {"model": name, "error": "not measured yet: the run stopped before "
                            "this model (`python -m benchmarks.suite --full --resume` goes on)"})
    for rep in models:  # % of peak against the peak on record (it may be re-measured)
        for key, cell in rep.get("cells", {}).items():
            peak = meta["peak"]["int8" if "int8" in key.split("/")[0] else "fp32"]["ops_per_s"]
            if cell.get("gops") and peak:
                cell["percent_of_peak"] = round(100.0 * cell["gops"] * 1e9 / peak, 3)
    doc = {"schema": "edgekit.suite", "version": 1, "meta": meta, "peak": meta["peak"],
           "models": models}
    (out / "suite.json").write_text(json.dumps(doc, indent=1, default=json_default) + "\n")
    (out / "suite.md").write_text(to_markdown(doc))
    doc["plots"] = plots(doc, out)
    if readme:
        update_readme_section("performance", readme_section(doc))
    return doc


def json_default(v: Any) -> Any:
    """``json.dumps`` default: numpy scalars as numbers, NaN/inf and anything else as text."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)
