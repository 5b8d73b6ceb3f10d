"""Is the int8 artifact faster than fp32 on its runtime? If not, try the cheap alternatives.

Called by :func:`edgekit.quantize.build.build_int8` after the accuracy gate (see
``QuantConfig.latency_check``). The fp32 artifact of the same model is exported for the same
runtime and timed interleaved with the int8 one (:mod:`edgekit.bench.latency`), so machine noise
hits both alike. Below ``min_speedup``, variants are rebuilt, gated and timed:

* ONNX Runtime: the other activation type (uint8 <-> int8);
* OpenVINO: the other source (NNCF <-> ONNX Runtime QDQ), the other NNCF preset;
* every runtime: single layers kept in float, smallest first (their int8 weights save the least
  and their quantize/dequantize steps cost the most), kept when measurably faster; never a
  layer holding over a quarter of the weights.

The fastest variant that passes the gate is kept; when none reaches ``min_speedup`` the int8
artifact still ships (the user asked for int8), the manifest records it and an
:class:`Int8SlowerWarning` names the faster choice.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import Artifact, Session
from ..errors import EdgekitError
from ..profiles import TargetProfile, list_profiles
from .config import QuantConfig
from .sensitivity import quantizable_layers

__all__ = ["Int8SlowerWarning", "Variant", "latency_choice", "NOISE"]

#: A variant must be this much faster (median ratio) than the current best to replace it.
NOISE = 0.97
_WARMUP = 10
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


class Int8SlowerWarning(UserWarning):
    """An int8 artifact measured slower than its fp32 artifact on the same runtime."""


@dataclass
class Variant:
    """One int8 build: what was changed from the requested config, and what it gave."""

    name: str
    config: QuantConfig
    keep: list[str]
    changes: dict[str, Any] = field(default_factory=dict)
    art: Artifact | None = None
    sess: Session | None = None
    score: float | None = None
    where: Path | None = None


#: build(config, keep_float, out_dir) -> (artifact, session, score, why it failed the gate or
#: None when it passed)
Builder = Callable[[QuantConfig, list[str], Path], tuple[Artifact, Session, Any, str | None]]


def host_arch() -> str:
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def _stats(samples: list[float]) -> float:
    return float(np.median(np.asarray(samples, dtype=np.float64))) * 1e3


def time_sessions(sessions: dict[str, Session], feeds: list[np.ndarray],
             config: QuantConfig) -> dict[str, float]:
    """Median ms per session, timed interleaved."""
    from ..bench.latency import collect_interleaved

    got = collect_interleaved(sessions, {k: feeds for k in sessions}, warmup=_WARMUP,
                              runs=int(config.latency_runs),
                              duration_s=float(config.latency_max_seconds))
    return {k: _stats(v) for k, v in got.samples.items()}


def config_alternatives(profile: TargetProfile, config: QuantConfig, model: torch.nn.Module,
                        *, sources_compared: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(name, QuantConfig changes) for the runtime's cheap alternatives to ``config``; with
    ``sources_compared`` (OpenVINO ``auto`` built, gated and timed both sources already), none
    that switches the OpenVINO source."""
    act = "int8" if config.activation_type == "int8" else "uint8"
    other_act = "uint8" if act == "int8" else "int8"
    if profile.backend == "onnxruntime":
        return [(f"{other_act} activations", {"activation_type": other_act})]
    if profile.backend == "openvino":
        recurrent = any(k in ("lstm", "gru", "rnn") for _, k in quantizable_layers(model))
        preset = config.preset if config.preset != "auto" else (
            "mixed" if recurrent else "performance")
        other_preset = "performance" if preset == "mixed" else "mixed"
        if config.openvino_source == "nncf":
            alts = [("ONNX Runtime QDQ source", {"openvino_source": "qdq"}),
                    (f"NNCF {other_preset} preset", {"preset": other_preset})]
        else:
            alts = [("NNCF source", {"openvino_source": "nncf", "preset": "auto"}),
                    (f"QDQ {other_act} activations", {"activation_type": other_act})]
        return [a for a in alts if not (sources_compared and "openvino_source" in a[1])]
    return []


def _fp32_name(profile: TargetProfile) -> str | None:
    name = profile.name.replace("int8", "fp32")
    return name if name != profile.name and name in list_profiles() else None


def latency_choice(
    *,
    backend: Any,
    profile: TargetProfile,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    in_names: list[str],
    out_names: list[str],
    config: QuantConfig,
    base: Variant,
    build: Builder,
    workdir: Path,
    allow_layer_fallback: bool = True,
    sources_compared: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[Variant, dict[str, Any]]:
    """Return the variant to ship and the manifest's ``latency_check`` entry."""
    if not config.latency_check:
        return base, {"skipped": "turned off (quantization latency_check = false)"}
    host = host_arch()
    if profile.arch != host:
        return base, {"skipped": f"target arch {profile.arch} is not this machine's ({host}): "
                      "a latency measured here would not be the target's"}
    if not callable(getattr(backend, "export", None)):
        return base, {"skipped": f"backend {profile.backend} has no fp32 export to compare with"}
    t0 = time.perf_counter()
    feeds = [t.detach().numpy() for t in inputs]
    with tempfile.TemporaryDirectory(prefix="edgekit-fp32-") as tmp:
        try:
            fp32_art = backend.export(model, inputs, Path(tmp), input_names=in_names,
                                      output_names=out_names, options=dict(profile.options))
            fp32 = backend.load(fp32_art, threads=profile.threads, options=dict(profile.options))
            fp32.run(feeds)
        except (EdgekitError, RuntimeError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else ""
            return base, {"skipped": f"the fp32 reference artifact failed: "
                          f"{type(exc).__name__}: {msg}"}
        assert base.sess is not None
        ms = time_sessions({"fp32": fp32, "int8": base.sess}, feeds, config)
        fp32_ms, base_ms = ms["fp32"], ms["int8"]
        tried: list[dict[str, Any]] = [{
            "name": base.name, "changes": {}, "keep_float": list(base.keep), "passed_gate": True,
            "int8_ms": round(base_ms, 5), "speedup": round(fp32_ms / base_ms, 4)}]
        best, int8_ms = base, base_ms
        min_speedup = float(config.min_speedup)
        if fp32_ms / base_ms < min_speedup:
            log(f"{profile.name}: int8 is {fp32_ms / base_ms:.2f}x fp32 ({base_ms:.4f} ms vs "
                f"{fp32_ms:.4f} ms); trying faster variants")
            best = _search(
                profile=profile, model=model, config=config, base=base, build=build,
                workdir=workdir, fp32=fp32, feeds=feeds, tried=tried,
                allow_layer_fallback=allow_layer_fallback, log=log, min_speedup=min_speedup,
                sources_compared=sources_compared)
            if best is not base:  # re-measure the choice on its own, against fp32
                assert best.sess is not None
                ms = time_sessions({"fp32": fp32, "int8": best.sess}, feeds, config)
                fp32_ms, int8_ms = ms["fp32"], ms["int8"]
        speedup = fp32_ms / int8_ms
    flagged = speedup < min_speedup
    entry: dict[str, Any] = {
        "runtime": profile.backend, "threads": profile.threads,
        "batch": int(inputs[0].shape[0]) if inputs[0].dim() else 1,
        "runs": int(config.latency_runs), "fp32_ms": round(fp32_ms, 5),
        "int8_ms": round(int8_ms, 5), "speedup": round(speedup, 4), "min_speedup": min_speedup,
        "variants_tried": tried, "chosen": best.name,
        "chosen_changes": {**best.changes, "keep_float": list(best.keep)},
        "slower_than_fp32": speedup < 1.0, "below_min_speedup": flagged, "advice": None,
        "check_seconds": round(time.perf_counter() - t0, 3),
    }
    for row in tried:
        row["chosen"] = row["name"] == best.name
    if flagged:
        fp32_target = _fp32_name(profile)
        choice = (f"use {fp32_target} for this model" if fp32_target else
                  f"use an fp32 {profile.backend} target for this model")
        advice = (f"{choice}: int8 is {speedup:.2f}x the speed of fp32 on {profile.backend} "
                  f"({int8_ms:.4f} ms vs {fp32_ms:.4f} ms, measured on this machine with "
                  f"{profile.threads} thread(s)); none of the {len(tried)} int8 variant(s) "
                  f"tried reached {min_speedup}x. Keep int8 only if its size matters more.")
        entry["advice"] = advice
        warnings.warn(f"target {profile.name}: {advice}", Int8SlowerWarning, stacklevel=3)
    elif best is not base:
        entry["advice"] = (f"chose {best.name!r}: {speedup:.2f}x fp32 (the requested settings "
                           f"gave {tried[0]['speedup']:.2f}x)")
    log(f"{profile.name}: latency check: int8 {int8_ms:.4f} ms vs fp32 {fp32_ms:.4f} ms = "
        f"{speedup:.2f}x ({best.name}; {len(tried)} variant(s) measured in "
        f"{entry['check_seconds']:.1f} s)")
    return best, entry


def _search(*, profile: TargetProfile, model: torch.nn.Module, config: QuantConfig,
            base: Variant, build: Builder, workdir: Path, fp32: Session,
            feeds: list[np.ndarray], tried: list[dict[str, Any]], allow_layer_fallback: bool,
            log: Callable[[str], None], min_speedup: float,
            sources_compared: bool = False) -> Variant:
    """Build, gate and time variants (at most ``config.latency_variants``); return the best."""
    best = base
    best_speedup = tried[0]["speedup"]
    budget = int(config.latency_variants)
    count = 0

    def trial(name: str, changes: dict[str, Any], keep: list[str]) -> None:
        nonlocal best, best_speedup, count
        count += 1
        cfg = dataclasses.replace(best.config, **changes)
        where = workdir / f"variant{count}"
        row: dict[str, Any] = {"name": name, "changes": {**best.changes, **changes},
                               "keep_float": list(keep)}
        tried.append(row)
        try:
            art, sess, score, failed = build(cfg, keep, where)
        except EdgekitError as exc:
            row.update(passed_gate=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            shutil.rmtree(where, ignore_errors=True)
            return
        row["passed_gate"] = failed is None
        if failed is not None:
            row["gate"] = failed
            shutil.rmtree(where, ignore_errors=True)
            return
        assert best.sess is not None
        ms = time_sessions({"fp32": fp32, "best": best.sess, "cand": sess}, feeds, config)
        speedup = ms["fp32"] / ms["cand"]
        row.update(int8_ms=round(ms["cand"], 5), speedup=round(speedup, 4))
        if ms["cand"] < ms["best"] * NOISE:
            log(f"{profile.name}: {name} is faster ({speedup:.2f}x fp32); keeping it")
            if best is not base and best.where is not None:
                shutil.rmtree(best.where, ignore_errors=True)
            best = Variant(name, cfg, list(keep), {**best.changes, **changes}, art, sess, score,
                           where)
            best_speedup = speedup
        else:
            shutil.rmtree(where, ignore_errors=True)

    for name, changes in config_alternatives(profile, config, model,
                                             sources_compared=sources_compared):
        if count >= budget or best_speedup >= min_speedup:
            break
        trial(name, changes, list(best.keep))
    if allow_layer_fallback:
        sizes = {n: sum(p.numel() for p in model.get_submodule(n).parameters())
                 for n, _ in quantizable_layers(model)}
        # A layer holding over a quarter of the weights is never kept in float for speed: the
        # int8 file would give up most of its size gain (cnn's fc kept float left it at 98%).
        total = sum(sizes.values()) or 1
        order = sorted((n for n in sizes if n not in best.keep and sizes[n] <= total / 4),
                       key=lambda n: (sizes[n], n))
        for layer in order:
            int8_left = [n for n in sizes if n not in best.keep and n != layer]
            if count >= budget or best_speedup >= min_speedup or not int8_left:
                break
            trial(f"{layer} in float", {}, [*best.keep, layer])
    return best
