"""``edgekit bench``: latency, accuracy, fidelity and memory of bundles and artifacts.

Everything is set up before timing starts: each artifact is loaded (load time measured), run
once (first inference measured), scored on the evaluation data and compared with the fp32
PyTorch reference; then all artifacts are timed together, interleaved round by round so
machine noise hits them alike; then (optionally) each one's peak memory is measured in a
fresh child process. Ctrl-C during any stage keeps what was measured and marks the report
``interrupted``.

This module runs the stages in order; each job lives in its own module: :mod:`.candidates`
(what to measure), :mod:`.arguments` (the timing arguments), :mod:`.evaldata` (data and its
checks), :mod:`.local_run` and :mod:`.remote_run` (the measuring), :mod:`.summary` (the report
as data) and :mod:`.report` (its files).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import EdgekitError, UsageError
from .arguments import check_bench_args
from .candidates import add_models, collect_candidates
from .devices import DEVICES, DeviceUnavailableError, gpu_unavailable_reason
from .evaldata import check_data_fits, load_eval_data, reference_data
from .local_run import LocalRun
from .remote_run import run_on_remote
from .summary import finish, new_report, new_row

__all__ = ["bench"]


def _progress(enabled: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if enabled:
            print(f"[edgekit bench] {msg}", file=sys.stderr, flush=True)
    return say


def bench(
    sources: Sequence[str | Path] | str | Path = (),
    *,
    targets: Sequence[str] | None = None,
    models: dict[str, Any] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    runs: int | None = 200,
    duration: float | None = None,
    warmup: int = 20,
    data: str | Path | None = None,
    input_keys: Sequence[str] = ("x",),
    target_key: str = "y",
    metric: str | None = None,
    limit: int | None = None,
    baseline: str | None = None,
    memory: bool = True,
    remote: Any = None,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = ("json", "md", "png"),
    progress: bool = True,
    input_shapes: Sequence[Sequence[int]] | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    """Benchmark bundles/artifacts (and optional PyTorch ``models``) and return the report.

    ``sources``: bundle folders and/or ``.onnx``/``.xml``/``.tflite`` files. ``targets``
    selects bundle targets. ``device``: cpu, cuda, tensorrt or gpu (paths that cannot run
    there are skipped with a reason; if none can, :class:`DeviceUnavailableError`).
    ``runs`` timed calls per artifact, or ``duration`` seconds of interleaved rounds.
    ``data``: a ``.npz`` (keys ``input_keys`` + ``target_key``), ``None`` for the bundle's zoo
    task, or ``"none"``. ``remote``: a :class:`~edgekit.bench.remote.RemoteDevice` to run the
    artifacts on instead of this machine. Writes ``bench.json``/``bench.md``/PNGs into
    ``out_dir`` when given. ``input_shapes`` (one per model input) is the shape artifacts
    with dynamic dimensions are run and timed at (default: the data's, else batch 1; a
    dynamic dimension other than the batch needs it). A run whose input or output is empty
    raises :class:`~edgekit.errors.ModelRunError`: no latency is reported for no work.
    ``profile``: also run each artifact under its runtime's own profiler and write the per-op
    tables (``profile.json``/``profile.md``) beside the report (see :mod:`.profile`).
    """
    say = _progress(progress)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}", hint=f"choose one of {', '.join(DEVICES)}")
    if remote is not None and device != "cpu":
        raise UsageError("--device applies to this machine; remote devices run on their CPU")
    runs, duration, warmup, threads, limit = check_bench_args(
        runs=runs, duration=duration, warmup=warmup, threads=threads, limit=limit)
    bad = [f for f in formats if f not in ("json", "md", "png")]
    if bad:
        raise UsageError(f"unknown output format {bad[0]!r}", hint="choose from json, md, png")
    cands = collect_candidates(list(sources), targets) if sources else []
    if remote is not None and (input_shapes or profile):
        raise UsageError("--input-shape and --profile run on this machine only, not with "
                         "--remote")
    if targets and not sources:
        raise UsageError("--target needs a bundle")
    add_models(cands, models or {})
    if not cands:
        raise UsageError("nothing to benchmark", hint="pass a bundle folder or artifact files")

    report = new_report(device=device, threads=threads, runs=runs, duration=duration,
                        warmup=warmup, limit=limit, remote=remote)
    rows = {c.name: new_row(c, device=device, threads=threads, remote=remote) for c in cands}
    report["results"] = list(rows.values())
    stage = "setup"
    try:
        # ---- device availability (before anything is loaded)
        if device != "cpu":
            for c in cands:
                reason = gpu_unavailable_reason(c.backend, device)
                if reason:
                    rows[c.name].update(status="skipped", reason=f"{device}: {reason}")
            if all(r["status"] == "skipped" for r in rows.values()):
                reasons = "; ".join(f"{n}: {r['reason']}" for n, r in rows.items())
                raise DeviceUnavailableError(
                    f"--device {device} was asked for but nothing can run on it here: {reasons}",
                    hint="run with --device cpu, or on a machine with the GPU runtime installed")
        live = [c for c in cands if rows[c.name]["status"] == "pending"]

        # ---- evaluation data, checked against every artifact before any work
        stage = "data"
        ev = load_eval_data(live, data, input_keys=input_keys, target_key=target_key,
                            metric=metric, limit=limit)
        if ev is not None:
            report["settings"].update(data=ev.source, metric=ev.metric)
            for c in live:
                check_data_fits(c, ev.inputs, f"data {ev.source}")
        refs = {c.name: reference_data(c) for c in live}

        if remote is not None:
            stage = "remote"
            run_on_remote(live, rows, remote, ev, refs, runs=runs or 50, warmup=warmup,
                          threads=threads, say=say)
        else:
            run = LocalRun(live, rows, ev, refs, device, threads, say,
                           input_shapes=[tuple(s) for s in input_shapes] if input_shapes
                           else None)
            stage = "load"
            run.load()
            stage = "accuracy"
            run.score_accuracy()
            stage = "fidelity"
            run.score_fidelity(baseline)
            stage = "latency"
            run.time_all(report, runs=runs, duration=duration, warmup=warmup)
            if profile:
                stage = "profile"
                report["profiles"] = run.profile_all()
            stage = "memory"
            if memory:
                run.measure_memory(report)
    except KeyboardInterrupt:
        from .._signals import last_signal

        sig = last_signal()
        report.update(status="interrupted", partial=True, interrupted=True,
                      interrupted_by=sig or "SIGINT")
        report["errors"].append({"stage": stage,
                                 "error": f"interrupted ({sig or 'Ctrl-C'})"})
        for r in rows.values():
            if r["status"] == "pending":
                r.update(status="partial" if r["load_ms"] is not None else "not_run",
                         reason=f"interrupted during {stage}")
    except EdgekitError as exc:
        partial = getattr(exc, "partial", None)
        if partial is None or stage in ("setup", "data"):
            raise
        report.update(status="partial", partial=True)
        report["errors"].append({"stage": stage, "error": str(exc), "exit_code": exc.exit_code})
    finish(report, rows, baseline)
    if out_dir is not None:
        from .report import write_reports

        report["files"] = write_reports(report, Path(out_dir), formats)
        if report.get("profiles"):
            from .profile import write_profiles

            report["files"]["profile"] = write_profiles(report["profiles"], Path(out_dir))
        say(f"report written to {out_dir}")
    return report
