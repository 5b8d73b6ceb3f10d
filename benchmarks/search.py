"""edgekit search vs the default int8 build, and trials per hour on one and two Ray nodes.

    python benchmarks/search.py [--models mobilenet_v2] [--target x86-onnxruntime-int8]
                                [--trials 12] [--max-drop 1.0] [--runs 200]
                                [--out build/bench-search]

For each model: the base model is trained once (the search's own base, reused by both runs);
the default int8 build (``edgekit.compress`` with the target profile's quantization settings,
no pruning) is the baseline. A search runs on a one-node Ray cluster (one CPU, the timing
resource) and again, from an empty study, on a two-node cluster (a second one-CPU node joins
on loopback): complete trials over their span (first start to last finish, from the study)
give trials per hour for each. Finally the chosen
points of both searches and the default build are timed together, interleaved, by the bench
harness; the speedup of the best chosen point over the default int8 build is reported, with
the shortfall when it is under 1.3x.

A realistic-scale zoo entry is searched the same way, e.g.
``--models mobilenet_v2,mobilenet_v2_glyphs`` (it trains for minutes first).

Both clusters run on this machine with ``RAY_AUTH_MODE=disabled`` (loopback only) and are
stopped afterwards (each process by id). Writes benchmarks/results/search.{json,md}. Numbers
are measured, not asserted; quote ratios (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.3


def log(msg: str) -> None:
    print(f"[search-bench] {msg}", file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """``ray start --head`` (+ ``nodes - 1`` workers) on loopback, one CPU each; the head
    holds ``timing:local``. Stopped by killing the processes that name its temp dir."""

    def __init__(self, nodes: int) -> None:
        self.temp = tempfile.mkdtemp(prefix="rkb", dir="/tmp")
        self.port = _port()
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                  "--object-store-memory", "200000000"]
        subprocess.run([ray, "start", "--head", "--port", str(self.port), "--temp-dir",
                        self.temp, "--include-dashboard", "false", "--resources",
                        '{"timing:local": 1}', *common], env=_env(), check=True,
                       capture_output=True, timeout=180)
        for i in range(nodes - 1):
            subprocess.run([ray, "start", "--address", self.address, "--resources",
                            json.dumps({f"worker_{i}": 1}), *common], env=_env(), check=True,
                           capture_output=True, timeout=180)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        import psutil

        procs: dict[int, Any] = {}
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and self.temp in " ".join(p.cmdline()):
                    procs[p.pid] = p
                    procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                continue
        for p in procs.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(list(procs.values()), timeout=15)
        shutil.rmtree(self.temp, ignore_errors=True)


def run_search(model: str, target: str, out: Path, nodes: int, args: argparse.Namespace
               ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgekit", "search", model, "-t", target, "-o", str(out),
           "--trials", str(args.trials), "--max-drop", str(args.max_drop), "--runs",
           str(args.runs), "--json", "--quiet"]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    cluster = LocalCluster(nodes)
    try:
        cmd += ["--address", cluster.address]
        log(f"{model}: search on {nodes} node(s), {args.trials} trials")
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        cluster.stop()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"search failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    t = report["targets"][target]
    done = [r for r in t["trials"] if r["state"] == "complete"]
    # the trials' own span (first start to last finish): Ray start-up, the base model's
    # training and the reports are left out
    from datetime import datetime

    span = (max(datetime.fromisoformat(r["finished"]) for r in done)
            - min(datetime.fromisoformat(r["started"]) for r in done)).total_seconds() \
        if done else 0.0
    chosen = next((r for r in t["trials"] if r["trial"] == t["chosen"]), None)
    return {"nodes": nodes, "wall_s": wall, "trials_span_s": span, "complete": len(done),
            "chosen_point": None if chosen is None else {
                k: chosen.get(k) for k in ("point", "latency_ms", "accuracy", "drop")},
            "trials": [{k: r.get(k) for k in ("trial", "state", "point", "latency_ms",
                                               "accuracy", "drop")} for r in t["trials"]],
            "trials_per_hour": 3600 * len(done) / span if span > 0 else None,
            "chosen": t["chosen"], "bundle": t.get("bundle"), "message": t.get("message"),
            "pareto": t["pareto"], "report": str(out / "search.md")}


def default_int8(model: str, target: str, base: dict[str, Any], out: Path) -> Path:
    """The default int8 build of the search's base model (no pruning, profile defaults)."""
    import torch

    import edgekit
    from edgekit.models import get_spec

    spec = get_spec(model)
    net = spec.factory()
    net.load_state_dict(torch.load(base["weights"], weights_only=True))
    net.eval()
    edgekit.compress(net, spec.example_inputs(1), targets=[target], out_dir=out, name=model,
                     input_names=spec.input_names, output_names=spec.output_names,
                     task=spec.task(), progress=False, overwrite=True)
    return out


def _portable(obj: Any, root: Path) -> Any:
    """``obj`` with this machine's paths under the work folder written as ``<out>/...`` (the
    results do not depend on where the run kept its files)."""
    prefixes = sorted({str(root), str(root.resolve())}, key=len, reverse=True)
    if isinstance(obj, dict):
        return {_portable(k, root): _portable(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable(v, root) for v in obj]
    if isinstance(obj, str):
        for p in prefixes:
            if obj.startswith(p):
                return "<out>" + obj[len(p):]
    return obj


def _chosen(run: dict[str, Any]) -> str:
    """The chosen trial's settings and numbers, and how the other trials ended."""
    states: dict[str, int] = {}
    for t in run.get("trials") or []:
        states[t["state"]] = states.get(t["state"], 0) + 1
    ended = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "trials not recorded"
    c = run.get("chosen_point")
    if not c:
        return f"trial {run.get('chosen')} ({ended})"
    p = c.get("point") or {}
    changed = ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if not k.startswith("quant."))
    drop = c.get("drop")
    return (f"trial {run['chosen']}: {changed}; {_ms(c.get('latency_ms'))} ms, accuracy "
            f"{_ms(c.get('accuracy'))} (drop {'-' if drop is None else f'{drop:.2f}'}); "
            f"trials: {ended}")


def _per_hour(run: dict[str, Any] | None) -> str:
    if not run:
        return "not run"
    return "-" if run.get("trials_per_hour") is None else f"{run['trials_per_hour']:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def markdown(results: dict[str, Any]) -> str:
    """search.md from search.json's content."""
    lines = ["# Search vs the default int8 build", "",
             "Per model: a search from an empty study on each Ray cluster size named (one "
             "CPU per node; `not run`: that size was not searched), budget in metric points; "
             "latency: the bench harness, the default build and the chosen points timed "
             "interleaved in one run. Trial 0 of every search is the default settings (no "
             "pruning, the profile's threads and quantization).", "",
             "| model | target | complete trials | budget | machine | default int8 ms | best "
             "searched ms | speedup | goal 1.3x | trials/h 1 node | trials/h 2 nodes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in results["models"].items():
        st, mc = r["settings"], r["machine"]
        sp = r["speedup"]
        goal = "met" if r["meets_goal"] else (
            f"short by {r['shortfall']:.2f}x" if r["shortfall"] is not None else "no point")
        lines.append(f"| {m} | {st['target']} | {st['trials']} | {st['max_drop']} | "
                     f"{mc['cpu']} ({mc['cpus']} cores) | {_ms(r['default_int8_ms'])} | "
                     f"{_ms(r['best_search_ms'])} | "
                     f"{'-' if sp is None else f'{sp:.2f}x'} | {goal} | "
                     f"{_per_hour(r['search'].get('1'))} | {_per_hour(r['search'].get('2'))} |")
    lines += ["", "Chosen points (the search's own timing, per trial; the table above times "
              "them again beside the default build):", ""]
    for m, r in results["models"].items():
        for nodes, run in sorted(r["search"].items()):
            lines.append(f"- {m}, {nodes} node(s): {_chosen(run)}"
                         + ("; resumed from the study of a run stopped earlier (--resume)"
                            if r["settings"].get("resume") else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2")
    ap.add_argument("--target", default="x86-onnxruntime-int8")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--resume", action="store_true",
                    help="continue the searches' studies in --out instead of starting empty "
                         "ones (a search with --trials complete trials only reports)")
    ap.add_argument("--report", action="store_true",
                    help="only write search.md again from the results folder's search.json")
    ap.add_argument("--nodes", default="1,2",
                    help="cluster sizes to search on, one search each (default 1,2)")
    ap.add_argument("--out", default="build/bench-search")
    ap.add_argument("--results", default=str(RESULTS),
                    help="folder for search.json / search.md (default benchmarks/results)")
    ap.add_argument("--fresh", action="store_true",
                    help="drop the other models' rows of an existing search.json (default: "
                         "this run's models replace theirs, the rest are kept)")
    args = ap.parse_args()
    if args.report:
        folder = Path(args.results)
        (folder / "search.md").write_text(
            markdown(json.loads((folder / "search.json").read_text())))
        return

    import torch

    import edgekit
    from edgekit.search.source import ModelSource
    from edgekit.search.trial import prepare_base

    torch.set_num_threads(1)
    root = Path(args.out)
    from benchmarks.common import cpu_name

    machine = {"cpu": cpu_name(), "python": platform.python_version(), "cpus": os.cpu_count()}
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "results", "fresh", "models", "report")}
    results: dict[str, Any] = {"goal_speedup": GOAL, "models": {}}
    results_dir = Path(args.results)
    old = results_dir / "search.json"
    if old.is_file() and not args.fresh:
        kept = json.loads(old.read_text()).get("models", {})
        results["models"] = {m: r for m, r in kept.items() if "settings" in r}
    for model in [m for m in args.models.split(",") if m]:
        base_dir = root / model
        runs: dict[str, Any] = {}
        kept = base_dir / "base"  # the trained base, reused by both searches and a rerun
        for nodes in sorted({int(n) for n in args.nodes.split(",")}):
            out = base_dir / f"nodes{nodes}"
            if not kept.is_dir() and (out / "base").is_dir():
                shutil.copytree(out / "base", kept)
            if not (args.resume and (out / "study.db").is_file()):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                if kept.is_dir():  # the search retrains when its settings differ from the base's
                    shutil.copytree(kept, out / "base")
            runs[str(nodes)] = run = run_search(model, args.target, out, nodes, args)
            if not kept.is_dir() and (out / "base").is_dir():
                shutil.copytree(out / "base", kept)
            log(f"{model}: {run['trials_per_hour']:.1f} trials/h on {nodes} node(s)")
        src = ModelSource.resolve(model, epochs=args.epochs)
        base = prepare_base(src, base_dir, progress=False)  # the kept base (base_dir/base)
        default = default_int8(model, args.target, base, base_dir / "default-int8")
        sources = [default] + [Path(r["bundle"]) for r in runs.values() if r["bundle"]]
        bench = edgekit.bench(sources, runs=args.runs, memory=False, progress=False)
        key = {str(Path(row["source"]).resolve()): row for row in bench["results"]}
        lat = {k: r["latency"]["median_ms"] for k, r in key.items() if r.get("latency")}
        acc = {k: (r.get("accuracy") or {}).get("value") for k, r in key.items()}
        d = lat.get(str(default.resolve()))
        found = [lat[str(s.resolve())] for s in sources[1:] if str(s.resolve()) in lat]
        best = min(found) if found else None
        speedup = d / best if d and best else None
        results["models"][model] = {
            "machine": machine, "settings": settings, "base_metric": base["test"],
            "metric": base["metric"], "search": runs,
            "default_int8_ms": d, "best_search_ms": best, "speedup": speedup,
            "accuracy": acc, "meets_goal": bool(speedup and speedup >= GOAL),
            "shortfall": None if speedup is None or speedup >= GOAL else GOAL - speedup}
        log(f"{model}: default int8 {d} ms, best searched {best} ms, speedup {speedup}")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "search.json").write_text(
        json.dumps(_portable(results, root), indent=2, default=str) + "\n")
    (results_dir / "search.md").write_text(markdown(results))
    log(f"written {results_dir / 'search.md'}")


if __name__ == "__main__":
    main()
