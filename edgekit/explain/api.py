"""``edgekit.explain``: which layer breaks, inside each runtime's own artifact.

Reference inputs run through PyTorch (hooks on every leaf module) and through each target's
artifact (its intermediate tensors captured with the runtime's own means); the tensors are
mapped to module names through the export metadata, and each layer gets cosine, SQNR, max abs
and relative error against PyTorch. See :mod:`edgekit.explain.layers` for the rules.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import Artifact, backend_for_file, get_backend
from ..errors import DataError, EdgekitError, NotSupportedError, ShapeError, UsageError
from ..measure.metrics import compare_outputs, relative_error
from .layers import TargetResult, culprits, first_jump, layer_numbers, suggest
from .mapping import map_layers
from .report import ExplainReport
from .tensors import RuntimeTensor
from .torch_capture import LayerCapture, capture_torch, fx_name_modules

__all__ = ["culprit_layers", "explain", "model_from_bundle"]

#: Runtimes whose intermediate tensors edgekit cannot read, and why.
UNSUPPORTED = {
    "executorch": "the ExecuTorch runtime exposes only a method's outputs, not the "
                  "intermediate tensors of a lowered (XNNPACK-delegated) program; explain the "
                  "same model on an ONNX Runtime or LiteRT target instead",
}

#: The ``--data`` samples used at most (each one runs through every artifact).
MAX_DATA_SAMPLES = 16


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[edgekit] explain: {message}", file=sys.stderr, flush=True)


Capture = Callable[[Artifact, list[list[np.ndarray]], dict[str, str], dict[str, int], int,
                    dict[str, Any]], list[RuntimeTensor]]


def _onnx(artifact: Artifact, samples: list[list[np.ndarray]], fx: dict[str, str],
          modules: dict[str, int], threads: int, options: dict[str, Any]) -> list[RuntimeTensor]:
    from .capture_onnx import capture_onnx

    return capture_onnx(artifact.path, samples, [s.name for s in artifact.inputs], fx,
                        threads=threads)


def _openvino(artifact: Artifact, samples: list[list[np.ndarray]], fx: dict[str, str],
              modules: dict[str, int], threads: int, options: dict[str, Any]
              ) -> list[RuntimeTensor]:
    from .capture_openvino import capture_openvino

    return capture_openvino(artifact.path, samples, [s.name for s in artifact.inputs], fx,
                            modules, threads=threads,
                            precision=str(options.get("inference_precision", "f32")))


def _tflite(artifact: Artifact, samples: list[list[np.ndarray]], fx: dict[str, str],
            modules: dict[str, int], threads: int, options: dict[str, Any]) -> list[RuntimeTensor]:
    from ..backends.tflite import _ordered
    from .capture_tflite import capture_tflite

    in_map = artifact.info.get("input_map") or {}
    mapped = [in_map.get(s.name) for s in artifact.inputs]
    names = ([str(n) for n in mapped] if None not in mapped
             else _ordered([f"args_{i}" for i in range(len(artifact.inputs))]))
    return capture_tflite(artifact.path, samples, names, modules,
                          threads=threads)


#: Backend name -> the function that captures its artifact's intermediate tensors.
CAPTURES: dict[str, Capture] = {"onnxruntime": _onnx, "openvino": _openvino, "tflite": _tflite}


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


# ---------------------------------------------------------------- one target
def _explain_target(name: str, artifact: Artifact, options: dict[str, Any],
                    layers: list[LayerCapture], torch_outputs: list[list[np.ndarray]],
                    samples: list[list[np.ndarray]], fx: dict[str, str], *, threads: int,
                    min_sqnr_db: float, jump_db: float, progress: bool) -> TargetResult:
    backend = artifact.backend
    result = TargetResult(name, backend, artifact.precision)
    if backend in UNSUPPORTED or backend not in CAPTURES:
        result.status, result.reason = "unsupported", UNSUPPORTED.get(
            backend, f"no intermediate-tensor capture for the {backend} runtime")
        return result
    reason = get_backend(backend).available()
    if reason is not None:
        result.status, result.reason = "skipped", reason
        return result
    _log(progress, f"{name}: capturing {backend}'s intermediate tensors")
    modules = {layer.name: i for i, layer in enumerate(layers)}
    try:
        tensors = CAPTURES[backend](artifact, samples, fx, modules, threads, options)
    except EdgekitError:
        raise
    except Exception as exc:
        from ..errors import ModelRunError

        raise ModelRunError(f"{name}: capturing the intermediate tensors of {artifact.path} "
                            f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                            backend=backend) from exc
    matches = map_layers(layers, tensors, torch_outputs)
    by_name = {layer.name: layer for layer in layers}
    int8 = {t.module for t in tensors if t.module and t.precision.startswith(("int", "uint"))}
    for depth, (layer, match) in enumerate(zip(layers, matches)):
        reference = by_name[match.compare_to or layer.name]
        precision = None
        if match.tensor is not None:
            precision = "int8" if layer.name in int8 else match.tensor.precision
        result.rows.append(layer_numbers(layer, depth, match, reference, precision))
    claimed = {id(m.tensor) for m in matches if m.tensor is not None}
    result.unmatched_tensors = sum(1 for t in tensors if id(t) not in claimed)
    result.jump = first_jump(result.rows, min_sqnr_db=min_sqnr_db, jump_db=jump_db)
    result.ranked = culprits(result.rows, result.jump)
    top = result.jump or next((r for r in result.rows if result.ranked
                               and r.module == result.ranked[0][0]), None)
    result.suggestion = suggest(top) if top is not None else None
    session = get_backend(backend).load(artifact, threads=threads, options=options)
    outs = [[np.asarray(o) for o in session.run([np.asarray(x) for x in s])] for s in samples]
    n_out = min(len(outs[0]), len(torch_outputs[0]))
    refs = [np.concatenate([o[i] for o in torch_outputs]) for i in range(n_out)]
    got = [np.concatenate([o[i] for o in outs]).astype(np.float64) for i in range(n_out)]
    fid = compare_outputs(refs, got, [s.name for s in artifact.outputs][:n_out],
                          classifier=False)
    result.output = {"sqnr_db": fid["sqnr_db"], "cosine_min": fid["cosine_min"],
                     "rel_error": max(relative_error(r, g) for r, g in zip(refs, got))}
    cov = result.coverage
    _log(progress, f"{name}: {cov['mapped']}/{cov['total']} layers mapped; first jump: "
         f"{result.jump.module if result.jump else 'none'}")
    return result


# ---------------------------------------------------------------- public
def explain(model: torch.nn.Module | None = None, artifact: str | Path | Artifact | None = None,
            inputs: Any = None, *, bundle: str | Path | None = None,
            targets: Sequence[str] | None = None, data: str | Path | None = None,
            samples: int | None = None, threads: int = 1, min_sqnr_db: float = 20.0,
            jump_db: float = 6.0, progress: bool = True) -> ExplainReport:
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
    """
    limit = samples
    if (bundle is None) == (artifact is None):
        raise UsageError("explain needs either bundle=... or an artifact (with model and "
                         "inputs)", hint="explain(bundle='build/cnn') or "
                         "explain(model, 'model.onnx', x)")
    jobs: list[tuple[str, Artifact, dict[str, Any]]] = []
    expected: list[list[np.ndarray]] | None = None
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
            jobs.append((t, b.artifact(t), dict(entry.options or {})))
        title = b.name
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
        jobs.append((f"{art.backend}-{art.precision}", art, {}))
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
    for name, art, options in jobs:
        report.targets.append(_explain_target(
            name, art, options, layers, torch_outputs, feeds, fx, threads=threads,
            min_sqnr_db=min_sqnr_db, jump_db=jump_db, progress=progress))
    return report


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
