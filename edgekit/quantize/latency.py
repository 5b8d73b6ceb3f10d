"""Is the int8 artifact faster than fp32 on its runtime? If not, try the cheap alternatives.

Called by :class:`edgekit.quantize.build.Int8Build` after the accuracy gate (see
``QuantConfig.latency_check``). The target's fp32 artifact (exported once per target) is loaded
at the target's thread count and timed interleaved with the int8 one
(:mod:`edgekit.measure.timing`; the median of the rounds), so machine noise hits both alike; a
variant replaces the current one only when two measurements agree it is faster (on a busy
machine one measurement can flip, and a rebuild would then choose differently).
Below ``min_speedup``, variants are rebuilt, gated and timed:

* the runtime's alternatives (:meth:`edgekit.backends.Backend.int8_alternatives`; ONNX Runtime:
  the other activation type; OpenVINO: the other source, the other NNCF preset), except those
  that only change the ranges (the same ops run);
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
from ..measure.timing import Interleaved, collect_interleaved
from ..profiles import TargetProfile, list_profiles
from .config import QuantConfig
from .sensitivity import quantizable_layers

__all__ = ["NOISE", "Int8SlowerWarning", "Variant", "faster", "latency_choice", "time_sessions"]

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
    #: the verification report of the gate (None without a check) and why the gate failed
    #: (None when it passed)
    report: Any = None
    failed: str | None = None
    #: the float-domain transforms record of the model this variant was built from (layers
    #: kept in float carry no bias correction nor absorbed bias); None: the build's own
    transforms: dict[str, Any] | None = None


#: build(config, keep_float) -> the variant, built in its own folder, checked and gated
Builder = Callable[[QuantConfig, list[str]], Variant]


def host_arch() -> str:
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def time_sessions(sessions: dict[str, Session], feeds: list[np.ndarray],
                  config: QuantConfig) -> Interleaved:
    """The sessions timed interleaved (``.median_ms(name)`` each)."""
    return collect_interleaved(sessions, {k: feeds for k in sessions}, warmup=_WARMUP,
                               runs=int(config.latency_runs),
                               duration_s=float(config.latency_max_seconds))


def faster(sessions: dict[str, Session], cand: str, best: str, feeds: list[np.ndarray],
           config: QuantConfig, first: Interleaved | None = None
           ) -> tuple[bool, list[float]]:
    """Is ``cand`` faster than ``best`` beyond noise? Its median over ``best``'s must be
    under :data:`NOISE` in two independent interleaved measurements (``first``, when given,
    is the first): one lucky run does not move a choice, which keeps a rebuild's choice the
    same. Returns the verdict and the ratios measured."""

    def ratio(t: Interleaved) -> float:
        return t.median_ms(cand) / t.median_ms(best)

    ratios = [ratio(first if first is not None else time_sessions(sessions, feeds, config))]
    if ratios[0] < NOISE:
        ratios.append(ratio(time_sessions({best: sessions[best], cand: sessions[cand]},
                                          feeds, config)))
    return len(ratios) == 2 and ratios[1] < NOISE, [round(r, 4) for r in ratios]


def _fp32_name(profile: TargetProfile) -> str | None:
    name = profile.name.replace("int8", "fp32")
    return name if name != profile.name and name in list_profiles() else None


def latency_choice(
    *,
    backend: Any,
    profile: TargetProfile,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    config: QuantConfig,
    base: Variant,
    build: Builder,
    fp32: Callable[[], Artifact],
    allow_layer_fallback: bool = True,
    sources_compared: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[Variant, dict[str, Any]]:
    """Return the variant to ship and the manifest's ``latency_check`` entry. ``fp32()`` gives
    the target's fp32 artifact (exported once, by the caller); every session is loaded at the
    target's thread count and timed interleaved (median of the rounds)."""
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
    try:
        fp32_sess = backend.load(fp32(), threads=profile.threads, options=dict(profile.options))
        fp32_sess.run(feeds)
    except (EdgekitError, RuntimeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return base, {"skipped": f"the fp32 reference artifact failed: "
                      f"{type(exc).__name__}: {msg}"}
    assert base.sess is not None
    t = time_sessions({"fp32": fp32_sess, "int8": base.sess}, feeds, config)
    fp32_ms, int8_ms = t.median_ms("fp32"), t.median_ms("int8")
    speedup = fp32_ms / int8_ms
    tried: list[dict[str, Any]] = [{
        "name": base.name, "changes": {}, "keep_float": list(base.keep), "passed_gate": True,
        "int8_ms": round(int8_ms, 5), "speedup": round(speedup, 4)}]
    best = base
    min_speedup = float(config.min_speedup)
    if speedup < min_speedup:
        log(f"{profile.name}: int8 is {speedup:.2f}x fp32 ({int8_ms:.4f} ms vs "
            f"{fp32_ms:.4f} ms); trying faster variants")
        best = _search(
            backend=backend, profile=profile, model=model, config=config, base=base,
            build=build, fp32=fp32_sess, feeds=feeds, tried=tried,
            allow_layer_fallback=allow_layer_fallback, log=log, min_speedup=min_speedup,
            sources_compared=sources_compared)
        if best is not base:  # re-measure the choice on its own, against fp32
            assert best.sess is not None
            t = time_sessions({"fp32": fp32_sess, "int8": best.sess}, feeds, config)
            fp32_ms, int8_ms = t.median_ms("fp32"), t.median_ms("int8")
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
        warnings.warn(f"target {profile.name}: {advice}", Int8SlowerWarning, stacklevel=5)
    elif best is not base:
        entry["advice"] = (f"chose {best.name!r}: {speedup:.2f}x fp32 (the requested settings "
                           f"gave {tried[0]['speedup']:.2f}x)")
    log(f"{profile.name}: latency check: int8 {int8_ms:.4f} ms vs fp32 {fp32_ms:.4f} ms = "
        f"{speedup:.2f}x ({best.name}; {len(tried)} variant(s) measured in "
        f"{entry['check_seconds']:.1f} s)")
    return best, entry


def _search(*, backend: Any, profile: TargetProfile, model: torch.nn.Module,
            config: QuantConfig, base: Variant, build: Builder, fp32: Session,
            feeds: list[np.ndarray], tried: list[dict[str, Any]], allow_layer_fallback: bool,
            log: Callable[[str], None], min_speedup: float,
            sources_compared: bool = False) -> Variant:
    """Build, gate and time variants (at most ``config.latency_variants``); return the best.
    A variant replaces the best only when :func:`faster` says so (at least ``1 - NOISE``
    faster in two measurements)."""
    best = base
    best_speedup = tried[0]["speedup"]
    budget = int(config.latency_variants)
    count = 0

    def trial(name: str, changes: dict[str, Any], keep: list[str]) -> None:
        nonlocal best, best_speedup, count
        count += 1
        cfg = dataclasses.replace(best.config, **changes)
        row: dict[str, Any] = {"name": name, "changes": {**best.changes, **changes},
                               "keep_float": list(keep)}
        tried.append(row)
        try:
            cand = build(cfg, keep)
        except EdgekitError as exc:
            row.update(passed_gate=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            return
        row["passed_gate"] = cand.failed is None
        if cand.failed is not None:
            row["gate"] = cand.failed
            _remove(cand)
            return
        assert best.sess is not None and cand.sess is not None
        sessions = {"fp32": fp32, "best": best.sess, "cand": cand.sess}
        t = time_sessions(sessions, feeds, config)
        speedup = t.median_ms("fp32") / t.median_ms("cand")
        won, ratios = faster(sessions, "cand", "best", feeds, config, first=t)
        row.update(int8_ms=round(t.median_ms("cand"), 5), speedup=round(speedup, 4),
                   vs_best=ratios)
        if won:
            log(f"{profile.name}: {name} is faster ({speedup:.2f}x fp32); keeping it")
            if best is not base:
                _remove(best)
            best = dataclasses.replace(cand, name=name, changes={**best.changes, **changes})
            best_speedup = speedup
        else:
            _remove(cand)

    for name, changes in backend.int8_alternatives(config, model,
                                                   sources_compared=sources_compared):
        if set(changes) == {"range_method"}:
            continue  # other ranges, the same ops: no faster
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


def _remove(v: Variant) -> None:
    """Delete a variant's folder (it is not shipped)."""
    if v.where is not None:
        shutil.rmtree(v.where, ignore_errors=True)
