"""The benchmark suite: every zoo model on its real task x {fp32, pruned, int8, pruned + int8}
x {ONNX Runtime, OpenVINO, TFLite}, beside each runtime's own default flow, against this
machine's measured arithmetic peak.

    python -m benchmarks.suite --full      # the committed results (make bench)
    python -m benchmarks.suite --quick     # a smoke run: two models, few epochs and runs
    python -m benchmarks.suite --report    # re-render the tables from the per-model JSON

Per model, all sessions (edgekit's and the native flows', all three runtimes) are timed side
by side in one interleaved run with the same thread count; accuracy is the task's metric on
the test split; fidelity compares every artifact's test outputs with the fp32 PyTorch model's.
Writes ``<out>/suite/<model>.json`` as each model finishes (a rerun with ``--resume`` skips
finished models), then ``<out>/suite.{json,md}`` and ``<out>/suite_*.png``; ``--readme``
rewrites the README's performance section from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgekit.bench.peak import measure_peak  # noqa: E402
from edgekit.models import list_models  # noqa: E402

from _readme import RESULTS  # noqa: E402
from common import log  # noqa: E402
from suite_report import json_default, machine, write_report  # noqa: E402
from suite_run import MODES, failure_reason, run_model  # noqa: E402


def _say(msg: str) -> None:
    log("suite", msg)


def _remeasure_peak(meta_path: Path) -> None:
    meta = json.loads(meta_path.read_text())
    again = measure_peak(meta["threads"])
    for precision in ("fp32", "int8"):
        old, new = meta["peak"][precision], again[precision]
        if (new["ops_per_s"] or 0) > (old["ops_per_s"] or 0):
            new["note"] = (f"measured again after the run ({time.strftime('%Y-%m-%d')}); "
                           f"the run's own start measured {old['ops_per_s'] / 1e9:.1f} G/s")
            meta["peak"][precision] = new
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    for k, v in meta["peak"].items():
        if isinstance(v, dict):
            _say(f"peak {k}: {v['ops_per_s'] / 1e9:.1f} G/s ({v['kernel']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite",
                                 description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="the committed results (default)")
    g.add_argument("--quick", action="store_true", help="smoke run: two models, few runs")
    g.add_argument("--report", action="store_true", help="only re-render from the JSON files")
    ap.add_argument("--models", help="comma-separated subset (default: the mode's models)")
    ap.add_argument("--runs", type=int, help="timed rounds per artifact (default: the mode's)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--resume", action="store_true", help="skip models already measured")
    ap.add_argument("--readme", action="store_true", help="rewrite README's performance section")
    ap.add_argument("--remeasure-peak", action="store_true",
                    help="with --report: measure the peak again now and keep the higher one "
                    "(for a run whose start coincided with other load)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    run_dir = out / "suite"
    if args.report:
        if args.remeasure_peak:
            _remeasure_peak(run_dir / "_meta.json")
        write_report(out, "", args.readme)
        print((out / "suite.md").read_text())
        return 0
    mode = MODES["quick" if args.quick else "full"]
    if args.models:
        unknown = [m for m in args.models.split(",") if m not in list_models()]
        if unknown:
            ap.error(f"unknown model(s) {unknown}; known: {list_models()}")
        mode.models = tuple(args.models.split(","))
    if args.runs:
        mode.runs = args.runs
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    meta_path = run_dir / "_meta.json"
    if args.resume and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta["models"] = list(dict.fromkeys(meta["models"] + list(mode.models)))
    else:
        for old in run_dir.glob("*.json"):
            old.unlink()
        _say(f"measuring this machine's peak ({mode.threads} thread)")
        meta = {"mode": mode.name, "threads": mode.threads, "runs": mode.runs,
                "warmup": mode.warmup, "machine": machine(),
                "peak": measure_peak(mode.threads), "models": list(mode.models),
                "settings": {k: v for k, v in asdict(mode).items() if k != "models"},
                "started": time.strftime("%Y-%m-%d")}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    with tempfile.TemporaryDirectory(prefix="edgekit-suite-") as tmp:
        for name in mode.models:
            if args.resume and (run_dir / f"{name}.json").is_file():
                continue
            _say(f"{name} ...")
            try:
                rep = run_model(name, mode, Path(tmp), meta["peak"])
            except KeyboardInterrupt:
                _say("interrupted: finished models are kept; rerun with --resume")
                break
            except Exception as exc:
                traceback.print_exc()
                rep = {"model": name, "error": failure_reason(exc)}
            (run_dir / f"{name}.json").write_text(
                json.dumps(rep, indent=1, default=json_default) + "\n")
            write_report(out, mode.name, args.readme)
            _say(f"{name}: done in {rep.get('seconds', '?')} s")
    write_report(out, mode.name, args.readme)
    print((out / "suite.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
