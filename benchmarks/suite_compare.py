"""Do the committed suite numbers reproduce? One suite run (a folder of per-model JSON files)
against another, cell by cell.

    python -m benchmarks.suite --models cnn,resnet8 --out <rerun>
    python benchmarks/suite_compare.py <rerun>/suite [--base benchmarks/results/suite]

Per cell (model x variant x runtime) it compares the task metric and the median latency.
- **metric**: the same recipe gives the same bytes (int8 included), so the metric must be equal
  (to 0.01 points); a difference is a reproduction failure, not noise.
- **speed-up** over the same runtime's fp32 (what the suite reports; both timed side by side in
  one run, so a machine that is faster or slower on the day moves them alike). How much a
  speed-up moves between two runs by noise alone is read from the runtimes' own flows in the
  same runs (the ``native_*`` cells: the runtime's default quantizer and a hand-made pruning,
  no edgekit code): the model's **noise** is the largest relative change of its native cells'
  speed-ups (at least 5%). A cell reproduces within noise when its speed-up moved no more than
  that.
- **absolute medians** are listed with their change, for context.
- An int8 build's latency-driven choices (OpenVINO's source, the variant the latency check
  kept, the layers kept in float for speed) are timed on the machine at build time; a fresh
  build may choose otherwise (a rebuild given the recorded decisions does not). A cell whose
  metric or speed-up moved with a different choice is marked so, not as noise.

Writes benchmarks/results/suite_reproduce.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _cells(folder: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(folder.glob("*.json")):
        if f.name.startswith("_"):
            continue
        data = json.loads(f.read_text())
        for key, cell in (data.get("cells") or {}).items():
            out[f"{data['model']}/{key}"] = cell
    return out


NOISE_FLOOR = 0.05


def _change(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    sa, sb = a.get("speedup_vs_fp32"), b.get("speedup_vs_fp32")
    if a.get("status") != "ok" or b.get("status") != "ok" or not sa or not sb:
        return None
    return abs(float(sb) - float(sa)) / float(sa)


def _choice(cell: dict[str, Any]) -> tuple[Any, ...]:
    return (cell.get("openvino_source"), (cell.get("latency_check") or {}).get("chosen"),
            tuple(cell.get("float_layers") or ()))


def compare_cell(a: dict[str, Any], b: dict[str, Any], noise: float = NOISE_FLOOR
                 ) -> dict[str, Any]:
    """One cell of two runs: metric equality, and the speed-up's relative change against
    ``noise`` (the model's native cells' largest change)."""
    row: dict[str, Any] = {"status": (a.get("status"), b.get("status"))}
    if a.get("status") != "ok" or b.get("status") != "ok":
        row["verdict"] = "same status" if a.get("status") == b.get("status") else "status differs"
        return row
    ma, mb = a.get("metric"), b.get("metric")
    row["metric"] = (ma, mb)
    metric_ok = ma is None or mb is None or abs(float(ma) - float(mb)) <= 0.01
    la, lb = a.get("median_ms"), b.get("median_ms")
    row["median_ms"] = (la, lb)
    if la and lb:
        row["delta_pct"] = round(100 * (lb - la) / la, 1)
    row["speedup"] = (a.get("speedup_vs_fp32"), b.get("speedup_vs_fp32"))
    change = _change(a, b)
    latency_ok = True
    if change is not None:
        row["speedup_change_pct"] = round(100 * change, 1)
        row["noise_pct"] = round(100 * noise, 1)
        latency_ok = change <= noise
    same_choice = _choice(a) == _choice(b)
    if not same_choice:
        row["choices"] = (_choice(a), _choice(b))
    row["verdict"] = ("reproduces" if metric_ok and latency_ok else
                      "another latency-driven choice" if not same_choice else
                      "metric differs" if not metric_ok else "speed-up outside noise")
    return row


def model_noise(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], model: str
                ) -> float:
    """The largest relative speed-up change of ``model``'s native cells between the runs."""
    changes = [c for k in a if k.startswith(f"{model}/native_") and k in b
               and (c := _change(a[k], b[k])) is not None]
    return max([NOISE_FLOOR, *changes])


def _machine(folder: Path) -> str | None:
    """The CPU a suite run names in its ``_meta.json`` (None when it names none)."""
    meta = folder / "_meta.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text()).get("machine") or {}
    return f"{m.get('cpu')} ({m.get('cores')} cores)" if m.get("cpu") else None


def compare(base: Path, rerun: Path) -> dict[str, Any]:
    a, b = _cells(base), _cells(rerun)

    common = sorted(set(a) & set(b))
    noise = {m: model_noise(a, b, m) for m in {k.split("/")[0] for k in common}}
    rows = {k: compare_cell(a[k], b[k], noise[k.split("/")[0]]) for k in common}
    for k, r in rows.items():
        if "/native_" in k and r["verdict"] == "reproduces":
            r["verdict"] = "control (sets the noise)"
    counts: dict[str, int] = {}
    for r in rows.values():
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    committed = base.resolve() == (RESULTS / "suite").resolve()
    return {"base": "committed" if committed else "another run", "machine": _machine(rerun),
            "rerun_models": sorted(noise), "counts": counts,
            "noise_pct": {m: round(100 * v, 1) for m, v in sorted(noise.items())},
            "cells": rows}


def markdown(result: dict[str, Any], note: str) -> str:
    lines = ["# Do the suite numbers reproduce?", "",
             f"{'Committed suite cells' if result['base'] == 'committed' else 'One suite run'}"
             f" against a second run of the same recipes "
             f"({', '.join(result['rerun_models'])})"
             f"{', on ' + result['machine'] if result.get('machine') else ''}. {note} "
             "Metric: must be equal (same bytes). Speed-up over the runtime's fp32 (timed side "
             "by side in each run): "
             "within noise when its relative change is no larger than the model's noise, the "
             "largest change of the speed-ups of the runtimes' own flows (`native_*` cells, no "
             "edgekit code) between the same two runs (at least 5%). `median change`: the "
             "absolute latency change, for context.", "",
             "Noise per model: " + ", ".join(f"{m} {v}%" for m, v in
                                             result["noise_pct"].items()), "",
             "Verdicts: " + ", ".join(f"{v} {n}" for v, n in sorted(result["counts"].items())),
             "", "| cell | metric | median ms | median change | speed-up vs fp32 | change | noise "
             "| verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in result["cells"].items():
        if "median_ms" not in r:
            lines.append(f"| {key} | | | | | | | {r['verdict']} ({r['status'][0]}) |")
            continue
        m = r["metric"]
        med = r["median_ms"]
        sp = r["speedup"]
        lines.append(
            f"| {key} | {m[0]} / {m[1]} | {med[0]} / {med[1]} | {r.get('delta_pct', '-')}% | "
            f"{sp[0]} / {sp[1]} | {r.get('speedup_change_pct', '-')}% | "
            f"{r.get('noise_pct', '-')}% | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rerun", type=Path, help="folder of the second run's per-model JSON files")
    ap.add_argument("--base", type=Path, default=RESULTS / "suite")
    ap.add_argument("--note", default="", help="a sentence on how the rerun was made")
    args = ap.parse_args()
    result = compare(args.base, args.rerun)
    if not result["cells"]:
        print(f"no cell is in both {args.base} and {args.rerun}", file=sys.stderr)
        return 2
    result["note"] = args.note
    (RESULTS / "suite_reproduce.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "suite_reproduce.md").write_text(markdown(result, args.note))
    print(json.dumps(result["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
