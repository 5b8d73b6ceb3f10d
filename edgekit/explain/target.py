"""One artifact against PyTorch: capture its intermediate tensors with the runtime's own means,
map them to module names and number each layer (:func:`explain_target`); the whole of it for
one artifact without a bundle (:func:`explain_artifact`). Used by :func:`edgekit.explain` and
by the int8 gate (:mod:`edgekit.explain.culprits`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..backends import Artifact, get_backend
from ..errors import EdgekitError, NotSupportedError
from ..measure.metrics import compare_outputs, relative_error
from .layers import TargetResult, culprits, first_jump, layer_numbers, suggest
from .mapping import LayerMatch, map_layers
from .tensors import RuntimeTensor
from .torch_capture import LayerCapture, capture_torch, fx_name_modules

__all__ = ["CAPTURES", "UNSUPPORTED", "explain_artifact", "explain_target"]


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[edgekit] explain: {message}", file=sys.stderr, flush=True)


#: Runtimes whose intermediate tensors edgekit cannot read, and why.
UNSUPPORTED = {
    "executorch": "the ExecuTorch runtime exposes only a method's outputs, not the "
                  "intermediate tensors of a lowered (XNNPACK-delegated) program; explain the "
                  "same model on an ONNX Runtime or LiteRT target instead",
}

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

Local = Callable[[Artifact, list[list[np.ndarray]], list[LayerCapture], list[LayerMatch]],
                 dict[str, float]]


def _onnx_local(artifact: Artifact, samples: list[list[np.ndarray]],
                layers: list[LayerCapture], matches: list[LayerMatch]) -> dict[str, float]:
    from .local_onnx import local_sqnr_onnx

    by_name = {layer.name: layer for layer in layers}
    own = [m for m in matches if m.tensor is not None and m.transform is None
           and m.compare_to in (None, m.module) and not m.how.startswith(("fused", "same"))
           and m.adjust is None]
    return local_sqnr_onnx(
        artifact.path, samples, [s.name for s in artifact.inputs],
        {m.module: m.tensor.name for m in own if m.tensor is not None},
        {m.module: by_name[m.module].outputs for m in own},
        {m.module: by_name[m.module].stacked() for m in own})


#: Backend name -> the function that measures each layer's local error (fed PyTorch's inputs).
LOCALS: dict[str, Local] = {"onnxruntime": _onnx_local}

# ---------------------------------------------------------------- one target
def explain_target(name: str, artifact: Artifact, options: dict[str, Any],
                    layers: list[LayerCapture], torch_outputs: list[list[np.ndarray]],
                    samples: list[list[np.ndarray]], fx: dict[str, str], *, threads: int,
                    min_sqnr_db: float, jump_db: float, progress: bool,
                    local: bool = True) -> TargetResult:
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
    if local and backend in LOCALS:
        _log(progress, f"{name}: local error (each layer fed with PyTorch's inputs)")
        found = LOCALS[backend](artifact, samples, layers, matches)
        for row in result.rows:
            row.local_sqnr_db = found.get(row.module)
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


def explain_artifact(model: torch.nn.Module, artifact: Artifact,
                     samples: list[list[np.ndarray]], *, name: str | None = None,
                     options: dict[str, Any] | None = None, threads: int = 1,
                     min_sqnr_db: float = 20.0, jump_db: float = 6.0, progress: bool = False,
                     local: bool = False) -> tuple[list[LayerCapture], TargetResult]:
    """PyTorch's leaf-module outputs on ``samples`` and ``artifact``'s layers against them.

    Example::

        layers, result = explain_artifact(model, int8_artifact, [[x0], [x1]])
        result.culprit_names()  # ['conv1', ...]
    """
    layers, torch_outputs = capture_torch(model, samples)
    if not layers:
        raise NotSupportedError(f"{type(model).__name__}: no leaf module returned a float "
                                "tensor: nothing to compare layer by layer")
    fx = fx_name_modules(model, samples[0])
    result = explain_target(name or f"{artifact.backend}-{artifact.precision}", artifact,
                            dict(options or {}), layers, torch_outputs, samples, fx,
                            threads=threads, min_sqnr_db=min_sqnr_db, jump_db=jump_db,
                            progress=progress, local=local)
    return layers, result
