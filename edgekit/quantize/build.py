"""One int8 target: export, sanity-check, accuracy gate and automatic layer fallback.

Used by :func:`edgekit.pipeline.compress` for every profile with ``precision = "int8"``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import Artifact, Session
from ..data.task import Task
from ..errors import QuantizationError
from ..profiles import TargetProfile
from ..train import evaluate
from .config import QuantConfig
from .latency import Variant, config_alternatives, latency_choice
from .sensitivity import layer_sensitivity, quantizable_layers

__all__ = ["Int8Result", "build_int8", "check_outputs_sane"]


@dataclass
class Int8Result:
    artifact: Artifact
    session: Session
    manifest: dict[str, Any] = field(default_factory=dict)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[edgekit] {message}", file=sys.stderr, flush=True)


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
        varies = True
        if refs is not None:
            ref = np.stack([np.asarray(r[i], dtype=np.float64) for r in refs])
            varies = float(ref.std(axis=0).max()) > 0.01 * max(float(np.abs(ref).max()), 1e-12)
        if len(outs) > 1 and varies and float(vals.std(axis=0).max()) == 0.0:
            raise QuantizationError(
                f"{where}: output {spec.name!r} is constant over {len(outs)} calibration "
                f"batches after quantization (value {float(vals.reshape(-1)[0]):.4g})",
                hint="calibration data may be degenerate (all equal?) or a layer collapsed; "
                "keep the most sensitive layers in float")


def _choose_openvino_source(config, profile, keep, inputs, target_dir, attempt, ok, why,
                            load_options, backend, reports):
    """Build and gate OpenVINO int8 from NNCF and from the ONNX Runtime QDQ model; keep the one
    that passes (both: the faster, timed against each other; where a timing here would not be
    the target's, the higher score, then NNCF). Returns the kept build, its config and the
    manifest's ``openvino_source_choice``."""
    from .latency import host_arch, time_sessions

    built: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-ov-source-"))
    try:
        for src in ("nncf", "qdq"):
            cfg = dataclasses.replace(config, openvino_source=src)
            try:
                a, s_, sc = attempt(keep, cfg, workdir / src)
            except Exception as exc:  # this source failed or collapsed: the other may not
                built[src] = {"passed": False, "why": f"{type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]}"[:300]}
                continue
            built[src] = {"cfg": cfg, "art": a, "sess": s_, "score": sc, "passed": ok(sc),
                          "why": None if ok(sc) else why(sc), "report": reports[-1]}
        usable = [k for k in built if "art" in built[k]]
        if not usable:
            raise QuantizationError(f"target {profile.name}: neither OpenVINO int8 source gave "
                                    f"a usable model: " + "; ".join(
                                        f"{k}: {v['why']}" for k, v in built.items()),
                                    hint="keep the failing layers in float (keep_float)")
        passing = [k for k in usable if built[k]["passed"]] or usable
        timed = None
        both_pass = len(passing) == 2 and built[passing[0]]["passed"]
        if both_pass and config.latency_check and profile.arch == host_arch():
            feeds = [t.detach().numpy() for t in inputs]
            timed = time_sessions({k: built[k]["sess"] for k in passing}, feeds, config)
            kept = min(passing, key=lambda k: timed[k])
            reason = (f"both pass; {kept} is faster ({timed[kept]:.4f} ms vs "
                      f"{max(timed.values()):.4f} ms, timed against each other)")
        elif not built[passing[0]]["passed"]:
            # Neither passes: the layer fallback goes on from NNCF (in the benchmark suite,
            # image_audio's QDQ model still failed parity with 8 layers in float, while the
            # NNCF build of the same model passed the gate).
            kept = "nncf" if "nncf" in usable else usable[0]
            reason = "neither passes the gate yet: the fallback goes on from " + kept
        else:
            scores = {k: built[k]["score"] for k in passing}
            kept = passing[0] if len(passing) == 1 or None in scores.values() else max(
                passing, key=lambda k: (scores[k], k == "nncf"))
            reason = ("the only one that passes the gate" if len(passing) == 1 else
                      "both pass; not timed here (another CPU architecture or latency_check "
                      "off): the higher score, then NNCF")
        if target_dir.exists():
            shutil.rmtree(target_dir)
        shutil.move(str(workdir / kept), str(target_dir))
        chosen = built[kept]
        reports.append(chosen["report"])  # the gate's verdict below is the kept build's
        art = dataclasses.replace(chosen["art"], root=target_dir)
        sess = backend.load(art, threads=profile.threads, options=load_options)
        entry = {"kept": kept, "why": reason, "sources": {
            k: {"score": v.get("score"), "passed": v["passed"], "why_failed": v.get("why"),
                **({"median_ms": round(timed[k], 5)} if timed and k in timed else {})}
            for k, v in built.items()}}
        return art, sess, chosen["score"], chosen["cfg"], entry
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
) -> Int8Result:
    """Export the int8 artifact; with a task, meet ``profile.max_accuracy_drop`` on
    ``task.test`` by keeping the most sensitive layers (measured on the calibration data) in
    float, else raise :class:`QuantizationError` with the per-layer table. ``check(session)``
    (the pipeline's verification against the profile's tolerance) returns a report with
    ``passed``; a failing check also triggers the fallback."""
    from ..bench.accuracy import evaluate_session

    cache = cache if cache is not None else {}
    qat = getattr(model, "edgekit_qat_prepared", None)
    if prepared is None and qat is not None and profile.backend == "tflite":
        import copy

        prepared = copy.deepcopy(qat)
    budget = float(profile.max_accuracy_drop)
    load_options = dict(profile.options)
    if profile.backend == "tflite":
        # Verification feeds float data: the session converts at the int8 boundary. A user who
        # chose io="int8" gets int8 tensors from Bundle.load (the artifact records it).
        load_options["io"] = "float"

    def sensitivity() -> list[dict[str, Any]]:
        if "sensitivity" not in cache:
            cache["sensitivity"] = layer_sensitivity(model, calibration,
                                                     per_channel=config.per_channel)
        return cache["sensitivity"]

    reports: list[Any] = []

    def attempt(keep: list[str], cfg: QuantConfig = config,
                where: Path = target_dir) -> tuple[Artifact, Session, float | None]:
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        kwargs: dict[str, Any] = {}
        if prepared is not None:
            kwargs["prepared"] = prepared
        art = backend.export_int8(model, inputs, where, input_names=in_names,
                                  output_names=out_names, options=dict(profile.options),
                                  calibration=calibration, config=cfg, keep_float=keep,
                                  **kwargs)
        sess = backend.load(art, threads=profile.threads, options=load_options)
        check_outputs_sane(sess, calibration, f"target {profile.name}", model)
        score = None
        if task is not None:
            score = evaluate_session(sess, task.test, task, batch=batch)
        reports.append(check(sess) if check is not None else None)
        return art, sess, score

    def ok(score: float | None) -> bool:
        verified = reports[-1] is None or reports[-1].passed
        within = task is None or score is None or task.drop(ref_score, score) <= budget
        return verified and within

    def why(score: float | None) -> str:
        parts = []
        if task is not None and score is not None and task.drop(ref_score, score) > budget:
            parts.append(f"int8 {task.metric} on {task.name} test is {score:.2f} against fp32 "
                         f"{ref_score:.2f}: a drop of {task.drop(ref_score, score):.2f} "
                         f"points, over the budget of {budget}")
        if reports[-1] is not None and not reports[-1].passed:
            bad = [f"{o.name}: " + "; ".join(o.failures) for o in reports[-1].outputs
                   if not o.passed]
            parts.append("it misses the profile's tolerance (" + " | ".join(bad) + ")")
        return " and ".join(parts)

    ref_score = None
    if task is not None:
        if "ref_score" not in cache:
            cache["ref_score"] = evaluate(model, task.test, task)
        ref_score = cache["ref_score"]
    keep = list(config.keep_float)
    active, alternative = config, None  # the config the artifact is built with
    source_choice = None
    if profile.backend == "openvino" and config.openvino_source == "auto":
        art, sess, score, active, source_choice = _choose_openvino_source(
            config, profile, keep, inputs, target_dir, attempt, ok, why, load_options, backend,
            reports)
        tried = [{"keep_float": list(keep), "score": score,
                  "config": {"openvino_source": active.openvino_source}}]
    else:
        art, sess, score = attempt(keep)
        tried = [{"keep_float": list(keep), "score": score}]
    fallback: list[str] = []
    if not ok(score):
        _log(progress, f"{profile.name}: {why(score)}; measuring per-layer sensitivity")
        ranked = [r["layer"] for r in sensitivity() if r["layer"] not in keep]
        if config.fallback and prepared is not None:
            # The QAT graph's learned ranges missed: calibrate the QAT-tuned weights instead,
            # which also lets the per-layer fallback below run.
            _log(progress, f"{profile.name}: QAT ranges missed; calibrating the tuned weights")
            prepared = None
            art, sess, score = attempt(keep)
            tried.append({"keep_float": list(keep), "score": score, "qat_ranges": False})
        if config.fallback and prepared is None and not ok(score):
            # The runtime's other int8 realisations first (OpenVINO: the QDQ model instead of
            # NNCF, the other preset; ONNX Runtime: the other activation type): one of them
            # may pass with every layer in int8.
            for label, changes in config_alternatives(profile, active, model,
                                                      sources_compared=bool(source_choice)):
                alt = dataclasses.replace(active, **changes)
                _log(progress, f"{profile.name}: retrying with {label}")
                a_art, a_sess, a_score = attempt(keep, alt)
                tried.append({"keep_float": list(keep), "score": a_score, "config": changes,
                              "passed": ok(a_score)})
                if ok(a_score):
                    art, sess, score, active, alternative = a_art, a_sess, a_score, alt, label
                    break
        if config.fallback and prepared is None and not ok(score):
            k = 1
            while k <= min(config.max_fallback, len(ranked)):
                trial = keep + ranked[:k]
                _log(progress, f"{profile.name}: retrying with {trial} in float")
                art, sess, score = attempt(trial, active)
                tried.append({"keep_float": list(trial), "score": score})
                if ok(score):
                    fallback = ranked[:k]
                    break
                k *= 2
        if not ok(score):
            if target_dir.exists():
                shutil.rmtree(target_dir)
            table = [{**r, "precision": "fp32" if r["layer"] in keep else "int8"}
                     for r in sensitivity()]
            raise QuantizationError(
                f"target {profile.name}: {why(score)} (tried {len(tried)} layer choice(s)). "
                "Per-layer sensitivity (SQNR of the output with only that layer quantized; "
                "lowest first):",
                table=table, suggested_float=keep + ranked[: max(1, min(3, len(ranked)))])
    keep_all = keep + fallback

    # Latency: int8 must not be slower than fp32 without saying so (and trying the faster
    # alternatives the runtime offers).
    def build_variant(cfg: QuantConfig, trial_keep: list[str],
                      where: Path) -> tuple[Artifact, Session, float | None, str | None]:
        v_art, v_sess, v_score = attempt(trial_keep, cfg, where)
        return v_art, v_sess, v_score, None if ok(v_score) else why(v_score)

    base = Variant(alternative or "as configured", active, list(keep_all), {}, art, sess, score,
                   target_dir)
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-int8-variants-"))
    try:
        chosen, latency = latency_choice(
            backend=backend, profile=profile, model=model, inputs=inputs, in_names=in_names,
            out_names=out_names, config=active, base=base, build=build_variant,
            workdir=workdir, allow_layer_fallback=prepared is None and config.fallback,
            sources_compared=bool(source_choice), log=lambda m: _log(progress, m))
        if chosen is not base:
            assert chosen.where is not None and chosen.art is not None
            shutil.rmtree(target_dir)
            shutil.move(str(chosen.where), str(target_dir))
            art = dataclasses.replace(chosen.art, root=target_dir)
            sess = backend.load(art, threads=profile.threads, options=load_options)
            score = chosen.score
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    effective = chosen.config
    speed_float = [n for n in chosen.keep if n not in keep_all]
    keep_all = list(chosen.keep)
    layers = quantizable_layers(model)
    rows = {r["layer"]: r for r in cache.get("sensitivity", [])}
    per_layer = [{"layer": n, "kind": k, "precision": "fp32" if n in keep_all else "int8",
                  "reason": ("kept in float by the user" if n in keep else
                             "automatic fallback (accuracy budget)" if n in fallback else
                             "latency fallback (faster in float)" if n in speed_float else
                             None),
                  **({"sqnr_db": rows[n]["sqnr_db"]} if n in rows else {})}
                 for n, k in layers]
    manifest = {
        "config": effective.to_json(),
        "mode": "qat" if qat is not None else "ptq",
        "qat_ranges": ("learned (fake-quantized graph converted)" if prepared is not None else
                       "calibrated on the QAT-tuned weights") if qat is not None else None,
        "calibration_samples": len(calibration) * batch,
        "float_layers": keep_all,
        "fallback_layers": fallback,
        "latency_fallback_layers": speed_float,
        "layers": per_layer,
        "attempts": tried,
        "openvino_source_choice": source_choice,
        "accuracy_alternative": (f"{alternative}: the configured realisation missed the "
                                 "accuracy budget or the tolerance, this one met it with every "
                                 "layer in int8" if alternative else None),
        "executed_precision": sess.info.get("precision"),
        "size_bytes": art.size_bytes,
        "latency_check": latency,
    }
    if task is not None:
        manifest["accuracy"] = {"metric": task.metric, "split": "test", "fp32": ref_score,
                                "int8": score, "drop": round(task.drop(ref_score, score), 4),
                                "budget": budget}
    return Int8Result(art, sess, manifest)
