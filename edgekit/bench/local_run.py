"""The measuring stages of ``edgekit bench`` on this machine, in order: load (and first
inference), accuracy, fidelity, interleaved latency, peak memory in a fresh process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import BACKENDS, get_backend
from ..errors import ModelRunError, ShapeError, UsageError
from ..measure.metrics import compare_outputs
from ..measure.timing import collect_interleaved
from .candidates import Candidate
from .devices import DeviceUnavailableError, load_on_device
from .evaldata import EvalData, batch_size, example_feeds, run_all
from .summary import pick_baseline, runtime_label, set_latency

__all__ = ["MAX_SAMPLES", "LocalRun", "check_did_work", "load_session", "parse_shape",
           "timing_feeds"]

#: Latency samples kept per artifact whatever the arguments: ``duration`` timing stops here.
MAX_SAMPLES = 1_000_000


def parse_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` -> ``(1, 3, 224, 224)``; UsageError for anything else."""
    parts = str(text).strip().lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"bad --input-shape {text!r}",
                         hint="write positive dimensions joined by x, e.g. 1x3x224x224")
    return tuple(int(p) for p in parts)


def timing_feeds(cand: Candidate, ev: EvalData | None, ref: dict[str, np.ndarray] | None,
                 input_shapes: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """The inputs ``cand`` is run and timed on, always at a concrete shape.

    With ``input_shapes`` (one per model input, in order: ``--input-shape``) seeded random
    values of those shapes, each checked against the artifact's static dimensions. Otherwise
    the evaluation data, the bundle's reference inputs, or random values with a dynamic batch
    taken as 1; a dynamic dimension other than the batch has no size to guess, so that is a
    :class:`UsageError` asking for ``--input-shape``.
    """
    specs = cand.inputs
    if input_shapes:
        if len(input_shapes) != len(specs):
            raise UsageError(
                f"{len(input_shapes)} --input-shape given but {cand.name} takes {len(specs)} "
                f"input(s) ({', '.join(s.name for s in specs)})",
                hint="give one --input-shape per model input, in model order")
        rng = np.random.default_rng(0)
        feeds = []
        for s, shape in zip(specs, input_shapes):
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(s.shape) or any(
                    d > 0 and d != g for d, g in zip(s.shape, shape)):
                raise ShapeError(
                    f"--input-shape {'x'.join(map(str, shape))} does not fit input {s.name!r} "
                    f"of {cand.name} (artifact shape {list(s.shape)}, -1 = dynamic)",
                    hint="keep the artifact's fixed dimensions; choose only the dynamic ones")
            if np.dtype(s.dtype).kind == "f":
                feeds.append(rng.random(shape, dtype=np.float64).astype(s.dtype))
            else:
                feeds.append(rng.integers(0, 10, shape).astype(s.dtype))
        return feeds
    have_data = ev is not None and len(ev.inputs[0]) >= batch_size(cand)
    if not have_data and ref is None:
        for s in specs:
            if any(d < 0 for d in s.shape[1:]):
                raise UsageError(
                    f"input {s.name!r} of {cand.name} has dynamic dimensions "
                    f"{list(s.shape)} (-1 = dynamic) and there is no data to take a shape from",
                    hint="time it at the shape it is deployed at: --input-shape 1x3x224x224 "
                         "(one per input, in order), or --data with samples")
    return example_feeds(cand, ev, ref)


def check_did_work(cand: Candidate, feeds: Sequence[np.ndarray],
                   outs: Sequence[np.ndarray]) -> None:
    """ModelRunError when a run had an empty input or produced an empty output: its latency
    would time no inference at all, so no number may be reported for it."""
    for s, x in zip(cand.inputs, feeds):
        if np.asarray(x).size == 0:
            raise ModelRunError(
                f"{cand.name}: input {s.name!r} is empty (shape {list(np.shape(x))}); a run on "
                "it does no work and its latency would mean nothing",
                backend=cand.backend, hint="pass --input-shape with the deployed shape")
    for s, o in zip(cand.outputs, outs):
        if np.asarray(o).size == 0:
            raise ModelRunError(
                f"{cand.name}: output {s.name!r} came back empty (shape {list(np.shape(o))}) "
                f"for inputs of shape {[list(np.shape(x)) for x in feeds]}; the runtime did no "
                "work, so no latency is reported for it",
                backend=cand.backend,
                hint="check the artifact's dynamic dimensions; time it at a real shape with "
                     "--input-shape")


def load_session(cand: Candidate, device: str, threads: int | None) -> Any:
    """A session for ``cand`` on ``device`` (its profile's threads unless ``threads``)."""
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


@dataclass
class LocalRun:
    """The candidates measured on this machine; each stage fills their ``rows``."""

    live: list[Candidate]
    rows: dict[str, dict[str, Any]]
    ev: EvalData | None
    refs: dict[str, dict[str, np.ndarray] | None]
    device: str
    threads: int | None
    say: Callable[[str], None]
    input_shapes: list[tuple[int, ...]] | None = None
    sessions: dict[str, Any] = field(default_factory=dict)
    feeds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    first_outs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    eval_outs: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def _cand(self, name: str) -> Candidate:
        return next(c for c in self.live if c.name == name)

    def load(self) -> None:
        """Load each candidate (load time) and run it once (first-inference time); a path the
        device cannot run is skipped with its reason."""
        for c in self.live:
            self.say(f"loading {c.name} ({c.backend}, {self.device})")
            if c.backend in BACKENDS:  # the import of the runtime is not the artifact's load
                get_backend(c.backend).import_runtime()
            t0 = time.perf_counter()
            try:
                s = load_session(c, self.device, self.threads)
            except DeviceUnavailableError as exc:
                self.rows[c.name].update(status="skipped", reason=str(exc))
                continue
            row = self.rows[c.name]
            row["load_ms"] = (time.perf_counter() - t0) * 1e3
            self.feeds[c.name] = timing_feeds(c, self.ev, self.refs[c.name], self.input_shapes)
            t0 = time.perf_counter()
            self.first_outs[c.name] = [np.asarray(o) for o in s.run(self.feeds[c.name])]
            row["first_inference_ms"] = (time.perf_counter() - t0) * 1e3
            check_did_work(c, self.feeds[c.name], self.first_outs[c.name])
            info = dict(getattr(s, "info", {}))
            row.update(info=info, runtime=runtime_label(info, c.backend),
                       threads=info.get("threads", row["threads"]))
            self.sessions[c.name] = s

    def score_accuracy(self) -> None:
        """Each loaded session on the whole evaluation data, scored by its metric."""
        ev = self.ev
        if ev is None:
            return
        for name, s in self.sessions.items():
            self.say(f"scoring {name} on {len(ev.inputs[0])} samples ({ev.metric})")
            outs, n = run_all(s, ev.inputs, batch_size(self._cand(name)))
            self.eval_outs[name] = outs
            assert ev.score is not None
            value = float(ev.score(outs, ev.targets[:n] if ev.targets is not None else None,
                                   [x[:n] for x in ev.inputs]))
            self.rows[name]["accuracy"] = {"metric": ev.metric, "value": value,
                                           "higher_is_better": ev.higher_is_better,
                                           "samples": n, "data": ev.source}
            cls = _classification(ev, outs, n)
            if cls is not None:  # what users report beside accuracy: macro recall and F1
                self.rows[name]["accuracy"]["classification"] = cls

    def score_fidelity(self, baseline: str | None) -> None:
        """Outputs vs the bundle's PyTorch reference, else vs the baseline's outputs."""
        base_name = pick_baseline(list(self.sessions), baseline)
        if not self.eval_outs:  # no labelled data: compare on the shared example inputs
            feeds = self.feeds
            same = base_name is not None and all(
                len(feeds[n]) == len(feeds[base_name]) and all(
                    a.shape == b.shape and np.array_equal(a, b)
                    for a, b in zip(feeds[n], feeds[base_name])) for n in self.sessions)
            self.eval_outs = dict(self.first_outs) if same else {}
        for name, s in self.sessions.items():
            c = self._cand(name)
            self.rows[name]["fidelity"] = _fidelity(c, s, self.refs[name], self.ev,
                                                    self.eval_outs, base_name)

    def time_all(self, report: dict[str, Any], *, runs: int | None, duration: float | None,
                 warmup: int) -> None:
        """All sessions timed together, interleaved round by round; the sessions are released
        afterwards. Re-raises :class:`KeyboardInterrupt` after keeping what was timed."""
        sessions = self.sessions
        if sessions:
            what = f"{runs} rounds" if duration is None else f"{duration:g} s"
            self.say(f"timing {len(sessions)} artifact(s) interleaved: {warmup} warm-up calls, "
                     f"then {what}")
            # samples are kept in memory: whatever the duration, stop at MAX_SAMPLES rounds
            cap = runs if duration is None else min(runs or MAX_SAMPLES, MAX_SAMPLES)
            got = collect_interleaved(sessions, self.feeds, warmup=warmup, runs=cap,
                                      duration_s=duration, progress=self.say)
            if duration is not None and cap is not None and got.rounds >= cap \
                    and not got.interrupted and got.seconds < duration:
                note = (f"timing stopped at {cap} rounds after {got.seconds:.1f} s of the "
                        f"{duration:g} s asked for: the cap on kept samples")
                report["settings"]["sample_cap"] = cap
                report["notes"] = [*report.get("notes", []), note]
                self.say(note)
            for name, samples in got.samples.items():
                set_latency(self.rows[name], samples, batch_size(self._cand(name)))
                self.rows[name]["status"] = "partial" if got.interrupted else "ok"
            if got.interrupted:
                raise KeyboardInterrupt
        self.sessions = {}

    def profile_all(self, runs: int = 20, warmup: int = 5) -> list[dict[str, Any]]:
        """Each artifact under its runtime's own per-op profiler, on the feeds it was timed
        on (:mod:`.profile`); a runtime without one gets an entry that says so."""
        from .profile import PROFILERS, profile_artifact

        out: list[dict[str, Any]] = []
        for c in self.live:
            if c.name not in self.feeds or self.rows[c.name]["status"] not in ("ok",):
                continue
            if c.artifact is None or c.backend not in PROFILERS:
                out.append({"name": c.name, "artifact": c.source, "backend": c.backend,
                            "runtime": c.backend, "precision": "-", "threads": self.threads,
                            "runs": 0, "timed": False, "ops": [], "nodes": [],
                            "error": f"no per-op profiler for {c.backend} in edgekit"})
                continue
            self.say(f"profiling {c.name} per op ({c.backend}'s own profiler)")
            prof = profile_artifact(c.artifact, self.feeds[c.name],
                                    threads=self.threads or c.threads or 2, runs=runs,
                                    warmup=warmup, options=c.options)
            out.append({"name": c.name, **prof})
        return out

    def measure_memory(self, report: dict[str, Any]) -> None:
        """Each timed artifact's peak memory, loaded and run in a fresh child process (CPU
        only: host RSS says nothing about GPU memory)."""
        if self.device != "cpu":
            report["method"]["memory"] = (f"not measured on {self.device} (host RSS says "
                                          "nothing about GPU memory)")
            return
        from .memory import measure_in_child

        for c in self.live:
            if c.artifact is None or self.rows[c.name]["status"] not in ("ok",):
                continue
            self.say(f"peak memory of {c.name} (fresh process)")
            a = c.artifact
            self.rows[c.name]["memory"] = measure_in_child(
                {"backend": a.backend, "root": str(a.root), "files": a.files,
                 "inputs": [s.to_json() for s in a.inputs],
                 "outputs": [s.to_json() for s in a.outputs],
                 "precision": a.precision, "info": a.info},
                threads=self.threads or c.threads or 2, options=c.options)


def _classification(ev: EvalData, outs: list[np.ndarray], n: int) -> dict[str, float] | None:
    """Top-1, macro recall and macro F1 (%) of a classifier's first output (N, classes) against
    integer labels (N,); None for other tasks (regression, retrieval, segmentation)."""
    if not ev.classifier or ev.targets is None or not outs or n == 0:
        return None
    t = np.asarray(ev.targets[:n])
    logits = np.asarray(outs[0])
    if t.ndim != 1 or t.dtype.kind not in "iu" or logits.size % n \
            or logits.reshape(n, -1).shape[1] < 2:
        return None
    from ..measure.metrics import classification_metrics

    return classification_metrics(logits.reshape(n, -1), t)


def _fidelity(c: Candidate, session: Any, ref: dict[str, np.ndarray] | None,
              ev: EvalData | None, eval_outs: dict[str, list[np.ndarray]],
              base_name: str | None) -> dict[str, Any] | None:
    """``c``'s outputs vs the stored PyTorch reference, else vs the baseline's outputs on the
    same inputs; ``None`` when there is nothing to compare with."""
    classifier = bool(ev.classifier) if ev is not None else False
    if c.bundle is not None:
        model = c.bundle.manifest.model
        classifier = classifier or (model is not None and model.is_classifier)
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
