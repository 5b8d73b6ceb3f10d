"""The measuring stages of ``edgekit bench`` on this machine, in order: load (and first
inference), accuracy, fidelity, interleaved latency, peak memory in a fresh process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import BACKENDS, get_backend
from ..measure.metrics import compare_outputs
from ..measure.timing import collect_interleaved
from .candidates import Candidate
from .devices import DeviceUnavailableError, load_on_device
from .evaldata import EvalData, batch_size, example_feeds, run_all
from .summary import pick_baseline, runtime_label, set_latency

__all__ = ["MAX_SAMPLES", "LocalRun", "load_session"]

#: Latency samples kept per artifact whatever the arguments: ``duration`` timing stops here.
MAX_SAMPLES = 1_000_000


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
            self.feeds[c.name] = example_feeds(c, self.ev, self.refs[c.name])
            t0 = time.perf_counter()
            self.first_outs[c.name] = [np.asarray(o) for o in s.run(self.feeds[c.name])]
            row["first_inference_ms"] = (time.perf_counter() - t0) * 1e3
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
