"""``edgekit sweep``: a plain grid over a recipe's fields, each combination built by
:func:`edgekit.recipe.build_recipe` and each of its targets timed by the bench harness, on
Ray like a search (builds anywhere, timings where the target's timing resource is).

Grid keys are recipe keys, dotted for tables::

    grid = {"quantization.method": ["minmax", "entropy"], "prune.ratio": [0.25, 0.5]}

Every combination is checked as a recipe before anything runs. Results are appended to
``OUT/sweep.jsonl`` as each combination finishes; running the same sweep again skips the
combinations already there. Reports: ``sweep.json`` and ``sweep.md``.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EdgekitError, UsageError

__all__ = ["build_combination", "combinations", "sweep"]

RESULTS = "sweep.jsonl"


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"sweep key {dotted!r}: {part!r} is not a table in the recipe")
        node = child
    node[parts[-1]] = value


def combinations(raw: Mapping[str, Any], grid: Mapping[str, Sequence[Any]], *,
                 source: str = "<recipe>", base_dir: Path | None = None
                 ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (grid values, recipe dict) of the grid, each checked as a recipe (errors name
    the combination)."""
    from ..recipe import parse_recipe

    if not grid:
        raise UsageError("the sweep grid is empty", hint="e.g. --grid quantization.method="
                         "minmax,entropy")
    for key, given in grid.items():
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not given:
            raise ConfigError(f"sweep key {key!r}: give a non-empty list of values, "
                              f"got {given!r}")
    keys = list(grid)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values: dict[str, Any] = dict(zip(keys, combo))
        data = copy.deepcopy(dict(raw))
        for k, v in values.items():
            _set(data, k, v)
        try:
            parse_recipe(data, source=source, base_dir=base_dir)
        except EdgekitError as exc:
            raise ConfigError(f"sweep combination {values}: {exc.message}",
                              hint=exc.hint) from None
        out.append((values, data))
    return out


def _key(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def build_combination(job: dict[str, Any]) -> dict[str, Any]:
    """Build one combination's recipe into ``job["out"]`` (a Ray task); score each target on
    the zoo task's test split. Returns ``status``, per-target ``accuracy`` and
    ``size_bytes``, ``node``, the packed bundle."""
    import torch

    from ..bundle import load_bundle
    from ..measure.scoring import evaluate_session
    from ..recipe import build_recipe, parse_recipe
    from .trial import node_identity, pack_bundle_dir

    torch.set_num_threads(1)
    start = time.perf_counter()
    node = node_identity()
    out = Path(job["out"])
    try:
        recipe = parse_recipe(job["recipe"], source=job["source"],
                              base_dir=Path(job["base_dir"]))
        build_recipe(recipe, out, cache=False, progress=False, overwrite=True)
        bundle = load_bundle(out)
        targets: dict[str, Any] = {}
        task = None
        if recipe.is_zoo:
            from ..models import get_spec

            task = get_spec(recipe.model).task()
        for name in bundle.targets:
            entry = bundle.target(name)
            row: dict[str, Any] = {"size_bytes": int(sum(f.bytes or 0 for f in entry.files)),
                                   "accuracy": None}
            if task is not None:
                row["accuracy"] = evaluate_session(bundle.load(name), task.test, task)
            targets[name] = row
        result: dict[str, Any] = {"status": "built", "targets": targets,
                                  "bundle": pack_bundle_dir(out),
                                  "metric": None if task is None else task.metric}
    except EdgekitError as exc:
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    result.update(node=node, build_s=time.perf_counter() - start, out=str(out))
    return result


def sweep(
    recipe: str | Path,
    *,
    grid: Mapping[str, Sequence[Any]],
    out_dir: str | Path,
    address: str | None = None,
    devices: Mapping[str, str] | None = None,
    runs: int = 100,
    warmup: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Build and time every combination of ``grid`` over the recipe's fields; return the
    report (one row per combination and target: latency, metric, size, where it ran).

    Example::

        edgekit.sweep("cnn.toml", grid={"quantization.method": ["minmax", "entropy"]},
                      out_dir="build/sweep")
    """
    from ..recipe import load_recipe
    from .report import _atomic_text
    from .runner import Progress
    from .scheduler import Cluster, timing_resource
    from .trial import time_point

    rec = load_recipe(recipe)
    combos = combinations(rec.raw, grid, source=rec.source, base_dir=rec.base_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    done: dict[str, dict[str, Any]] = {}
    if results_path.is_file():
        for line in results_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a crash: that combination runs again
                continue
            done[_key(row["values"])] = row
    todo = [(i, v, d) for i, (v, d) in enumerate(combos) if _key(v) not in done]
    prog = Progress(len(combos), len(combos) - len(todo), progress, unit="combinations",
                    prefix="sweep")
    devices = dict(devices or {})
    cluster = Cluster.connect(address, boards=devices) if todo else None
    try:
        if cluster is not None:
            for t in rec.targets:
                cluster.check_resource(timing_resource(devices.get(t)), t)
        inflight: dict[Any, tuple[str, int, dict[str, Any], dict[str, Any]]] = {}
        pending_time: dict[int, int] = {}
        queue = list(todo)
        while queue or inflight:
            assert cluster is not None
            while queue and len(inflight) < cluster.cpus:
                i, values, data = queue.pop(0)
                build_job = {"recipe": data, "source": rec.source,
                             "base_dir": str(rec.base_dir),
                             "out": str((out / "runs" / f"{i:04d}").resolve())}
                ref = cluster.submit_build(build_combination, build_job)
                inflight[ref] = ("build", i, values, {})
            ref = cluster.wait(list(inflight))[0][0]
            phase, i, values, acc = inflight.pop(ref)
            try:
                result = cluster.get(ref)
            except Exception as exc:  # the task failed after Ray's retries
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            if phase == "build" and result["status"] == "built":
                bundle = result.pop("bundle")
                acc = {"values": values, "build": result, "targets": {}}
                pending_time[i] = len(result["targets"])
                for name in result["targets"]:
                    job: dict[str, Any] = {"out": result["out"], "bundle": bundle,
                                           "target": name, "runs": runs, "warmup": warmup,
                                           "remote": devices.get(name)}
                    inflight[cluster.submit_time(time_point, job,
                                                 timing_resource(devices.get(name)))] = \
                        (f"time:{name}", i, values, acc)
                continue
            if phase == "build":
                acc = {"values": values, "build": result, "targets": {}, "error": result["error"]}
            else:
                acc["targets"][phase.partition(":")[2]] = result
                pending_time[i] -= 1
                if pending_time[i] > 0:
                    continue
            row = _row(acc)
            with results_path.open("a") as fh:  # one line per finished combination
                fh.write(json.dumps(row, default=str) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            done[_key(values)] = row
            prog.step(f"combination {values}: " + ("failed: " + row["error"][:200]
                      if row.get("error") else "done"), ok=not row.get("error"))
    finally:
        if cluster is not None:
            cluster.close()
    rows = [done[_key(v)] for v, _ in combos if _key(v) in done]
    report = {"schema": "edgekit.sweep", "schema_version": 1, "recipe": rec.source,
              "grid": {k: list(v) for k, v in grid.items()}, "combinations": rows}
    _atomic_text(out / "sweep.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic_text(out / "sweep.md", _markdown(report))
    prog.say(f"reports written to {out}")
    return report


def _row(acc: dict[str, Any]) -> dict[str, Any]:
    build = acc["build"]
    row: dict[str, Any] = {"values": acc["values"], "bundle": build.get("out"),
                           "build_node": build.get("node"), "error": acc.get("error"),
                           "metric": build.get("metric"), "targets": {}}
    errors = []
    for name, meas in build.get("targets", {}).items():
        timing = acc["targets"].get(name, {})
        if timing.get("status") == "failed":
            errors.append(f"{name}: {timing['error']}")
        row["targets"][name] = {**meas, "latency_ms": timing.get("latency_ms"),
                                "time_node": timing.get("node")}
    if errors and not row["error"]:
        row["error"] = "; ".join(errors)
    return row


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Sweep: {report['recipe']}", "",
             "| combination | target | latency ms | metric | size B | error |",
             "|---|---|---|---|---|---|"]
    for row in report["combinations"]:
        combo = ", ".join(f"{k}={v}" for k, v in row["values"].items())
        if not row["targets"]:
            lines.append(f"| {combo} | - | - | - | - | {row['error']} |")
        for name, t in row["targets"].items():
            lat = "-" if t["latency_ms"] is None else f"{t['latency_ms']:.4g}"
            accv = "-" if t["accuracy"] is None else f"{t['accuracy']:.4g}"
            lines.append(f"| {combo} | {name} | {lat} | {accv} | {t['size_bytes']} | "
                         f"{row['error'] or ''} |")
    return "\n".join(lines) + "\n"
