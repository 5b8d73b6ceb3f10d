"""``edgekit bench``: latency, accuracy, fidelity and memory of bundles and artifacts.

Everything is set up before timing starts: each artifact is loaded (load time measured), run
once (first inference measured), scored on the evaluation data and compared with the fp32
PyTorch reference; then all artifacts are timed together, interleaved round by round so
machine noise hits them alike; then (optionally) each one's peak memory is measured in a
fresh child process. Ctrl-C during any stage keeps what was measured and marks the report
``interrupted``.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Artifact, TensorSpec, backend_for_file, known_suffixes
from ..errors import EdgekitError, ShapeError, UsageError
from ..measure.metrics import compare_outputs
from ..measure.scoring import plain_metric
from ..measure.timing import LatencyStats, collect_interleaved
from .devices import DEVICES, DeviceUnavailableError, gpu_unavailable_reason, load_on_device
from .memory import METHOD as MEMORY_METHOD

__all__ = ["SCHEMA_VERSION", "Candidate", "artifact_from_file", "bench", "check_bench_args",
           "collect_candidates"]

#: Version of the report's JSON layout (``schema`` = "edgekit.bench").
SCHEMA_VERSION = 1


@dataclass
class Candidate:
    """One thing to benchmark: a bundle target, a single artifact file or a PyTorch model."""

    name: str
    backend: str
    source: str
    artifact: Artifact | None = None
    bundle: Any = None
    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    model: Any = None  # a torch.nn.Module for the PyTorch reference
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    @property
    def size_bytes(self) -> int | None:
        return self.artifact.size_bytes if self.artifact is not None else None


# --------------------------------------------------------------------------- inputs


def artifact_from_file(path: str | Path) -> Artifact:
    """An :class:`Artifact` for a lone model file (a registered backend's suffix), I/O specs
    read by that backend."""
    path = Path(path).absolute()
    backend = backend_for_file(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    from ..modelfile import check_format

    check_format(path)  # empty, or bytes of another format than the suffix -> BundleError
    return backend.inspect(path)


def collect_candidates(sources: Sequence[str | Path], targets: Sequence[str] | None = None
                       ) -> list[Candidate]:
    """Bundle folders (each target, or only ``targets``) and single artifact files."""
    from ..bundle import MANIFEST, load_bundle

    if not sources:
        raise UsageError("nothing to benchmark", hint="pass a bundle folder or artifact files")
    out: list[Candidate] = []
    bundles = [Path(s) for s in sources if Path(s).is_dir() or Path(s).name == MANIFEST]
    for src in sources:
        p = Path(src)
        if p.is_dir() or p.name == MANIFEST:
            b = load_bundle(p)
            names = b.targets
            if targets:
                unknown = [t for t in targets if t not in names]
                if unknown and len(bundles) == 1:
                    from ..errors import UnknownNameError

                    raise UnknownNameError(f"target in bundle {b.root}", unknown[0], names)
                names = [t for t in names if t in targets]
            for t in names:
                entry = b.manifest["targets"][t]
                for rec in entry["files"]:
                    from ..bundle import _check_record

                    _check_record(b.root, rec)
                art = b.artifact(t)
                prof = entry.get("profile", {})
                label = t if len(bundles) == 1 else f"{b.name}/{t}"
                out.append(Candidate(label, entry["backend"], str(b.root), art, b, t,
                                     dict(prof.get("options", {})), prof.get("threads"),
                                     inputs=list(art.inputs), outputs=list(art.outputs)))
        elif p.suffix.lower() in known_suffixes():
            art = artifact_from_file(p)
            out.append(Candidate(p.name, art.backend, str(p.absolute()), art,
                                 inputs=list(art.inputs), outputs=list(art.outputs)))
        elif not p.exists():
            raise UsageError(f"{p} does not exist", hint="pass a bundle folder or artifact files")
        else:
            raise UsageError(f"{p} is neither a bundle folder nor a "
                             f"{'/'.join(sorted(known_suffixes()))} file")
    names = [c.name for c in out]
    for i, c in enumerate(out):  # make labels unique (same file name in two folders)
        if names.count(c.name) > 1:
            c.name = f"{Path(c.source).parent.name}/{c.name}" if c.bundle is None \
                else f"{c.name}#{i}"
    if not out:
        raise UsageError("no targets selected", hint="check --target against the bundle")
    return out


# --------------------------------------------------------------------------- data


@dataclass
class EvalData:
    inputs: list[np.ndarray]  # one per model input, samples on axis 0
    targets: np.ndarray | None
    score: Callable[..., float] | None
    metric: str | None
    higher_is_better: bool
    classifier: bool
    source: str


def _task_for(cands: list[Candidate]) -> tuple[Any, str] | None:
    for c in cands:
        if c.bundle is not None:
            model = c.bundle.manifest.get("recipe", {}).get("model")
            if model and ":" not in str(model):
                from ..models import get_spec

                try:
                    return get_spec(model).task(), f"zoo task of {model}"
                except EdgekitError:
                    return None
    return None


def load_eval_data(cands: list[Candidate], data: str | Path | None, *, input_keys: Sequence[str],
                   target_key: str, metric: str | None, limit: int | None) -> EvalData | None:
    """The labelled evaluation data: a user .npz, else the bundle's zoo task (test split)."""
    if data is not None and str(data) == "none":
        return None
    if data is not None:
        from ..data.loaders import load_npz

        split = load_npz(data, input_keys=tuple(input_keys), target_key=target_key)
        task_info = _task_for(cands) if metric is None else None
        if task_info is not None:
            task = task_info[0]
            score, hib, cls = task.score, task.higher_is_better, task.kind == "classification"
            metric = task.metric
        else:
            metric = metric or "top1"
            score, hib, cls = plain_metric(metric)
        source = str(data)
    else:
        task_info = _task_for(cands)
        if task_info is None:
            return None
        task, source = task_info
        split = task.test
        if metric is not None and metric != task.metric:
            score, hib, cls = plain_metric(metric)
        else:
            score, hib, cls, metric = (task.score, task.higher_is_better,
                                       task.kind == "classification", task.metric)
        source = f"{source} ({task.name}, test split)"
    n = len(split) if limit is None else min(limit, len(split))
    inputs = [t[:n].detach().cpu().numpy() for t in split.inputs]
    return EvalData(inputs, split.targets[:n].detach().cpu().numpy(), score, metric, hib, cls,
                    source)


def check_data_fits(cand: Candidate, inputs: Sequence[np.ndarray], what: str) -> None:
    """ShapeError naming the input and both shapes when the data does not fit the artifact."""
    specs = cand.inputs
    if len(inputs) != len(specs):
        raise ShapeError(
            f"{what} has {len(inputs)} input array(s) but {cand.name} takes {len(specs)} "
            f"({', '.join(s.name for s in specs)})",
            hint="pass one --input-key per model input, in model order")
    for s, x in zip(specs, inputs):
        want = tuple(s.shape[1:])
        got = tuple(x.shape[1:])
        if len(want) != len(got) or any(w > 0 and w != g for w, g in zip(want, got)):
            layout = ""
            if len(want) == len(got) and sorted(want) == sorted(got):
                layout = " (same sizes in another order: a layout mismatch, e.g. NHWC vs NCHW?)"
            raise ShapeError(
                f"{what}: input {s.name!r} of {cand.name} expects samples of shape "
                f"{list(want)} (artifact shape {list(s.shape)}), the data has {list(got)} "
                f"(array shape {list(x.shape)}){layout}",
                hint="give data laid out as the model's input, samples on axis 0")
        want_dt, got_dt = np.dtype(s.dtype), np.asarray(x).dtype
        if got_dt.kind not in "biuf" or (want_dt.kind in "iub" and got_dt.kind == "f"):
            raise ShapeError(
                f"{what}: input {s.name!r} of {cand.name} takes {want_dt}, the data is "
                f"{got_dt}, which does not convert safely",
                hint=f"store the data as {want_dt} (e.g. token ids as integers)")
        if got_dt.kind == "f" and x.size and not np.isfinite(x).all():
            from ..errors import DataError

            raise DataError(
                f"{what}: input {s.name!r} holds {int((~np.isfinite(x)).sum())} NaN or "
                f"infinite value(s) of {x.size}",
                hint="clean the evaluation data; a NaN makes every metric meaningless")


def _batch(cand: Candidate) -> int:
    dims = [s.shape[0] for s in cand.inputs if s.shape]
    return max(1, dims[0]) if dims and dims[0] > 0 else 1


def _run_all(session: Any, inputs: Sequence[np.ndarray], batch: int) -> tuple[list[np.ndarray], int]:
    n = (len(inputs[0]) // batch) * batch
    outs: list[list[np.ndarray]] = []
    for i in range(0, n, batch):
        res = session.run([x[i:i + batch] for x in inputs])
        if not outs:
            outs = [[] for _ in res]
        for k, r in enumerate(res):
            outs[k].append(np.asarray(r))
    return [np.concatenate(o, axis=0) for o in outs], n


def _example_feeds(cand: Candidate, data: EvalData | None, ref: dict[str, np.ndarray] | None
                   ) -> list[np.ndarray]:
    b = _batch(cand)
    if data is not None and len(data.inputs[0]) >= b:
        return [np.ascontiguousarray(x[:b]).astype(s.dtype, copy=False)
                for x, s in zip(data.inputs, cand.inputs)]
    if ref is not None:
        return [np.ascontiguousarray(ref[f"input.{s.name}"][0]).astype(s.dtype, copy=False)
                for s in cand.inputs]
    rng = np.random.default_rng(0)
    feeds = []
    for s in cand.inputs:
        shape = [d if d > 0 else 1 for d in s.shape]
        if np.dtype(s.dtype).kind == "f":
            feeds.append(rng.random(shape, dtype=np.float64).astype(s.dtype))
        else:
            feeds.append(rng.integers(0, 10, shape).astype(s.dtype))
    return feeds


def _reference(cand: Candidate) -> dict[str, np.ndarray] | None:
    if cand.bundle is None or "reference" not in cand.bundle.manifest:
        return None
    from ..bundle import REFERENCE

    path = Path(cand.bundle.root) / REFERENCE
    if not path.is_file():
        return None
    from .._npz import check_npz

    check_npz(path, "reference data")  # declared sizes before numpy allocates
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- main entry


def _progress(enabled: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if enabled:
            print(f"[edgekit bench] {msg}", file=sys.stderr, flush=True)
    return say


def _load(cand: Candidate, device: str, threads: int | None) -> Any:
    if cand.model is not None:
        from .devices import torch_session

        return torch_session(cand.model, cand.inputs, cand.outputs, device=device,
                             threads=threads or 2)
    assert cand.artifact is not None
    th = threads or cand.threads or 2
    if device != "cpu":
        return load_on_device(cand.artifact, device, threads=th, options=cand.options)
    from ..backends import get_backend

    return get_backend(cand.backend).load(cand.artifact, threads=th, options=cand.options)


def _pick_baseline(names: list[str], baseline: str | None) -> str | None:
    if baseline is not None:
        if baseline not in names:
            from ..errors import UnknownNameError

            raise UnknownNameError("baseline", baseline, names)
        return baseline
    for n in names:
        if "fp32" in n:
            return n
    return names[0] if names else None


def pareto_front(points: dict[str, tuple[float, float]], higher_is_better: bool) -> set[str]:
    """Names not dominated in (latency: lower is better, quality: ``higher_is_better``)."""
    front = set()
    for a, (la, qa) in points.items():
        dominated = False
        for b, (lb, qb) in points.items():
            if a == b:
                continue
            better_q = qb >= qa if higher_is_better else qb <= qa
            strictly = lb < la or (qb > qa if higher_is_better else qb < qa)
            if lb <= la and better_q and strictly:
                dominated = True
                break
        if not dominated:
            front.add(a)
    return front


#: Bounds of the timing arguments (``bench --runs`` and friends, ``edgekit.bench(...)``).
MAX_RUNS = 1_000_000
MAX_WARMUP = 100_000
MAX_DURATION_S = 3600.0
#: Latency samples kept per artifact whatever the arguments: ``duration`` timing stops here.
MAX_SAMPLES = MAX_RUNS


def _int_arg(name: str, value: Any, lo: int, hi: int | None, flag: str) -> int:
    what = f"{flag}{name}"
    allowed = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
    number = value
    if isinstance(value, str):  # from the command line: "200", also "1e3"
        try:
            number = float(value) if any(c in value for c in ".eEnN") else int(value)
        except ValueError:
            raise UsageError(f"{what} {value} is not a number; give {allowed}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float, np.integer, np.floating)):
        raise UsageError(f"{what} {value} is not a number; give {allowed}")
    if isinstance(number, (float, np.floating)):
        if not math.isfinite(number) or number != int(number):
            raise UsageError(f"{what} {value} is not an integer; give {allowed}")
    number = int(number)
    if number < lo or (hi is not None and number > hi):
        raise UsageError(f"{what} {value} is out of range; give {allowed}")
    return number


def _seconds_arg(name: str, value: Any, hi: float, flag: str) -> float:
    what = f"{flag}{name}"
    allowed = f"a number of seconds > 0 and <= {hi:g}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {value} is not a number; give {allowed}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise UsageError(f"{what} {value} is not a finite number; give {allowed}")
    if not 0 < number <= hi:
        raise UsageError(f"{what} {value} is out of range; give {allowed}")
    return number


def check_bench_args(*, runs: Any = None, duration: Any = None, warmup: Any = 20,
                     threads: Any = None, limit: Any = None, flag: str = ""
                     ) -> tuple[int | None, float | None, int, int | None, int | None]:
    """Validate the timing arguments before anything is loaded; :class:`UsageError` naming the
    argument (``flag`` + name: ``--runs`` on the command line), its value and the allowed range.

    ``runs`` 1..:data:`MAX_RUNS`, ``duration`` seconds in (0, :data:`MAX_DURATION_S`],
    ``warmup`` 0..:data:`MAX_WARMUP`, ``threads`` 1..``MAX_THREADS`` (256), ``limit`` >= 1;
    NaN, inf, zero, negative and fractional counts are refused. Returns them converted.
    """
    from ..backends._common import MAX_THREADS

    if runs is None and duration is None:
        raise UsageError("give a number of runs or a duration")
    return (
        None if runs is None else _int_arg("runs", runs, 1, MAX_RUNS, flag),
        None if duration is None else _seconds_arg("duration", duration, MAX_DURATION_S, flag),
        _int_arg("warmup", warmup, 0, MAX_WARMUP, flag),
        None if threads is None else _int_arg("threads", threads, 1, MAX_THREADS, flag),
        None if limit is None else _int_arg("limit", limit, 1, None, flag),
    )


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
) -> dict[str, Any]:
    """Benchmark bundles/artifacts (and optional PyTorch ``models``) and return the report.

    ``sources``: bundle folders and/or ``.onnx``/``.xml``/``.tflite`` files. ``targets``
    selects bundle targets. ``device``: cpu, cuda, tensorrt or gpu (paths that cannot run
    there are skipped with a reason; if none can, :class:`DeviceUnavailableError`).
    ``runs`` timed calls per artifact, or ``duration`` seconds of interleaved rounds.
    ``data``: a ``.npz`` (keys ``input_keys`` + ``target_key``), ``None`` for the bundle's zoo
    task, or ``"none"``. ``remote``: a :class:`~edgekit.bench.remote.RemoteDevice` to run the
    artifacts on instead of this machine. Writes ``bench.json``/``bench.md``/PNGs into
    ``out_dir`` when given.
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
    if targets and not sources:
        raise UsageError("--target needs a bundle")
    for name, model in (models or {}).items():
        ref_c = next((c for c in cands if c.bundle is not None), cands[0] if cands else None)
        if ref_c is None:
            raise UsageError("a PyTorch model needs an artifact or bundle to take I/O specs from")
        cands.append(Candidate(name, "pytorch", "pytorch", model=model,
                               inputs=list(ref_c.inputs), outputs=list(ref_c.outputs)))
    if not cands:
        raise UsageError("nothing to benchmark", hint="pass a bundle folder or artifact files")

    report: dict[str, Any] = {
        "schema": "edgekit.bench",
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgekit_version": _version(),
        "status": "complete",
        "partial": False,
        "interrupted": False,
        "machine": _machine(),
        "settings": {"device": device, "threads": threads, "runs": runs, "duration_s": duration,
                     "warmup": warmup, "data": None, "metric": None, "limit": limit,
                     "remote": remote.name if remote is not None else None},
        "method": {
            "latency": "warm-up calls untimed, then interleaved rounds (each round calls every "
                       "artifact once, the starting one rotating); time.perf_counter around "
                       "Session.run with inputs already in memory; batch from the artifact",
            "load": "wall time of the runtime's load/compile call (checksums checked before)",
            "first_inference": "the first call after loading, timed alone",
            "throughput": "batch * 1000 / mean_ms, single stream",
            "noise": "noisy = coefficient of variation (std/mean) > 0.25",
            "memory": MEMORY_METHOD,
            "fidelity": "outputs vs the fp32 PyTorch reference stored in the bundle's "
                        "reference.npz (else vs the baseline's outputs on the eval data)",
        },
        "baseline": None,
        "results": [],
        "errors": [],
    }
    rows: dict[str, dict[str, Any]] = {}
    for c in cands:
        rows[c.name] = {
            "name": c.name, "source": c.source, "target": c.target, "backend": c.backend,
            "location": "remote" if remote is not None else "local",
            "device": remote.name if remote is not None else device, "emulated": False,
            "status": "pending", "reason": None,
            "precision": c.artifact.precision if c.artifact else "fp32",
            "size_bytes": c.size_bytes, "threads": threads or c.threads or 2,
            "load_ms": None, "first_inference_ms": None, "latency": None, "samples_ms": None,
            "throughput_per_s": None, "memory": None, "accuracy": None, "fidelity": None,
            "vs_baseline": None, "pareto": False, "runtime": None, "info": None,
        }
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
        refs = {c.name: _reference(c) for c in live}

        if remote is not None:
            stage = "remote"
            _bench_remote(live, rows, remote, ev, refs, runs=runs or 50, warmup=warmup,
                          threads=threads, say=say)
        else:
            stage = "load"
            sessions: dict[str, Any] = {}
            feeds: dict[str, list[np.ndarray]] = {}
            first_outs: dict[str, list[np.ndarray]] = {}
            for c in live:
                say(f"loading {c.name} ({c.backend}, {device})")
                t0 = time.perf_counter()
                try:
                    s = _load(c, device, threads)
                except DeviceUnavailableError as exc:
                    rows[c.name].update(status="skipped", reason=str(exc))
                    continue
                rows[c.name]["load_ms"] = (time.perf_counter() - t0) * 1e3
                feeds[c.name] = _example_feeds(c, ev, refs[c.name])
                t0 = time.perf_counter()
                first_outs[c.name] = [np.asarray(o) for o in s.run(feeds[c.name])]
                rows[c.name]["first_inference_ms"] = (time.perf_counter() - t0) * 1e3
                info = dict(getattr(s, "info", {}))
                rows[c.name].update(info=info, runtime=_runtime_label(info, c.backend),
                                    threads=info.get("threads", rows[c.name]["threads"]))
                sessions[c.name] = s

            stage = "accuracy"
            eval_outs: dict[str, list[np.ndarray]] = {}
            if ev is not None:
                for name, s in sessions.items():
                    say(f"scoring {name} on {len(ev.inputs[0])} samples ({ev.metric})")
                    c = next(c for c in live if c.name == name)
                    outs, n = _run_all(s, ev.inputs, _batch(c))
                    eval_outs[name] = outs
                    value = float(ev.score(outs, ev.targets[:n], [x[:n] for x in ev.inputs]))
                    rows[name]["accuracy"] = {"metric": ev.metric, "value": value,
                                              "higher_is_better": ev.higher_is_better,
                                              "samples": n, "data": ev.source}

            stage = "fidelity"
            base_name = _pick_baseline(list(sessions), baseline)
            if not eval_outs:  # no labelled data: compare on the shared example inputs
                same = base_name is not None and all(
                    len(feeds[n]) == len(feeds[base_name]) and all(
                        a.shape == b.shape and np.array_equal(a, b)
                        for a, b in zip(feeds[n], feeds[base_name])) for n in sessions)
                eval_outs = dict(first_outs) if same else {}
            for name, s in sessions.items():
                c = next(c for c in live if c.name == name)
                rows[name]["fidelity"] = _fidelity(c, s, refs[name], ev, eval_outs, base_name)

            stage = "latency"
            if sessions:
                what = f"{runs} rounds" if duration is None else f"{duration:g} s"
                say(f"timing {len(sessions)} artifact(s) interleaved: {warmup} warm-up calls, "
                    f"then {what}")
                # samples are kept in memory: whatever the duration, stop at MAX_SAMPLES rounds
                cap = runs if duration is None else min(runs or MAX_SAMPLES, MAX_SAMPLES)
                got = collect_interleaved(sessions, feeds, warmup=warmup, runs=cap,
                                          duration_s=duration, progress=say)
                if duration is not None and got.rounds >= cap and not got.interrupted \
                        and got.seconds < duration:
                    note = (f"timing stopped at {cap} rounds after {got.seconds:.1f} s of the "
                            f"{duration:g} s asked for: the cap on kept samples")
                    report["settings"]["sample_cap"] = cap
                    report["notes"] = [*report.get("notes", []), note]
                    say(note)
                for name, samples in got.samples.items():
                    _set_latency(rows[name], samples, _batch(next(c for c in live
                                                                   if c.name == name)))
                    rows[name]["status"] = "partial" if got.interrupted else "ok"
                if got.interrupted:
                    raise KeyboardInterrupt
            del sessions

            stage = "memory"
            if memory and device == "cpu":
                from .memory import measure_in_child

                for c in live:
                    if c.artifact is None or rows[c.name]["status"] not in ("ok",):
                        continue
                    say(f"peak memory of {c.name} (fresh process)")
                    a = c.artifact
                    rows[c.name]["memory"] = measure_in_child(
                        {"backend": a.backend, "root": str(a.root), "files": a.files,
                         "inputs": [s.to_json() for s in a.inputs],
                         "outputs": [s.to_json() for s in a.outputs],
                         "precision": a.precision, "info": a.info},
                        threads=threads or c.threads or 2, options=c.options)
            elif memory:
                report["method"]["memory"] = f"not measured on {device} (host RSS says nothing " \
                                             "about GPU memory)"
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
    _finish(report, rows, baseline)
    if out_dir is not None:
        from .report import write_reports

        report["files"] = write_reports(report, Path(out_dir), formats)
        say(f"report written to {out_dir}")
    return report


def _runtime_label(info: dict[str, Any], backend: str) -> str:
    rt = info.get("runtime", backend)
    ver = str(info.get("version") or "").split("-")[0]
    return f"{rt} {ver}" if ver and str(ver) not in str(rt) else str(rt)


def _set_latency(row: dict[str, Any], samples_s: list[float], batch: int) -> None:
    if not samples_s:
        return
    stats = LatencyStats.from_seconds(samples_s)
    row["latency"] = stats.to_json()
    row["samples_ms"] = [round(s * 1e3, 6) for s in samples_s]
    row["throughput_per_s"] = batch * 1e3 / stats.mean_ms if stats.mean_ms > 0 else None
    row["batch"] = batch


def _fidelity(c: Candidate, session: Any, ref: dict[str, np.ndarray] | None,
              ev: EvalData | None, eval_outs: dict[str, list[np.ndarray]],
              base_name: str | None) -> dict[str, Any] | None:
    classifier = bool(ev.classifier) if ev is not None else False
    if c.bundle is not None:
        t = c.bundle.manifest.get("model", {}).get("task") or {}
        classifier = classifier or t.get("kind") == "classification"
    if ref is not None:
        in_keys = [f"input.{s.name}" for s in c.inputs]
        out_keys = [f"output.{s.name}" for s in c.outputs]
        if all(k in ref for k in in_keys + out_keys):
            outs: list[list[np.ndarray]] = [[] for _ in out_keys]
            for i in range(len(ref[in_keys[0]])):
                res = session.run([ref[k][i] for k in in_keys])
                for j, r in enumerate(res):
                    outs[j].append(np.asarray(r))
            got = [np.concatenate(o, axis=0) for o in outs]
            want = [np.concatenate(list(ref[k]), axis=0) for k in out_keys]
            fid = compare_outputs(want, got, [s.name for s in c.outputs], classifier=classifier)
            fid["reference"] = "pytorch fp32 (bundle reference.npz)"
            return fid
    if base_name is not None and base_name != c.name and base_name in eval_outs \
            and c.name in eval_outs:
        want, got = eval_outs[base_name], eval_outs[c.name]
        n = min(len(want[0]), len(got[0]))
        fid = compare_outputs([w[:n] for w in want], [g[:n] for g in got],
                              [s.name for s in c.outputs], classifier=classifier)
        fid["reference"] = (f"baseline {base_name} on the eval data" if ev is not None
                            else f"baseline {base_name} on the same example inputs")
        return fid
    return None


def _bench_remote(live: list[Candidate], rows: dict[str, dict[str, Any]], remote: Any,
                  ev: EvalData | None, refs: dict[str, Any], *, runs: int, warmup: int,
                  threads: int | None, say: Callable[[str], None]) -> None:
    """Each artifact on the remote device, one after another (the device is locked per run);
    outputs are compared with the same artifact run on this machine."""
    from ..backends import get_backend
    from .remote import RemoteError, run_remote

    for c in live:
        if c.artifact is None:
            rows[c.name].update(status="skipped", reason="PyTorch models run locally only")
            continue
        feeds = _example_feeds(c, ev, refs[c.name])
        files = [c.artifact.root / f for f in c.artifact.files]
        try:
            res = run_remote(remote, files, feeds, threads=threads or c.threads or 2, runs=runs,
                             warmup=warmup, progress=say)
        except RemoteError as exc:
            part = exc.partial
            rows[c.name].update(status="partial" if part else "failed", reason=str(exc),
                                emulated=bool(part.get("emulated")))
            _fill_remote(rows[c.name], part)
            exc.partial = exc.partial or {"partial": True}
            raise
        _fill_remote(rows[c.name], res)
        rows[c.name]["status"] = "ok"
        local = get_backend(c.backend).load(c.artifact, threads=threads or c.threads or 2,
                                            options=c.options).run(feeds)
        cmp = compare_outputs(local, res["outputs"], [s.name for s in c.outputs],
                              classifier=bool(ev and ev.classifier))
        cmp["reference"] = "the same artifact on this machine, same inputs"
        rows[c.name]["fidelity"] = cmp
        rows[c.name]["remote_outputs_match_local"] = bool(
            all(o["max_abs"] <= 1e-4 * max(1.0, float(np.max(np.abs(lo))))
                for o, lo in zip(cmp["outputs"], local)))


def _fill_remote(row: dict[str, Any], res: dict[str, Any]) -> None:
    row["emulated"] = bool(res.get("emulated"))
    row["load_ms"] = res.get("load_ms")
    row["first_inference_ms"] = res.get("first_inference_ms")
    if res.get("runtime"):
        row["runtime"] = f"{res['runtime']} {res.get('version', '')}".strip()
    row["remote"] = {k: res.get(k) for k in ("device_name", "device", "emulator", "wall_s",
                                              "runner_version", "status", "partial")}
    lat = res.get("latencies_ms") or []
    if lat:
        _set_latency(row, [v / 1e3 for v in lat], row.get("batch") or 1)


def _finish(report: dict[str, Any], rows: dict[str, dict[str, Any]], baseline: str | None) -> None:
    timed = [n for n, r in rows.items() if r["latency"]]
    base = None
    try:
        base = _pick_baseline(timed, baseline) if timed else None
    except EdgekitError:
        base = None
    report["baseline"] = base
    if base is not None:
        b = rows[base]
        for r in rows.values():
            if not r["latency"]:
                continue
            vs: dict[str, Any] = {"speedup": b["latency"]["median_ms"] / r["latency"]["median_ms"]}
            if b["size_bytes"] and r["size_bytes"]:
                vs["size_ratio"] = r["size_bytes"] / b["size_bytes"]
            if b["accuracy"] and r["accuracy"]:
                vs["accuracy_delta"] = r["accuracy"]["value"] - b["accuracy"]["value"]
            r["vs_baseline"] = vs
    acc = {n: (r["latency"]["median_ms"], r["accuracy"]["value"]) for n, r in rows.items()
           if r["latency"] and r["accuracy"] and math.isfinite(r["accuracy"]["value"])}
    if acc:
        hib = next(r["accuracy"]["higher_is_better"] for r in rows.values() if r["accuracy"])
        for n in pareto_front(acc, hib):
            rows[n]["pareto"] = True
    if any(r["emulated"] for r in rows.values()):
        report["emulated_note"] = ("timings marked emulated ran under qemu-user emulation: they "
                                   "check correctness only and say nothing about ARM speed")
    if any(r["status"] in ("partial", "failed", "not_run") for r in rows.values()) \
            and report["status"] == "complete":
        report.update(status="partial", partial=True)


def _version() -> str:
    from .. import __version__

    return __version__


def _machine() -> dict[str, Any]:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "system": platform.system(), "python": platform.python_version()}
