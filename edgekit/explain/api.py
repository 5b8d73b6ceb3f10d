"""``edgekit.explain``: which layer breaks, inside each runtime's own artifact.

Reference inputs run through PyTorch (hooks on every leaf module) and through each target's
artifact (its intermediate tensors captured with the runtime's own means); the tensors are
mapped to module names through the export metadata, and each layer gets cosine, SQNR, max abs
and relative error against PyTorch. See :mod:`edgekit.explain.layers` for the rules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import Artifact, backend_for_file
from ..errors import DataError, NotSupportedError, ShapeError, UsageError
from ..measure.metrics import relative_error
from .layers import TargetResult
from .reference import transformed_reference
from .report import ExplainReport
from .target import _log, explain_target
from .torch_capture import LayerCapture, capture_torch, fx_name_modules

__all__ = ["culprit_layers", "explain", "model_from_bundle"]

#: The ``--data`` samples used at most (each one runs through every artifact).
MAX_DATA_SAMPLES = 16


# ---------------------------------------------------------------- inputs and the model
def _as_samples(inputs: Any) -> list[list[np.ndarray]]:
    """A tensor, a tuple of tensors (one sample), or a list of such samples."""
    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return [[arr(inputs)]]
    if isinstance(inputs, tuple):
        return [[arr(x) for x in inputs]]
    if isinstance(inputs, list) and inputs:
        return [[arr(x) for x in s] if isinstance(s, (tuple, list)) else [arr(s)]
                for s in inputs]
    raise UsageError(f"inputs must be a tensor, a tuple of tensors or a list of samples, not "
                     f"{type(inputs).__name__}", hint="e.g. explain(model, 'model.onnx', x)")


def _reference(bundle: Any) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """The bundle's reference pairs: inputs and PyTorch outputs per sample."""
    from ..bundle import REFERENCE, check_record
    from ..errors import BundleError

    manifest = bundle.manifest
    if manifest.reference is None or manifest.model is None:
        raise BundleError(f"bundle {bundle.root} has no reference data",
                          hint="pass inputs with --data FILE.npz (one key per model input)")
    check_record(bundle.root, manifest.reference)
    from .._npz import check_npz

    check_npz(bundle.root / REFERENCE, "reference data")
    with np.load(bundle.root / REFERENCE, allow_pickle=False) as npz:
        ref = {k: npz[k] for k in npz.files}
    ins, outs = manifest.model.input_names, manifest.model.output_names
    missing = [k for k in [f"input.{n}" for n in ins] + [f"output.{n}" for n in outs]
               if k not in ref]
    if missing:
        raise BundleError(f"bundle {bundle.root}: {REFERENCE} lacks {', '.join(missing)}")
    pairs = int(ref[f"input.{ins[0]}"].shape[0])
    return ([[ref[f"input.{n}"][k] for n in ins] for k in range(pairs)],
            [[ref[f"output.{n}"][k] for n in outs] for k in range(pairs)])


def _data_samples(path: str | Path, bundle: Any, limit: int) -> list[list[np.ndarray]]:
    """``--data``: a .npz with one key per model input (dim 0 = samples), checked against the
    bundle's input shapes."""
    from ..data.loaders import load_npz

    specs = bundle.manifest.model.inputs
    keys = [s["name"] for s in specs]
    # the last input is read as the loader's "target": explain needs no labels
    split = load_npz(path, input_keys=keys[:-1], target_key=keys[-1])
    arrays = [*split.inputs, split.targets]
    samples = []
    for spec, x in zip(specs, arrays):
        want = tuple(int(d) for d in spec["shape"])
        got = tuple(x.shape[1:])
        if got != want[1:]:
            raise ShapeError(
                f"{path}: key {spec['name']!r} holds samples of shape {list(got)}, but the "
                f"model input {spec['name']!r} takes {list(want)} (batch first)",
                hint=f"store an array of shape [N, {', '.join(map(str, want[1:]))}]")
    n = min(len(split), limit)
    for k in range(n):
        samples.append([x[k:k + 1].numpy().astype(np.dtype(spec["dtype"]))
                        for x, spec in zip(arrays, specs)])
    return samples


def model_from_bundle(bundle: Any) -> torch.nn.Module:
    """Rebuild the PyTorch model a bundle records (a zoo model exported untrained, with its
    seed, or a ``module:factory``); a trained model's weights are not in a bundle."""
    recipe = bundle.manifest.recipe or {}
    ref = recipe.get("model")
    hint = ("pass the model: edgekit.explain(model=..., bundle=...) or `edgekit explain BUNDLE "
            "--model module:factory`")
    if not isinstance(ref, str) or not ref:
        raise UsageError(f"bundle {bundle.root} does not record which model it was built "
                         "from", hint=hint)
    if recipe.get("weights") or (recipe.get("train") and recipe.get("epochs")):
        raise UsageError(f"bundle {bundle.root} was built from {ref!r} with trained weights, "
                         "which a bundle does not hold", hint=hint)
    if ":" in ref:
        from ..api import load_factory

        return load_factory(ref)
    from ..models import get_spec, list_models

    if ref not in list_models():
        raise UsageError(f"bundle {bundle.root} records model {ref!r}, which is neither a zoo "
                         "model nor a module:factory", hint=hint)
    torch.manual_seed(int(recipe.get("seed", 0)))
    return get_spec(ref).factory(**(recipe.get("model_kwargs") or {})).eval()


def _check_model(model: torch.nn.Module, outputs: list[list[np.ndarray]],
                 expected: list[list[np.ndarray]], where: str) -> None:
    worst = 0.0
    for got, want in zip(outputs, expected):
        for g, w in zip(got, want):
            worst = max(worst, relative_error(w, g) if g.size == w.size else float("inf"))
    if worst > 1e-3:
        raise UsageError(
            f"the PyTorch model does not reproduce {where}'s reference outputs (relative "
            f"error {worst:.3g}): it is not the model the bundle was built from",
            hint="pass the exact model (with its trained weights) the bundle was built from")


# ---------------------------------------------------------------- public
def explain(model: torch.nn.Module | None = None, artifact: str | Path | Artifact | None = None,
            inputs: Any = None, *, bundle: str | Path | None = None,
            targets: Sequence[str] | None = None, data: str | Path | None = None,
            samples: int | None = None, threads: int = 1, min_sqnr_db: float = 20.0,
            jump_db: float = 6.0, progress: bool = True,
            options: dict[str, Any] | None = None,
            measure_suggestion: bool = False) -> ExplainReport:
    """Find the layer where each artifact departs from PyTorch.

    Two forms::

        report = edgekit.explain(bundle="build/cnn")                 # every target
        report = edgekit.explain(model, "model_int8.onnx", x)        # one artifact
        print(report.table()); report.write(json_path="explain.json", plot="sqnr.png")
        report.culprit_layers("x86-onnxruntime-int8")                # ranked module names

    With a bundle, the inputs are its reference pairs (or ``data``: a .npz with one key per
    model input) and the model is ``model`` or the one the bundle records (see
    :func:`model_from_bundle`); the model must reproduce the bundle's reference outputs.
    ``samples`` caps the number of samples (default: every reference pair, 16 of ``data``).
    ``options``: the runtime's load options for a bare artifact (a bundle's targets use the
    options they record). ``measure_suggestion``: rebuild each int8 target with its first
    culprit (and the layer reading it) in float and report the end-to-end SQNR before and
    after (:mod:`edgekit.explain.measure`).
    """
    limit = samples
    if (bundle is None) == (artifact is None):
        raise UsageError("explain needs either bundle=... or an artifact (with model and "
                         "inputs)", hint="explain(bundle='build/cnn') or "
                         "explain(model, 'model.onnx', x)")
    # (target, artifact, load options, the manifest's quantization entry of an int8 build)
    jobs: list[tuple[str, Artifact, dict[str, Any], dict[str, Any] | None]] = []
    expected: list[list[np.ndarray]] | None = None
    io_names: tuple[list[str], list[str]] | None = None
    if bundle is not None:
        from ..bundle import load_bundle

        b = load_bundle(bundle)
        chosen = list(targets) if targets else b.targets
        entries = {t: b.target(t) for t in chosen}  # UnknownNameError lists the targets
        if data is not None:
            feeds, source = _data_samples(data, b, limit or MAX_DATA_SAMPLES), str(data)
        else:
            feeds, expected = _reference(b)
            feeds, expected = feeds[:limit], expected[:limit]
            source = f"{b.root}/reference.npz"
        if model is None:
            model = model_from_bundle(b)
            _log(progress, f"rebuilt the model from the bundle's recipe "
                 f"({(b.manifest.recipe or {}).get('model')})")
        for t, entry in entries.items():
            for rec in entry.files:
                from ..bundle import check_record

                check_record(b.root, rec)
            jobs.append((t, b.artifact(t), dict(entry.options or {}), entry.quantization))
        title = b.name
        if b.manifest.model is not None:
            io_names = (list(b.manifest.model.input_names), list(b.manifest.model.output_names))
    else:
        if model is None or inputs is None:
            raise UsageError("explain(model, artifact, inputs) needs the PyTorch model and "
                             "the inputs too")
        if isinstance(artifact, Artifact):
            art = artifact
        else:
            path = Path(str(artifact))
            if not path.is_file():
                raise UsageError(f"artifact {path} does not exist", hint="check the path")
            art = backend_for_file(path).inspect(path)
        jobs.append((f"{art.backend}-{art.precision}", art, dict(options or {}), None))
        feeds, source = _as_samples(inputs)[:limit], "the given inputs"
        title = type(model).__name__
        if feeds and len(feeds[0]) != len(art.inputs):
            raise ShapeError(f"{art.path} takes {len(art.inputs)} inputs, got "
                             f"{len(feeds[0])} per sample")
    if not feeds:
        raise DataError("no input samples to explain with")
    _log(progress, f"running {len(feeds)} samples through PyTorch with hooks")
    layers, torch_outputs = capture_torch(model, feeds)
    if not layers:
        raise NotSupportedError(f"{title}: no leaf module returned a float tensor: nothing to "
                                "compare layer by layer")
    if expected is not None:
        _check_model(model, torch_outputs, expected, f"bundle {bundle}")
    fx = fx_name_modules(model, feeds[0])
    report = ExplainReport(title, source, len(feeds),
                           [{"module": c.name, "kind": c.kind, "shape": list(c.shape)}
                            for c in layers],
                           thresholds={"min_sqnr_db": min_sqnr_db, "jump_db": jump_db})
    # one PyTorch reference per distinct set of recorded transforms (like for like)
    refs: dict[str, tuple[list[LayerCapture], list[list[np.ndarray]], dict[str, str],
                          dict[str, Any] | None]] = {"": (layers, torch_outputs, fx, None)}
    for name, art, options, quant in jobs:
        transforms = (quant or {}).get("transforms")
        keep = list(((quant or {}).get("config") or {}).get("keep_float") or [])
        key = json.dumps([transforms, keep], sort_keys=True, default=str) if transforms else ""
        if key not in refs:
            ref, note = transformed_reference(model, transforms, feeds, keep)
            if note is None:
                refs[key] = refs[""]
            else:
                _log(progress, f"{name}: re-applying its float-domain transforms "
                     f"({', '.join(note['reapplied']) or 'none'}) to the PyTorch reference")
                ref_layers, ref_outputs = capture_torch(ref, feeds)
                refs[key] = (ref_layers, ref_outputs, fx_name_modules(ref, feeds[0]), note)
        ref_layers, ref_outputs, ref_fx, note = refs[key]
        result = explain_target(
            name, art, options, ref_layers, ref_outputs, feeds, ref_fx, threads=threads,
            min_sqnr_db=min_sqnr_db, jump_db=jump_db, progress=progress)
        result.reference = note
        if measure_suggestion and result.status == "ok" and art.precision == "int8" \
                and result.ranked:
            result.measured = _measure(model, art, result, feeds, torch_outputs, quant,
                                       options, io_names or ([s.name for s in art.inputs],
                                                             [s.name for s in art.outputs]),
                                       [c.name for c in layers], threads, progress)
        report.targets.append(result)
    return report


def _measure(model: torch.nn.Module, art: Artifact, result: TargetResult,
             feeds: list[list[np.ndarray]], torch_outputs: list[list[np.ndarray]],
             quant: dict[str, Any] | None, options: dict[str, Any],
             io_names: tuple[list[str], list[str]], order: list[str], threads: int,
             progress: bool) -> dict[str, Any]:
    from .measure import measure_suggestion

    culprit = result.jump.module if result.jump is not None else result.ranked[0][0]
    _log(progress, f"{result.target}: rebuilding with {culprit} in float to measure the gain")
    try:
        return measure_suggestion(
            model, art, culprit, feeds, torch_outputs, quantization=quant, options=options,
            input_names=io_names[0], output_names=io_names[1], order=order, threads=threads,
            shipped_sqnr_db=(result.output or {}).get("sqnr_db"))
    except Exception as exc:  # noqa: BLE001 - the report stands without the measurement
        return {"culprit": culprit, "error": f"{type(exc).__name__}: "
                f"{(str(exc).splitlines() or [''])[0][:300]}"}


def culprit_layers(model: torch.nn.Module, artifact: str | Path | Artifact, inputs: Any, *,
                   top: int | None = None, threads: int = 1) -> list[str]:
    """PyTorch module names ranked by how much error the runtime's own tensors gain there
    (the first jump first): the layers an int8 gate should keep in float first.

    Example::

        keep = culprit_layers(model, int8_artifact, calibration_samples[:4], top=2)
    """
    report = explain(model, artifact, inputs, threads=threads, progress=False)
    names = report.targets[0].culprit_names()
    return names[:top] if top is not None else names
