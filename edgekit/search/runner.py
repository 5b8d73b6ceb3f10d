"""``edgekit search``: Optuna proposes points, Ray builds and times them, the study keeps them.

The loop keeps as many trials in flight as the cluster has CPUs: each is a build task (any
node) then a timing task (the node with the target's timing resource); a finished trial is
told to its study at once. When every target has ``trials`` complete trials, the points within
the budget are timed again together on each target's device (the choice is made on those
side-by-side numbers), the reports are written and the chosen point's bundle is copied to
``OUT/best/<target>`` and verified.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import EdgekitError, UsageError
from .report import Budget, rows_from_trials, target_report, write_reports

__all__ = ["BudgetNotMetError", "Progress", "search"]


class BudgetNotMetError(EdgekitError):
    """No point of some target met the budget; the reports (front, closest point) are
    written. ``report`` holds them."""

    exit_code = 1

    def __init__(self, message: str, *, report: dict[str, Any], hint: str | None = None
                 ) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class Progress:
    """``[edgekit search] 3/8 trials (37%), 1 failed, ETA 1m20s`` lines on stderr."""

    def __init__(self, total: int, done: int, enabled: bool,
                 clock: Callable[[], float] = time.monotonic, unit: str = "trials",
                 prefix: str = "search") -> None:
        self.total, self.done, self.failed = total, done, 0
        self.unit, self.prefix = unit, prefix
        self.enabled, self.clock = enabled, clock
        self.start, self.start_done = clock(), done

    def eta_s(self) -> float | None:
        """Seconds left at this session's pace so far; None before the first trial ends."""
        finished = self.done - self.start_done
        if finished <= 0:
            return None
        return (self.clock() - self.start) / finished * max(0, self.total - self.done)

    def line(self) -> str:
        eta = self.eta_s()
        eta_s = "ETA -" if eta is None else f"ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        pct = 100 * self.done // max(1, self.total)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done}/{self.total} {self.unit} ({pct}%){failed}, {eta_s}"

    def say(self, msg: str) -> None:
        if self.enabled:
            print(f"[edgekit {self.prefix}] {msg}", file=sys.stderr, flush=True)

    def step(self, msg: str, *, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.say(f"{msg} - {self.line()}")


def _copy_best(src: Path, dest: Path) -> Path:
    """Copy a trial's bundle to ``dest`` atomically (a temporary copy renamed into place)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def search(
    model: str | Path,
    *,
    targets: Sequence[str | Path],
    out_dir: str | Path,
    trials: int = 20,
    max_drop: float = 1.0,
    max_size_bytes: int | None = None,
    max_latency_ms: float | None = None,
    space: Mapping[str, Any] | None = None,
    address: str | None = None,
    devices: Mapping[str, str] | None = None,
    epochs: int | None = None,
    fine_tune_epochs: int = 1,
    seed: int = 0,
    input_shapes: Sequence[str] | None = None,
    data: str | Path | None = None,
    val_data: str | Path | None = None,
    input_keys: Sequence[str] | None = None,
    target_key: str = "y",
    runs: int = 100,
    warmup: int = 10,
    max_failures: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Search pruning, quantization and runtime settings per target; return the report.

    ``model``: a zoo model name, a trained user model ``module:factory`` with its
    ``input_shapes`` and task ``data`` (``.npz``: ``x`` (or ``input_keys``) and ``target_key``;
    integer targets: classification, float: regression; ``val_data`` scores the points,
    default the last fifth of ``data``), or a recipe ``.toml`` of either (a search scores
    every point on the model's task; :mod:`edgekit.search.source`). ``targets``: target
    profile names or files. For each target the search runs ``trials`` complete trials (a
    point built, verified, scored, then timed on the target's device) and reports the Pareto
    front of (median latency, task metric, size); the chosen point is the fastest within the
    budget (``max_drop`` metric points against the unpruned PyTorch model, optional
    ``max_size_bytes`` and ``max_latency_ms``) and its verified bundle is copied to
    ``out_dir/best/<target>``.

    ``space``: see :mod:`edgekit.search.space`. ``address``: an existing Ray cluster
    (``HOST:PORT``); default: an embedded Ray on this machine. ``devices``: target name ->
    ``[user@]host[:port]`` of a remote device to time on (Ray resource ``board:<host>``).
    The study lives in ``out_dir/study.db``: running the same call again resumes it.

    Raises :class:`BudgetNotMetError` (after writing the reports) when a target has no point
    within the budget. Example::

        report = edgekit.search("cnn", targets=["x86-onnxruntime-int8"], out_dir="build/s",
                                trials=8, max_drop=1.0)
        print(report["targets"]["x86-onnxruntime-int8"]["chosen"])
    """
    from ..profiles import resolve_targets
    from . import study as st
    from .scheduler import Cluster, timing_resource
    from .source import ModelSource
    from .space import SearchSpace
    from .trial import prepare_base

    if int(trials) < 1:
        raise UsageError(f"trials must be >= 1, got {trials}")
    if max_drop < 0:
        raise UsageError(f"max_drop must be >= 0 metric points, got {max_drop}")
    budget = Budget(float(max_drop), max_size_bytes, max_latency_ms)
    source = ModelSource.resolve(model, epochs=epochs, seed=seed,
                                 fine_tune_epochs=fine_tune_epochs,
                                 input_shapes=list(input_shapes or []) or None, data=data,
                                 val_data=val_data,
                                 input_keys=list(input_keys or []) or None,
                                 target_key=target_key)
    profiles = resolve_targets(list(targets))
    devices = dict(devices or {})
    unknown = sorted(set(devices) - {p.name for p in profiles})
    if unknown:
        raise UsageError(f"devices given for {', '.join(unknown)}, which are not among the "
                         f"targets ({', '.join(p.name for p in profiles)})")
    dims = SearchSpace.from_dict(space, max_threads=min(4, os.cpu_count() or 1))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    st.require_optuna()
    prog = Progress(trials * len(profiles), 0, progress)

    cluster = Cluster.connect(address, boards=devices)
    try:
        resource = {p.name: timing_resource(devices.get(p.name)) for p in profiles}
        for p in profiles:
            cluster.check_resource(resource[p.name], p.name)
        prog.say(f"Ray: {cluster.cpus} CPU(s), "
                 + ("embedded on this machine" if cluster.started_here
                    else f"cluster at {address}"))
        base = prepare_base(source, out, progress=progress)
        prog.say(f"base model {source.model}: {base['metric']} {base['test']:.4g} on the test "
                 "split")
        studies = {p.name: st.open_study(out, p.name, higher_is_better=base["higher_is_better"],
                                         seed=seed) for p in profiles}
        for name, study in studies.items():
            n = st.recover(study)
            if n:
                prog.say(f"{name}: {n} trial(s) interrupted by the last run: asked again")
            if not study.trials:  # a new study: the target's default build is its first point
                p = next(q for q in profiles if q.name == name)
                study.enqueue_trial(dims.default_point(p))
        prog.done = prog.start_done = sum(len(st.completed(s)) for s in studies.values())
        _loop(cluster, studies, {p.name: p for p in profiles}, dims, source, base, out,
              resource, devices, trials=trials, runs=runs, warmup=warmup,
              max_failures=max_failures if max_failures is not None else max(3, trials),
              prog=prog)
        retimed = _retime(cluster, studies, budget, resource, devices, runs=runs,
                          warmup=warmup, prog=prog)
    finally:
        cluster.close()
    return _finish(studies, profiles, base, budget, source, out, dims, prog, retimed)


#: At most this many points within the budget are timed again together at the end.
RETIME_MAX = 8


def _retime(cluster: Any, studies: dict[str, Any], budget: Budget, resource: dict[str, str],
            devices: dict[str, str], *, runs: int, warmup: int, prog: Progress
            ) -> dict[str, dict[str, Any]]:
    """The points within the budget (the fastest ``RETIME_MAX`` by their trial timing) of
    each target, timed again together, interleaved, on the target's device once every build
    is done. A trial was timed while other trials built (on one machine with several nodes
    they share its cores), so two trial timings were taken under different loads; the
    choice is made on the side-by-side numbers. Target -> ``{"latency_ms": {trial: ms}}``
    or ``{"error": ...}``; targets with fewer than two such points are left out."""
    from .trial import pack_bundle_dir, retime_points

    out: dict[str, dict[str, Any]] = {}
    for name, study in studies.items():
        rows = [r for r in rows_from_trials(study.get_trials(deepcopy=False))
                if r["state"] == "complete" and r["bundle"] and not budget.violations(r)
                and Path(r["bundle"], "manifest.json").is_file()]
        rows = sorted(rows, key=lambda r: (r["latency_ms"], r["trial"]))[:RETIME_MAX]
        if len(rows) < 2:
            continue
        prog.say(f"{name}: timing the {len(rows)} points within the budget again, together")
        job = {"target": name, "runs": runs, "warmup": warmup, "remote": devices.get(name),
               "points": [{"trial": r["trial"], "out": r["bundle"],
                           "bundle": pack_bundle_dir(Path(r["bundle"]))} for r in rows]}
        ref = cluster.submit_time(retime_points, job, resource[name])
        try:
            result = cluster.get(ref)
        except Exception as exc:  # noqa: BLE001 - the choice falls back to trial timings
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        if result["status"] == "failed":
            prog.say(f"{name}: timing the points again failed ({result['error']}); the "
                     "choice uses the trial timings")
            out[name] = {"error": str(result["error"])}
        else:
            out[name] = {"latency_ms": {int(k): float(v)
                                        for k, v in result["latency_ms"].items()},
                         "node": result.get("node"), "time_s": result.get("time_s")}
    return out


def _loop(cluster: Any, studies: dict[str, Any], profiles: dict[str, Any], dims: Any,
          source: Any, base: dict[str, Any], out: Path, resource: dict[str, str],
          devices: dict[str, str], *, trials: int, runs: int, warmup: int,
          max_failures: int, prog: Progress) -> None:
    from . import study as st
    from .trial import build_point, time_point

    inflight: dict[Any, tuple[str, str, Any, dict[str, Any], dict[str, Any] | None]] = {}
    failures = {n: 0 for n in studies}
    order = list(studies)
    turn = 0

    def todo(name: str) -> int:
        running = sum(1 for v in inflight.values() if v[1] == name)
        return trials - len(st.completed(studies[name])) - running

    while True:
        while len(inflight) < cluster.cpus:
            ready = [n for n in order if todo(n) > 0 and failures[n] < max_failures]
            if not ready:
                break
            name = ready[turn % len(ready)]
            turn += 1
            p = profiles[name]
            trial = studies[name].ask()
            point = dims.suggest(trial, p.backend, p.precision)
            job = {"source": source.to_json(), "base": base, "profile": p, "point": point,
                   "out": str((out / "trials" / name / f"{trial.number:04d}").resolve())}
            inflight[cluster.submit_build(build_point, job)] = ("build", name, trial, point,
                                                                 None)
        if not inflight:
            break
        done, _ = cluster.wait(list(inflight))
        ref = done[0]
        phase, name, trial, point, build = inflight.pop(ref)
        try:
            result = cluster.get(ref)
        except Exception as exc:  # the task itself failed, after Ray's retries
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        if result["status"] == "failed":
            failures[name] += 1
            st.record_failure(studies[name], trial, point, f"{phase}: {result['error']}",
                              node=result.get("node"))
            prog.step(f"{name} trial {trial.number} failed in {phase}: "
                      f"{str(result['error']).splitlines()[0][:200]}", ok=False)
            continue
        if phase == "build":
            job = {"out": result["out"], "bundle": result.pop("bundle"), "target": name,
                   "threads": result.get("threads"), "runs": runs, "warmup": warmup,
                   "remote": devices.get(name)}
            inflight[cluster.submit_time(time_point, job, resource[name])] = \
                ("time", name, trial, point, result)
            continue
        assert build is not None
        st.record_result(studies[name], trial, point, build, result)
        prog.step(f"{name} trial {trial.number}: {result['latency_ms']:.4g} ms, "
                  f"{base['metric']} {build['accuracy']:.4g}, {build['size_bytes']} B", ok=True)
    for name, n in failures.items():
        if n >= max_failures and todo(name) > 0:
            prog.say(f"{name}: stopped after {n} failed trials in this run")


def _finish(studies: dict[str, Any], profiles: list[Any], base: dict[str, Any], budget: Budget,
            source: Any, out: Path, dims: Any, prog: Progress,
            retimed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    from ..bundle_check import verify_bundle

    report: dict[str, Any] = {
        "schema": "edgekit.search", "schema_version": 1, "model": source.model,
        "metric": base["metric"], "higher_is_better": base["higher_is_better"],
        "base_metric": base["test"], "budget": budget.to_json(), "space": dims.to_json(),
        "study": str((out / "study.db").resolve()), "targets": {}}
    short: list[str] = []
    for p in profiles:
        rows = rows_from_trials(studies[p.name].get_trials(deepcopy=False))
        t = target_report(p.name, rows, budget, higher_is_better=base["higher_is_better"],
                          metric=base["metric"], base_metric=base["test"],
                          retimed=(retimed or {}).get(p.name))
        if t["chosen"] is not None:
            row = next(r for r in rows if r["trial"] == t["chosen"])
            dest = _copy_best(Path(row["bundle"]), out / "best" / p.name)
            check = verify_bundle(dest, targets=[p.name])
            t["bundle"] = str(dest)
            t["verified"] = bool(check["passed"])
            ms = row.get("retimed_ms") or row["latency_ms"]
            prog.say(f"{p.name}: chosen trial {t['chosen']} ({ms:.4g} ms, "
                     f"drop {row['drop']:+.3g}); bundle {dest} "
                     f"{'verified' if t['verified'] else 'FAILED verification'}")
        else:
            # a bundle chosen by an earlier run under another budget would mislead
            shutil.rmtree(out / "best" / p.name, ignore_errors=True)
            short.append(t["message"])
            prog.say(t["message"])
        report["targets"][p.name] = t
    report["files"] = write_reports(report, out)
    prog.say(f"reports written to {out}")
    if short:
        raise BudgetNotMetError("; ".join(short), report=report,
                                hint="the Pareto front is in search.md / search.json: relax "
                                "the budget (--max-drop, --max-size, --max-latency) or run "
                                "more trials (the study resumes)")
    return report
