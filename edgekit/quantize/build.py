"""One int8 target: export, sanity-check, accuracy gate, automatic fallback and latency check.

Used by :func:`edgekit.pipeline.compress` for every profile with ``precision = "int8"``.
:class:`Int8Build` runs one search over an fp32 artifact exported once: the runtime's int8
sources (:meth:`~edgekit.backends.Backend.int8_sources`; OpenVINO ``auto`` builds NNCF and the
ONNX Runtime QDQ model) are ordinary candidates, each built, checked and gated; a miss goes on
to the runtime's alternatives, then to layers kept in float; the latency check may then prefer
a faster variant. The gate's verification of the shipped artifact is the pipeline's: it is
verified once. The choices a timing made are recorded (``decisions``) and, given a
:class:`~edgekit.cache.DecisionFile`, reused on a rebuild instead of timing again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..backends import Artifact, Backend, Session
from ..backends._common import runtime_reason
from ..data.task import Task
from ..errors import ConfigError, EdgekitError, ModelRunError, QuantizationError
from ..measure.metrics import json_number
from ..profiles import TargetProfile
from ..train import evaluate
from .calibration import check_calibration_feeds
from .config import QuantConfig, equalizes
from .executed import layer_precisions, unattributed_nodes
from .gate import FidelityGate
from .latency import Int8SlowerWarning, Variant, faster, host_arch, latency_choice, time_sessions
from .layer_use import REASONS, layer_use
from .sensitivity import layer_sensitivity, quantizable_layers

__all__ = ["Int8Build", "Int8Result", "build_int8", "check_outputs_sane"]


#: Where several int8 sources pass (OpenVINO: NNCF and the QDQ model), a more faithful one
#: is kept over the faster one at up to a slowdown that grows with what it gains: (held-out
#: SQNR gain in dB, median over the faster's) - 1 dB within 1.10x, 6 dB (one bit) within
#: 1.5x. With a task, a higher score within 1.10x. On resnet8 NNCF gave 17.5 dB held-out SQNR
#: where the QDQ model gave 29.1 dB at a median 2% apart; on the zoo transformer 15.2 against
#: 28.1 dB at 1.32x, and NNCF's model lost 2.5 points of accuracy.
SOURCE_TRADES: tuple[tuple[float, float], ...] = ((1.0, 1.10), (6.0, 1.50))
SCORE_SLOWDOWN = 1.10
#: ``equalize = "auto"``: the build without equalization, which runs the same ops at the same
#: cost, is kept where its held-out SQNR is higher by more than this (a tie keeps the
#: equalized one). A trained MobileNetV2's LiteRT file: 27.84 dB without against 27.43 dB
#: with on the held-out samples, top-1 90.00% against 88.78% (fp32 89.89%;
#: benchmarks/results/ptq_drop).
EQUALIZE_MARGIN_DB = 0.1


def more_faithful(a: float | None, b: float | None, *, scored: bool) -> bool:
    """Fidelity ``a`` beats ``b``: a higher task score (``scored``), else a held-out SQNR
    higher by the smallest gain of ``SOURCE_TRADES``. An unmeasured side never wins."""
    if a is None or b is None:
        return False
    return a > b if scored else a >= b + SOURCE_TRADES[0][0]


def allowed_slowdown(gain: float, *, scored: bool) -> float:
    """How much slower than the faster source a source ``gain`` more faithful may be."""
    if scored:
        return SCORE_SLOWDOWN if gain > 0 else 1.0
    return max((s for g, s in SOURCE_TRADES if gain >= g), default=1.0)


def truer_source(fastest: str, passing: Sequence[str], median_ms: dict[str, float],
                 fidelity: dict[str, float | None], *, scored: bool) -> str | None:
    """The most faithful passing source that beats ``fastest``'s fidelity within the slowdown
    its gain allows (:func:`allowed_slowdown`); None when none does (``fastest`` stays)."""
    base = fidelity[fastest]
    truer = [k for k in passing if k != fastest
             and more_faithful(fidelity[k], base, scored=scored)
             and median_ms[k] <= median_ms[fastest] * allowed_slowdown(
                 (fidelity[k] or 0.0) - (base or 0.0), scored=scored)]
    return max(truer, key=lambda k: fidelity[k] or 0.0) if truer else None


def check_layer_names(model: torch.nn.Module, names: Sequence[str], where: str) -> None:
    """Every name is a module of ``model``; else a ConfigError naming the unknown ones and
    the closest module names."""
    import difflib

    modules = [n for n, _ in model.named_modules() if n]
    known = set(modules)
    unknown = [n for n in names if n not in known]
    if unknown:
        close = sorted({c for n in unknown
                        for c in difflib.get_close_matches(n, modules, n=2, cutoff=0.5)})
        raise ConfigError(
            f"{where} names {', '.join(repr(n) for n in unknown)}, not a module of the model",
            hint=(f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
            + "layer names are the model's module paths (model.named_modules()), e.g. "
            f"{modules[0]!r}" if modules else "the model has no submodules to keep in float")


def float_layer_count(v: Variant) -> int | None:
    """The compute layers ``v``'s artifact executes in float, as its backend read them back
    (``info["quantization"]["float_layers"]``); None where the backend does not say."""
    q = (v.art.info.get("quantization") or {}) if v.art is not None else {}
    n = q.get("float_layers")
    return n if isinstance(n, int) else None


def fewest_float(passing: Sequence[str], floats: Mapping[str, int | None]) -> list[str]:
    """Of the passing sources, those that execute the fewest layers in float (all of them
    where a count is missing): with ``fallback`` off, a source that leaves layers in float by
    its own defaults (NNCF's squeeze-excitation pattern) yields to one that runs them int8."""
    counts = [floats.get(k) for k in passing]
    if not passing or any(c is None for c in counts):
        return list(passing)
    least = min(c for c in counts if c is not None)
    return [k for k in passing if floats[k] == least]


class DecisionStore(Protocol):
    """Where one target's recorded int8 decisions are read and written."""

    where: str

    def load(self) -> dict[str, Any] | None: ...

    def save(self, record: dict[str, Any]) -> None: ...


@dataclass
class Int8Result:
    """The shipped int8 artifact, its session, the manifest's ``quantization`` entry and the
    verification report of the gate (None when no check was given)."""

    artifact: Artifact
    session: Session
    quantization: dict[str, Any] = field(default_factory=dict)
    report: Any = None


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[edgekit] {message}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]


#: An fp32 output whose largest magnitude is under this spans less than PT2E's scale clamp
#: (2**-12) covers with 256 levels.
TINY_OUTPUT = 0.03


def _built_key(config: QuantConfig, keep: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """What makes two int8 builds the same: the whole config and the layers kept in float."""
    return json.dumps(config.to_json(), sort_keys=True, default=str), tuple(keep)


def _unrunnable(exc: BaseException) -> bool:
    """An int8 file its runtime could not load or run (not a model, input or setting error)."""
    return isinstance(exc, ModelRunError) or (
        isinstance(exc, QuantizationError) and isinstance(exc.__cause__, ModelRunError))


def int8_run_failure(target: str, art: Artifact, exc: ModelRunError) -> QuantizationError:
    """A :class:`QuantizationError` for an int8 file the runtime's quantizer wrote that its
    own runtime then fails to run on calibration inputs the fp32 model ran: the file is at
    fault, not the model or the inputs, so the message names the node and the runtime's
    reason, and the hint says how to build around it."""
    node = getattr(exc, "node", None)
    op = getattr(exc, "op", None)
    where = f" at node {node!r} ({op})" if node else ""
    quantizer = str((art.info.get("quantization") or {}).get("quantizer")
                    or art.info.get("exporter") or "the runtime's quantizer")
    return QuantizationError(
        f"target {target}: the int8 model {quantizer} wrote fails to run in {art.backend}"
        f"{where} on a calibration input the fp32 model runs: "
        f"{runtime_reason(str(exc.__cause__ or exc.message))}",
        hint=(f"a limit of {art.backend}'s int8 kernels or quantizer for this op, not of the "
              "model: keep the layer that computes it in float (quantization={'keep_float': "
              "[...]}), or build this runtime's fp32 target"))


def check_outputs_sane(session: Session, batches: list[list[np.ndarray]], where: str,
                       model: torch.nn.Module | None = None) -> None:
    """NaN/inf outputs fail; so do outputs that stay constant over the calibration inputs while
    the fp32 model's vary (by more than 1% of their magnitude)."""
    batches = batches[: min(len(batches), 32)]
    outs = [session.run(b) for b in batches]
    refs = None
    if model is not None:
        with torch.no_grad():
            refs = []
            for b in batches:
                r = model(*(torch.from_numpy(np.asarray(a)) for a in b))
                r = r if isinstance(r, (tuple, list)) else (r,)
                refs.append([t.numpy() for t in r])
    for i, spec in enumerate(session.outputs):
        vals = np.stack([np.asarray(o[i], dtype=np.float64) for o in outs])
        if not np.isfinite(vals).all():
            raise QuantizationError(
                f"{where}: output {spec.name!r} is NaN or infinite after quantization "
                f"({int((~np.isfinite(vals)).sum())} of {vals.size} values)",
                hint="check the calibration data's range; keep the failing layers in float")
        varies, peak = True, None
        if refs is not None:
            ref = np.stack([np.asarray(r[i], dtype=np.float64) for r in refs])
            peak = float(np.abs(ref).max())
            varies = float(ref.std(axis=0).max()) > 0.01 * max(peak, 1e-12)
        if len(outs) > 1 and varies and float(vals.std(axis=0).max()) == 0.0:
            message = (f"{where}: output {spec.name!r} is constant over {len(outs)} "
                       f"calibration batches after quantization (value "
                       f"{float(vals.reshape(-1)[0]):.4g})")
            if peak is not None:
                message += f" while the fp32 output varies, at most |{peak:.3g}|"
            if peak is None:
                hint = ("calibration data may be degenerate (all equal?) or a layer collapsed; "
                        "keep the most sensitive layers in float")
            elif peak < TINY_OUTPUT:
                hint = ("an output this small is zeroed by a quantizer that clamps scales "
                        "(PT2E's 2**-12): set quantization scale_floor = \"on\" (LiteRT, "
                        "ExecuTorch), or keep the last layers in float")
            else:
                hint = ("a layer collapsed in int8: `edgekit explain` finds it; keep the most "
                        "sensitive layers in float")
            raise QuantizationError(message, hint=hint)


def _source_key(changes: dict[str, Any]) -> str:
    """The manifest's name for an int8 source: a ``*_source`` setting's value (``nncf``,
    ``qdq``), another setting as ``key=value`` (``scale_floor=on``)."""
    return "/".join(str(v) if k.endswith("_source") else f"{k}={v}"
                    for k, v in changes.items()) or "default"


def _but_floor(changes: dict[str, Any]) -> dict[str, Any]:
    """A source's changes but its scale floor: sources equal here give the same file where
    the backend says no scale falls under the clamp (``sources_identical``)."""
    return {k: v for k, v in changes.items() if k != "scale_floor"}


class Int8Build:
    """The int8 search for one target. :meth:`run` is the whole of it; each step is a method:
    :meth:`candidates` (the runtime's sources), :meth:`build` (one artifact, checked and
    gated), :meth:`choose_source`, :meth:`fallback`, :meth:`latency_check`, :meth:`result`."""

    def __init__(self, backend: Backend, profile: TargetProfile, model: torch.nn.Module,
                 inputs: tuple[torch.Tensor, ...], *, in_names: list[str],
                 out_names: list[str], calibration: list[list[np.ndarray]],
                 config: QuantConfig, task: Task | None, batch: int, progress: bool = True,
                 memo: dict[str, Any] | None = None, prepared: Any = None,
                 check: Any = None, holdout: list[list[np.ndarray]] | None = None,
                 holdout_source: str = "held-out calibration data",
                 check_samples: Sequence[Sequence[np.ndarray]] = ()) -> None:
        self.backend, self.profile, self.model, self.inputs = backend, profile, model, inputs
        #: the samples ``check`` verifies on (where a gate failure is found)
        self.check_samples = [list(s) for s in check_samples]
        # The fidelity gate (no task, or verify data given): held-out data against fp32.
        self.holdout, self.holdout_source = holdout or None, holdout_source
        self.fidelity_gate = FidelityGate.from_table(
            profile.gate, f"target profile {profile.name} [gate]") if holdout else None
        self._fidelity: dict[str, dict[str, Any]] = {}
        self._fp32_model = model  # the gate's reference: the user's model, untransformed
        if prepared is None:  # each input's batches shaped like its example input
            check_calibration_feeds(calibration, inputs, in_names)
        self.in_names, self.out_names = in_names, out_names
        self.calibration, self.config, self.task, self.batch = calibration, config, task, batch
        self.progress, self.check = progress, check
        self.memo = memo if memo is not None else {}
        self.qat = getattr(model, "edgekit_qat_prepared", None)
        if prepared is None and self.qat is not None and getattr(backend, "qat_graph", False):
            prepared = copy.deepcopy(self.qat)
        self.prepared = prepared
        self.budget = float(profile.max_accuracy_drop)
        self.load_options = dict(profile.options)
        if "io" in getattr(backend, "options_schema", {}):
            # Verification feeds float data: the session converts at the int8 boundary. A user
            # who chose io="int8" gets int8 tensors from Bundle.load (the artifact records it).
            self.load_options["io"] = "float"
        self.keep = list(config.keep_float)
        check_layer_names(model, self.keep, f"target {profile.name}: [quantization] keep_float")
        self.attempts: list[dict[str, Any]] = []
        self.source_choice: dict[str, Any] | None = None
        #: ``equalize = "auto"``: the two builds and which was kept (manifest record)
        self.equalize_choice: dict[str, Any] | None = None
        self.alternative: str | None = None
        #: the (config, layers kept in float) already built: an alternative equal to one of
        #: them (a scope the sources compared) is not built again
        self._built: set[tuple[str, tuple[str, ...]]] = set()
        #: why the configured realisation was replaced (None: it missed the gate)
        self.alternative_why: str | None = None
        self.fallback_layers: list[str] = []
        #: explain's culprits of the first variant that missed the gate (manifest record).
        self.culprits: dict[str, Any] | None = None
        self.workdir = Path()  # a temporary folder while :meth:`run` runs
        # id(model) -> its fp32 export, or the error exporting it raised
        self._fp32: dict[int, Artifact | Exception] = {}
        self._count = 0
        self.ref_score: float | None = None
        if task is not None:
            if "ref_score" not in self.memo:
                self.memo["ref_score"] = evaluate(model, task.test, task)
            self.ref_score = self.memo["ref_score"]
        # Float-domain transforms (equalization, bias correction, SmoothQuant) on a copy of
        # the model: everything below exports and measures the transformed copy.
        self.transforms: dict[str, Any] | None = None
        if self.prepared is None and self.qat is None:
            self.model, self.transforms = self._transformed(model)

    def _model_for(self, keep: list[str], config: QuantConfig | None = None
                   ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
        """The model a variant keeping ``keep`` in float is built from, and its transforms
        record: as if the transforms had been applied without those layers (bias correction,
        bias absorption and learned rounding are set for int8 rounding and would move a float
        layer away from the model). Bias corrections are independent of one another, so the
        common case (no absorbed pair nor learned rounding among the new float layers) only
        takes the new float layers' corrections back; otherwise the transforms are redone.
        A ``config`` that equalizes otherwise than the build's (``equalize = "auto"``'s
        other build) has the transforms redone with its setting."""
        record = self.transforms
        if record is None:
            return self.model, record
        equalize = equalizes(config or self.config)
        if equalize != equalizes(self.config):
            return self._transformed(self._fp32_model, keep, equalize=equalize)
        if keep == self.keep:
            return self.model, record
        from ..modulenames import in_modules

        new = [k for k in keep if k not in self.keep]

        def kept(name: str) -> bool:
            return in_modules(name, new)

        absorbed = {n for pair in record.get("bias_absorbed") or [] for n in pair.split(" -> ")}
        rounded = {r["layer"] for r in record.get("adaround_layers") or []}
        if any(kept(n) for n in absorbed | rounded):
            return self._transformed(self._fp32_model, keep)
        undo = [n for n in record.get("bias_corrected") or [] if kept(n)]
        if not undo:
            return self.model, record
        key = repr(("uncorrected", self._transforms_key(self.keep), tuple(sorted(undo))))
        if key not in self.memo:
            amounts = self.memo[self._transforms_key(self.keep) + "/corrections"]
            out = copy.deepcopy(self.model)
            with torch.no_grad():
                for n in undo:
                    bias = out.get_submodule(n).bias
                    assert isinstance(bias, torch.Tensor)
                    bias.sub_(amounts[n])
            self.memo[key] = (out, {**record, "bias_corrected": [
                n for n in record["bias_corrected"] if n not in undo]})
        return self.memo[key]  # type: ignore[no-any-return]

    def _transforms_key(self, keep: list[str], equalize: bool | None = None) -> str:
        c = self.config
        weight_qmax = getattr(self.backend, "weight_qmax", lambda _c: 127)(c)
        equalize = equalizes(c) if equalize is None else equalize
        return repr(("transforms", equalize, c.equalize_relu6,
                     c.bias_correction and c.per_channel, c.smoothquant, c.smoothquant_alpha,
                     c.adaround and c.per_channel, c.adaround_iterations, tuple(keep),
                     weight_qmax))

    def _transformed(self, model: torch.nn.Module, keep: list[str] | None = None, *,
                     equalize: bool | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
        from .transforms import apply_transforms

        first = keep is None
        keep = self.keep if keep is None else keep
        c = self.config
        weight_qmax = getattr(self.backend, "weight_qmax", lambda _c: 127)(c)
        equalize = equalizes(c) if equalize is None else equalize
        key = self._transforms_key(keep, equalize)
        if key not in self.memo:
            corrections: dict[str, Any] = {}
            self.memo[key + "/corrections"] = corrections
            try:
                out, record = apply_transforms(
                    model, self.calibration, equalize=equalize, relu6=c.equalize_relu6,
                    bias_correction=c.bias_correction and c.per_channel,
                    smoothquant=c.smoothquant, alpha=c.smoothquant_alpha,
                    adaround=c.adaround and c.per_channel,
                    adaround_iterations=c.adaround_iterations, keep_float=keep,
                    weight_qmax=weight_qmax, corrections=corrections)
            except Exception as exc:  # noqa: BLE001 - an optimisation: build without it
                out, record = model, {"applied": [], "error": _first_line(exc)}
                self.log(f"float-domain transforms skipped ({_first_line(exc)})")
            if c.bias_correction and not c.per_channel:
                record.setdefault("skipped", {})["bias_correction"] = (
                    "per-tensor weights (per_channel = false): the correction targets the "
                    "per-channel int8 grid")
            if c.adaround and not c.per_channel:
                record.setdefault("skipped", {})["adaround"] = (
                    "per-tensor weights (per_channel = false): the learned rounding targets "
                    "the per-channel int8 grid")
            if record["applied"] and first:
                self.log("float-domain transforms: " + ", ".join(record["applied"]))
            if record.get("bias_absorbed"):
                # the biases bias absorption set, estimated on the calibration data: for
                # explain's like-for-like reference (edgekit.explain.reference)
                names = {n for pair in record["bias_absorbed"] for n in pair.split(" -> ")}
                biases = {n: getattr(out.get_submodule(n), "bias", None) for n in sorted(names)}
                record["absorbed_biases"] = {n: b.detach().double().tolist()
                                             for n, b in biases.items()
                                             if isinstance(b, torch.Tensor)}
            self.memo[key] = (out, record)
        return self.memo[key]  # type: ignore[no-any-return]

    # -- pieces -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        _log(self.progress, f"{self.profile.name}: {message}")

    def sensitivity(self) -> list[dict[str, Any]]:
        """Per-layer SQNR ranking on the calibration data (computed once per model)."""
        if "sensitivity" not in self.memo:
            self.memo["sensitivity"] = layer_sensitivity(self.model, self.calibration,
                                                         per_channel=self.config.per_channel)
        return list(self.memo["sensitivity"])

    def fp32(self, model: torch.nn.Module | None = None) -> Artifact | None:
        """The target's fp32 artifact of ``model`` (default: the transformed model), exported
        once per model (None for a backend without fp32 export); an export that failed raises
        its error again for the next source instead of being tried twice."""
        model = self.model if model is None else model
        if id(model) not in self._fp32 and callable(getattr(self.backend, "export", None)):
            where = self.workdir / ("fp32" if model is self.model else f"fp32-{len(self._fp32)}")
            where.mkdir()
            try:
                self._fp32[id(model)] = self.backend.export(
                    model, self.inputs, where, input_names=self.in_names,
                    output_names=self.out_names, options=dict(self.profile.options))
            except Exception as exc:
                self._fp32[id(model)] = exc
                raise
        done = self._fp32.get(id(model))
        if isinstance(done, Exception):
            raise done
        return done

    def candidates(self) -> list[tuple[str, dict[str, Any]]]:
        """The runtime's int8 sources for the requested config: (name, config changes). A
        fake-quantized (QAT) graph carries its quantizer, so a source that changes the
        quantizer's config would convert the same graph into the same file: only the first."""
        sources = list(self.backend.int8_sources(self.config, self.model))
        return sources[:1] if self.prepared is not None else sources

    def build(self, name: str, config: QuantConfig, keep: list[str],
              changes: dict[str, Any] | None = None) -> Variant:
        """Quantize, load, sanity-check, score and verify one int8 artifact in its own folder.
        A failing sanity check raises :class:`QuantizationError` (an output that collapsed to
        a constant, with the fallback on, is a gate failure instead); the gate's verdict is
        ``failed`` (None when it passed)."""
        self._count += 1
        self._built.add(_built_key(config, keep))
        where = self.workdir / f"build{self._count}"
        where.mkdir()
        model, transforms = self._model_for(list(keep), config)
        fp32 = None if getattr(self.backend, "qat_graph", False) else self.fp32(model)
        art = self.backend.quantize(
            model, self.inputs, where, input_names=self.in_names,
            output_names=self.out_names, options=dict(self.profile.options),
            calibration=self.calibration, config=config, keep_float=list(keep), fp32=fp32,
            prepared=self.prepared)
        sess = self.backend.load(art, threads=self.profile.threads, options=self.load_options)
        target = f"target {self.profile.name}"
        collapsed = None
        try:
            check_outputs_sane(sess, self.calibration, target, model)
        except ModelRunError as exc:
            raise int8_run_failure(self.profile.name, art, exc) from exc
        except QuantizationError as exc:
            # an output that collapsed is a gate failure the fallback can mend (keeping the
            # layers that collapse it in float); without the fallback, the error as it is
            if not (config.fallback and self.prepared is None) or "is constant" not in exc.message:
                raise
            collapsed = exc.message.removeprefix(f"{target}: ")
        score = None
        if self.task is not None:
            from ..measure.scoring import evaluate_session

            score = evaluate_session(sess, self.task.test, self.task, batch=self.batch)
        report = self.check(sess) if self.check is not None else None
        variant = Variant(name, config, list(keep), dict(changes or {}), art, sess, score, where,
                          report, transforms=transforms)
        variant.failed = collapsed or self.gate(variant)
        return variant

    def gate(self, v: Variant) -> str | None:
        """None when ``v`` is within the accuracy budget and passes verification, else why."""
        parts = []
        task, ref = self.task, self.ref_score
        if task is not None and v.score is not None and ref is not None \
                and task.drop(ref, v.score) > self.budget:
            parts.append(f"int8 {task.metric} on {task.name} test is {v.score:.2f} against "
                         f"fp32 {ref:.2f}: a drop of {task.drop(ref, v.score):.2f} points, "
                         f"over the budget of {self.budget}")
        if self.fidelity_gate is not None and self.holdout and v.sess is not None:
            numbers = self.fidelity_gate.measure(self._fp32_model, v.sess, self.holdout,
                                                 self.out_names)
            self._fidelity[str(v.where)] = numbers
            verdict = self.fidelity_gate.verdict(numbers, self.holdout_source)
            if verdict is not None:
                parts.append(verdict)
        if v.report is not None and not v.report.passed:
            bad = [f"{o.name}: " + "; ".join(o.failures) for o in v.report.outputs
                   if not o.passed]
            parts.append("it misses the profile's tolerance (" + " | ".join(bad) + ")")
        return " and ".join(parts) or None

    def runtime_culprits(self, v: Variant) -> dict[str, Any]:
        """The layers where ``v``'s artifact departs from PyTorch, read from the runtime's own
        tensors (:func:`edgekit.explain.culprits.gate_culprits`, one thread) on the samples
        where it departs most (among the verification, held-out or calibration samples).
        Never raises: when explain cannot read the artifact the record says why and the
        fallback uses the PyTorch-side sensitivity ranking."""
        pool = [*self.check_samples, *(self.holdout or [])] or self.calibration
        quantizable = [n for n, _ in quantizable_layers(self.model)]
        try:
            from ..explain.culprits import gate_culprits, worst_samples

            assert v.art is not None and v.sess is not None
            samples, chosen = worst_samples(self._fp32_model, v.sess, pool)
            record = gate_culprits(self._model_for(v.keep)[0], v.art, samples, quantizable,
                                   options=self.load_options, threads=1)
            record["samples"] = chosen
        except Exception as exc:  # noqa: BLE001 - a diagnosis: the build goes on without it
            self.log(f"explain could not rank this variant's layers ({_first_line(exc)}); "
                     "using the PyTorch-side sensitivity ranking")
            return {"source": "pytorch sensitivity (explain failed on the artifact)",
                    "error": _first_line(exc), "layers": [], "try_first": []}
        if record["layers"]:
            self.log("the runtime's own tensors depart from PyTorch first at " + ", ".join(
                f"{r['module']} ({r['sqnr_db']} dB)" for r in record["layers"]))
        return record

    def _culprit_message(self) -> tuple[str, str | None]:
        """The error's sentence naming the runtime culprits, and the hint to keep them."""
        from ..explain.culprits import culprit_message

        quantizable = [n for n, _ in quantizable_layers(self.model)]
        return culprit_message(self.culprits or {}, self.profile.backend, self.keep,
                               quantizable)

    def after_unrunnable(self, changes: dict[str, Any], exc: EdgekitError) -> Variant:
        """The runtime could not load or run the int8 file it was given (a CPU plugin whose
        graph passes fail on it): the runtime's other realisations (every layer int8), the
        first that builds kept, so the gate and the fallback go on from it; none: ``exc``,
        with how each failed."""
        base = dataclasses.replace(self.config, **changes)
        failed = []
        said = _first_line(exc).replace(f"{self.workdir}/", "")  # no temporary path recorded
        for label, alt in self.backend.int8_alternatives(base, self.model):
            if _built_key(dataclasses.replace(base, **alt), self.keep) in self._built:
                continue  # built already (a source that failed too)
            self.log(f"{said}; retrying with {label}")
            try:
                v = self.build(label, dataclasses.replace(base, **alt), self.keep,
                               {**changes, **alt})
            except EdgekitError as e:
                if not _unrunnable(e):
                    raise
                failed.append(f"{label}: {_first_line(e)}")
                continue
            self.attempts.append({"keep_float": list(self.keep), "score": v.score,
                                  "config": alt, "passed": v.failed is None,
                                  "after_error": said})
            self.alternative = label
            self.alternative_why = f"could not be run ({said})"
            return v
        if failed:
            raise exc.extend(" (the runtime's other int8 realisations failed too: "
                             + "; ".join(failed) + ")")
        raise exc

    def _drop(self, v: Variant | None) -> None:
        if v is not None and v.where is not None:
            shutil.rmtree(v.where, ignore_errors=True)

    # -- the search -----------------------------------------------------------------------
    def _fidelity_of(self, v: Variant) -> float | None:
        """What the source choice compares: with a task the score, else the lowest held-out
        SQNR over the outputs (None where neither was measured; the gate's numbers write an
        infinite SQNR, outputs equal to fp32, as the string ``"inf"``)."""
        if self.task is not None:
            return v.score
        numbers = self._fidelity.get(str(v.where))
        return min(float(o["sqnr_db"]) for o in numbers["outputs"]) if numbers else None

    def _outcome(self, v: Variant) -> dict[str, Any]:
        """A built variant as the manifest's comparisons record it: its score, the gate's
        verdict and, without a task, its held-out SQNR."""
        f = self._fidelity_of(v)
        return {"score": v.score, "passed": v.failed is None, "why_failed": v.failed,
                **({"heldout_sqnr_db": json_number(round(f, 2))} if self.task is None
                   and f is not None
                   else {})}

    def choose_source(self) -> Variant:
        """Build and gate every source; keep the one that passes. Several: the faster, timed
        against each other, where a timing here is the target's, unless another is more
        faithful within the slowdown its gain allows (:func:`truer_source`); untimed, the
        most faithful, then the first source. None passing: the fallback goes on from the
        first usable one."""
        sources = self.candidates()
        if len(sources) == 1:
            name, changes = sources[0]
            try:
                v = self.build(name, dataclasses.replace(self.config, **changes), self.keep,
                               changes)
            except EdgekitError as exc:
                if not _unrunnable(exc):
                    raise
                return self.after_unrunnable(changes, exc)
            self.attempts.append({"keep_float": list(self.keep), "score": v.score})
            return v
        built: dict[str, Variant] = {}
        errors: dict[str, str] = {}
        same: list[str] = []  # sources the backend says would give a file already built
        by_key = {_source_key(c): c for _, c in sources}
        first_error: Exception | None = None
        for name, changes in sources:
            key = _source_key(changes)
            if any(v.art is not None and v.art.info.get("sources_identical")
                   and _but_floor(by_key[k]) == _but_floor(changes) for k, v in built.items()):
                same.append(key)
                continue
            try:
                built[key] = self.build(name, dataclasses.replace(self.config, **changes),
                                        self.keep, changes)
            except ConfigError:
                raise  # a setting this runtime refuses: every source would refuse it
            except Exception as exc:  # noqa: BLE001 - this source failed; another may not
                errors[key] = _first_line(exc)
                first_error = first_error or exc
        if not built and isinstance(first_error, EdgekitError) and _unrunnable(first_error):
            return self.after_unrunnable(sources[0][1], first_error)
        if not built and isinstance(first_error, EdgekitError) and len(errors) > 1:
            # every source failed: the configured one's error, with its hint, and the others'
            raise first_error.extend(
                " (the other int8 sources failed too: "
                + "; ".join(f"{k}: {w}" for k, w in list(errors.items())[1:]) + ")")
        if not built:
            raise QuantizationError(
                f"target {self.profile.name}: no int8 source gave a usable model: "
                + "; ".join(f"{k}: {w}" for k, w in errors.items()),
                hint="keep the failing layers in float (keep_float)")
        order = list(by_key)
        passing = [k for k in order if k in built and built[k].failed is None]
        floats = {k: float_layer_count(v) for k, v in built.items()}
        all_int8 = fewest_float(passing, floats) if not self.config.fallback else passing
        dropped = [k for k in passing if k not in all_int8]
        passing = all_int8
        # sources that run the same ops on other numbers (LiteRT's scale floors): no timing
        same_ops = all(v.art is not None and v.art.info.get("sources_same_ops")
                       for v in built.values())
        fid = {k: self._fidelity_of(v) for k, v in built.items()}
        what = "score" if self.task is not None else "held-out SQNR"
        timed: dict[str, float] = {}
        vs_first: dict[str, list[float]] = {}  # a later source's time over the first's
        if not passing:
            kept = next(k for k in order if k in built)
            reason = "neither passes the gate yet: the fallback goes on from " + kept
        elif len(passing) > 1 and self.config.latency_check and self.profile.arch == host_arch() \
                and not same_ops:
            sessions = {k: built[k].sess for k in passing}
            feeds = [t.detach().numpy() for t in self.inputs]
            first = time_sessions(sessions, feeds, self.config)  # type: ignore[arg-type]
            timed = {k: first.median_ms(k) for k in passing}
            kept = passing[0]  # the runtime's first choice, unless another is faster twice
            for k in passing[1:]:
                won, ratios = faster(sessions, k, kept, feeds,  # type: ignore[arg-type]
                                     self.config, first=first)
                vs_first[k] = ratios
                if won:
                    kept = k
            other = next(k for k in passing if k != kept)
            reason = (f"both pass; {kept} is kept ({timed[kept]:.4f} ms vs {other} "
                      f"{timed[other]:.4f} ms, timed against each other; another source "
                      "replaces the first only when faster in two measurements)")
            truer = truer_source(kept, passing, timed, fid, scored=self.task is not None)
            if truer is not None:
                fast, kept = kept, truer
                gain = (fid[kept] or 0.0) - (fid[fast] or 0.0)
                reason = (f"both pass; {kept} is kept for its fidelity ({what} {fid[kept]:.2f} "
                          f"vs {fast} {fid[fast]:.2f}) at {timed[kept]:.4f} ms vs "
                          f"{timed[fast]:.4f} ms, within the "
                          f"{allowed_slowdown(gain, scored=self.task is not None):g}x of the "
                          "faster its gain allows")
        elif len(passing) == 1:
            kept, reason = passing[0], "the only one that passes the gate"
            if same:
                reason = (f"the only one built: {', '.join(same)} would give the same file "
                          "(the runtime says so), so it was not built")
        else:
            kept = passing[0]
            for k in passing[1:]:
                if more_faithful(fid[k], fid[kept], scored=self.task is not None):
                    kept = k
            why = ("the sources run the same ops" if same_ops else
                   "another CPU architecture or latency_check off")
            reason = (f"{'both' if len(passing) == 2 else f'all {len(passing)}'} pass; not "
                      f"timed ({why}): the higher {what} by the smallest gain that counts, "
                      f"else the first ({passing[0]})")
        if dropped:  # fallback off: the sources that run more layers in float yield
            why = (f"{', '.join(dropped)} passed too but leaves more layers in float ("
                   + ", ".join(f"{k} {floats[k]}" for k in [kept, *dropped])
                   + " float compute layers, read from the artifacts) and fallback is off")
            reason = why if len(passing) == 1 else f"{reason}; {why}"
        self.source_choice = {"kept": kept, "why": reason, "sources": {
            k: ({**self._outcome(built[k]),
                 **({"float_layers": floats[k]} if floats[k] is not None else {}),
                 **({"median_ms": round(timed[k], 5)} if k in timed else {}),
                 **({"vs_first": vs_first[k]} if k in vs_first else {})}
                if k in built else {"score": None, "passed": False, "why_failed": errors[k]}
                if k in errors else {"score": None, "passed": None,
                                     "not_built": "the same file as " + next(iter(built))})
            for k in order}}
        for k, v in built.items():
            if k != kept:
                self._drop(v)
        chosen = built[kept]
        self.attempts.append({"keep_float": list(self.keep), "score": chosen.score,
                              "config": dict(chosen.changes)})
        return chosen

    def choose_equalization(self, v: Variant) -> Variant:
        """``equalize = "auto"``: ``v``, built from the equalized model, against the same
        source built without cross-layer equalization (bias correction and learned rounding
        still applied); one that passes the gate over one that misses, else the more faithful
        (with a task the higher score, else the held-out SQNR higher by over
        :data:`EQUALIZE_MARGIN_DB`), else ``v``. Nothing to compare where equalization
        changed no layer, or for a QAT graph."""
        record = v.transforms or {}
        if self.config.equalize != "auto" or self.prepared is not None \
                or "equalize" not in (record.get("applied") or []):
            return v
        self.log("equalize auto: building the same source without cross-layer equalization")
        cfg = dataclasses.replace(v.config, equalize=False)
        try:
            alt: Variant | None = self.build(f"{v.name}, not equalized", cfg, self.keep,
                                             {**v.changes, "equalize": False})
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the equalized build stands
            alt, error = None, _first_line(exc)
        scored = self.task is not None
        what = "score" if scored else "held-out SQNR"
        if alt is None:
            kept, why, other = v, f"the build without it failed: {error}", {"error": error}
        else:
            f_v, f_alt = self._fidelity_of(v), self._fidelity_of(alt)
            other = self._outcome(alt)
            numbers = (f" ({what} {f_alt:.2f} without, {f_v:.2f} with)"
                       if f_v is not None and f_alt is not None else "")
            if (v.failed is None) != (alt.failed is None):
                kept = v if v.failed is None else alt
                why = "the only one of the two that passes the gate" + numbers
            elif f_alt is not None and f_v is not None and (
                    f_alt > f_v if scored else f_alt > f_v + EQUALIZE_MARGIN_DB):
                kept, why = alt, "the more faithful" + numbers
            else:
                kept, why = v, ("the build without it is not more faithful"
                                + ("" if scored else f" by over {EQUALIZE_MARGIN_DB} dB")
                                + numbers)
            self.attempts.append({"keep_float": list(self.keep), "score": alt.score,
                                  "config": {"equalize": False},
                                  "passed": alt.failed is None})
        self.equalize_choice = {"kept": "equalized" if kept is v else "not equalized",
                                "why": why, "equalized": self._outcome(v),
                                "not_equalized": other}
        self.log(f"equalize auto: {self.equalize_choice['kept']} kept, {why}")
        self._drop(alt if kept is v else v)
        if kept is v:  # the decision, not "auto": a rebuild from it builds this file only
            kept = dataclasses.replace(v, config=dataclasses.replace(v.config, equalize=True))
        return kept

    def fallback(self, v: Variant) -> Variant:
        """``v`` missed the gate: QAT ranges -> calibrated, the runtime's alternatives (every
        layer int8: tried with the fallback off too), then layers in float (fallback on: 1, 2,
        4, ... up to ``max_fallback``; at each size the runtime's culprits first, then the
        most sensitive layers in PyTorch); raise :class:`QuantizationError` with the
        per-layer table when nothing passes."""
        cfg = self.config
        self.log(f"{v.failed}; measuring per-layer sensitivity")
        ranked = [r["layer"] for r in self.sensitivity() if r["layer"] not in self.keep]
        if cfg.fallback and self.prepared is not None:
            # The QAT graph's learned ranges missed: calibrate the QAT-tuned weights instead,
            # which also lets the per-layer fallback below run.
            self.log("QAT ranges missed; calibrating the tuned weights")
            self.prepared = None
            self._drop(v)
            v = self.build(v.name, v.config, self.keep, v.changes)
            self.attempts.append({"keep_float": list(self.keep), "score": v.score,
                                  "qat_ranges": False})
        if self.prepared is None and v.failed is not None:
            # The runtime's other int8 realisations first: one may pass with every layer in
            # int8 (so they are tried with the fallback off too).
            for label, changes in self.backend.int8_alternatives(
                    v.config, self.model, sources_compared=self.source_choice is not None):
                if _built_key(dataclasses.replace(v.config, **changes), self.keep) in \
                        self._built:
                    continue  # built already (a source the choice compared)
                self.log(f"retrying with {label}")
                alt = self.build(label, dataclasses.replace(v.config, **changes), self.keep,
                                 {**v.changes, **changes})
                self.attempts.append({"keep_float": list(self.keep), "score": alt.score,
                                      "config": changes, "passed": alt.failed is None})
                if alt.failed is None:
                    self._drop(v)
                    v, self.alternative = alt, label
                    break
                self._drop(alt)
        orders = [ranked]  # each a ranking of the layers to keep in float
        if v.failed is not None and self.culprits is None:
            self.culprits = self.runtime_culprits(v)
            if cfg.fallback_order == "runtime":
                first = [n for n in self.culprits["try_first"] if n not in self.keep]
                ranked = first + [n for n in ranked if n not in first]
                orders = [ranked, orders[0]]
        if cfg.fallback and self.prepared is None and v.failed is not None:
            # 1, 2, 4, ... layers; at each size the runtime's culprits first, then the
            # PyTorch-side order (two kinds of evidence, and near-tied samples make neither
            # monotonic); a set already built is not built again
            k, tried = 1, set()
            while k <= min(cfg.max_fallback, len(ranked)) and v.failed is not None:
                for order in orders:
                    trial = self.keep + order[:k]
                    if frozenset(trial) in tried:
                        continue
                    tried.add(frozenset(trial))
                    self.log(f"retrying with {trial} in float")
                    self._drop(v)
                    v = self.build(v.name, v.config, trial, v.changes)
                    self.attempts.append({"keep_float": list(trial), "score": v.score})
                    if v.failed is None:
                        self.fallback_layers = order[:k]
                        break
                k *= 2
        if v.failed is not None:
            table = [{**r, "precision": "fp32" if r["layer"] in self.keep else "int8"}
                     for r in self.sensitivity()]
            found, hint = self._culprit_message()
            raise QuantizationError(
                f"target {self.profile.name}: {v.failed} (tried {len(self.attempts)} layer "
                f"choice(s)).{found} Per-layer sensitivity (SQNR of the output with only that "
                "layer quantized; lowest first):",
                table=table, suggested_float=self.keep + ranked[: max(1, min(3, len(ranked)))],
                hint=hint)
        return v

    def latency_check(self, v: Variant) -> tuple[Variant, dict[str, Any]]:
        """int8 must not be slower than fp32 without saying so (and trying the faster
        alternatives the runtime offers): see :func:`edgekit.quantize.latency.latency_choice`."""
        base = dataclasses.replace(v, name=self.alternative or "as configured", changes={})

        def build(cfg: QuantConfig, keep: list[str]) -> Variant:
            return self.build("variant", cfg, keep)

        def fp32() -> Artifact:
            art = self.fp32()
            if art is None:
                raise EdgekitError(f"backend {self.profile.backend} has no fp32 export")
            return art

        chosen, entry = latency_choice(
            backend=self.backend, profile=self.profile, model=self.model, inputs=self.inputs,
            config=v.config, base=base, build=build, fp32=fp32,
            allow_layer_fallback=self.prepared is None and self.config.fallback,
            sources_compared=self.source_choice is not None, log=lambda m: _log(self.progress, m))
        return chosen, entry

    def run(self, target_dir: Path, decisions: DecisionStore | None = None) -> Int8Result:
        """Search (or reuse the recorded decisions), ship the chosen artifact to
        ``target_dir`` and return it with its manifest entry."""
        self.workdir = Path(tempfile.mkdtemp(prefix="edgekit-int8-"))
        try:
            recorded = decisions.load() if decisions is not None else None
            reused = self._reuse(recorded) if recorded is not None else None
            if reused is not None:
                assert decisions is not None and recorded is not None
                self.log(f"reusing the recorded int8 decisions ({decisions.where}): "
                         "no timing, the same choices as the first build")
                advice = (recorded["manifest"].get("latency_check") or {}).get("advice")
                if (recorded["manifest"].get("latency_check") or {}).get("below_min_speedup"):
                    warnings.warn(f"target {self.profile.name}: {advice}", Int8SlowerWarning,
                                  stacklevel=3)
                return self._ship(reused, target_dir, dict(recorded["manifest"]))
            v = self.choose_equalization(self.choose_source())
            if v.failed is not None:
                v = self.fallback(v)
            chosen, latency = self.latency_check(v)
            entry = self.result(chosen, latency)
            if decisions is not None:
                decisions.save({"decided": entry["decisions"], "manifest": entry})
            return self._ship(chosen, target_dir, entry)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _reuse(self, recorded: dict[str, Any]) -> Variant | None:
        """Build the recorded choice once; None (search again) when it no longer passes."""
        try:
            decided = recorded["decided"]
            changes = {k: v for k, v in dict(decided["config"]).items() if k != "keep_float"}
            cfg = dataclasses.replace(self.config, **changes)
            keep = [str(n) for n in decided["keep_float"]]
            if not decided.get("qat_ranges", True):
                self.prepared = None
            v = self.build("recorded", cfg, keep, changes)
        except (KeyError, TypeError, ValueError, EdgekitError) as exc:
            self.log(f"the recorded int8 decisions do not apply ({_first_line(exc)}); "
                     "searching again")
            return None
        if v.failed is not None:
            self.log(f"the recorded int8 decisions no longer pass ({v.failed}); searching again")
            self._drop(v)
            return None
        return v

    def _ship(self, v: Variant, target_dir: Path, entry: dict[str, Any]) -> Int8Result:
        """Move ``v``'s files to ``target_dir`` and load them from there."""
        assert v.art is not None and v.where is not None
        if target_dir.exists():
            shutil.rmtree(target_dir)
        shutil.move(str(v.where), str(target_dir))
        art = dataclasses.replace(v.art, root=target_dir)
        sess = self.backend.load(art, threads=self.profile.threads, options=self.load_options)
        return Int8Result(art, sess, entry, v.report)

    def result(self, chosen: Variant, latency: dict[str, Any]) -> dict[str, Any]:
        """The manifest's ``quantization`` entry for the shipped variant."""
        keep, fallback = self.keep, self.fallback_layers
        speed_float = [n for n in chosen.keep if n not in keep + fallback]
        rows = {r["layer"]: r for r in self.memo.get("sensitivity", [])}
        assert chosen.art is not None
        kinds = dict(quantizable_layers(self.model))
        names = list(kinds)
        read_back = (chosen.art.info.get("quantization") or {}).get("layers")
        executed = layer_precisions(read_back, names, kinds)  # what the artifact runs
        # layers the file cannot hold (dropped or folded by the exporter), from the model
        use = layer_use(self.model, self.calibration[:2], [n for n in names if n not in executed])
        per_layer = [{"layer": n, "kind": k,
                      "precision": executed.get(n, REASONS[use[n]][0] if n in use else
                                                "fp32" if n in chosen.keep else "int8"),
                      "requested": "fp32" if n in chosen.keep else "int8",
                      "precision_from": "artifact" if n in executed else
                      "model" if n in use else "requested",
                      "reason": (REASONS[use[n]][1] if n in use else
                                 "kept in float by the user" if n in keep else
                                 "automatic fallback (accuracy budget)" if n in fallback else
                                 "latency fallback (faster in float)" if n in speed_float else
                                 "the runtime's quantizer leaves it in float (read back from "
                                 "the artifact)" if executed.get(n, "int8") == "fp32" else
                                 None),
                      **({"sqnr_db": rows[n]["sqnr_db"]} if n in rows else {})}
                     for n, k in quantizable_layers(self.model)]
        requested = self.config.to_json()
        effective = chosen.config.to_json()
        assert chosen.sess is not None and chosen.art is not None
        entry: dict[str, Any] = {
            "config": effective,
            "mode": "qat" if self.qat is not None else "ptq",
            "qat_ranges": ("learned (fake-quantized graph converted)" if self.prepared is not None
                           else "calibrated on the QAT-tuned weights")
            if self.qat is not None else None,
            "calibration_samples": len(self.calibration) * self.batch,
            "float_layers": list(chosen.keep),
            "fallback_layers": fallback,
            # where the first variant that missed the gate departed from PyTorch, and from what
            "culprits": self.culprits,
            "latency_fallback_layers": speed_float,
            "layers": per_layer,
            "attempts": self.attempts,
            "source_choice": self.source_choice,
            "equalize_choice": self.equalize_choice,
            "accuracy_alternative": (
                f"{self.alternative}: the configured realisation "
                f"{self.alternative_why or 'missed the accuracy budget or the tolerance'}, "
                "this one met it with every layer in int8"
                if self.alternative else None),
            "executed_precision": chosen.sess.info.get("precision"),
            "transforms": chosen.transforms if chosen.transforms is not None
            else self.transforms,
            "unattributed_nodes": unattributed_nodes(read_back, names, kinds),
            # other ops on float data, per op type, read from what the runtime executes
            "float_ops": (chosen.art.info.get("quantization") or {}).get("float_ops"),
            "size_bytes": chosen.art.size_bytes,
            "latency_check": latency,
            # What the searches chose (timings included): a rebuild given the same decisions
            # file builds exactly this, without timing.
            "decisions": {
                "config": {k: v for k, v in effective.items()
                           if k != "keep_float" and v != requested[k]},
                "keep_float": list(chosen.keep),
                "qat_ranges": self.prepared is not None,
            },
        }
        if str(chosen.where) in self._fidelity:
            entry["heldout_fidelity"] = {"data": self.holdout_source,
                                         **self._fidelity[str(chosen.where)]}
        task, ref, score = self.task, self.ref_score, chosen.score
        if task is not None and ref is not None and score is not None:
            entry["accuracy"] = {"metric": task.metric, "split": "test", "fp32": ref,
                                    "int8": score, "drop": round(task.drop(ref, score), 4),
                                    "budget": self.budget}
        return entry


def build_int8(
    backend: Any,
    profile: TargetProfile,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target_dir: Path,
    *,
    in_names: list[str],
    out_names: list[str],
    calibration: list[list[np.ndarray]],
    config: QuantConfig,
    task: Task | None,
    batch: int,
    progress: bool = True,
    cache: dict[str, Any] | None = None,
    prepared: Any = None,
    check: Any = None,
    decisions: DecisionStore | None = None,
    holdout: list[list[np.ndarray]] | None = None,
    holdout_source: str = "held-out calibration data",
    check_samples: Sequence[Sequence[np.ndarray]] = (),
) -> Int8Result:
    """Build ``profile``'s int8 artifact into ``target_dir`` (see :class:`Int8Build`).

    With a task, meet ``profile.max_accuracy_drop`` on ``task.test`` by keeping the most
    sensitive layers (measured on the calibration data) in float, else raise
    :class:`QuantizationError` with the per-layer table. ``check(session)`` (the pipeline's
    verification against the profile's tolerance) returns a report with ``passed``; a failing
    check also triggers the fallback, and the shipped artifact's report is
    :attr:`Int8Result.report`; ``check_samples`` are the samples it verifies on.
    ``holdout``: batches kept out of calibration; the build must then pass the profile's
    ``[gate]`` (:mod:`edgekit.quantize.gate`) on them. ``cache`` memoises the reference score
    and the sensitivity ranking across the targets of one model; ``decisions`` records and
    reuses the choices.
    """
    return Int8Build(backend, profile, model, inputs, in_names=in_names, out_names=out_names,
                     calibration=calibration, config=config, task=task, batch=batch,
                     progress=progress, memo=cache, prepared=prepared,
                     check=check, holdout=holdout, holdout_source=holdout_source,
                     check_samples=check_samples).run(target_dir, decisions)
