"""The build pipeline: example inputs + target profiles -> exported, verified artifacts -> bundle.

Every stage appends one record to the manifest's ``history``.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from ._npz import save_npz
from ._quiet import quiet
from .backends import Artifact, Backend, TensorSpec, get_backend
from .bundle import (
    MANIFEST,
    REFERENCE,
    Bundle,
    check_out_dir,
    load_bundle,
    record_file,
    staged_bundle,
    write_json,
)
from .data.task import Task
from .errors import DataError, EdgekitError, ShapeError, UsageError
from .fsio import check_name, check_tensor_name
from .manifest import Manifest, ModelRecord, StageRecord, TargetEntry, add_stage, stage_records
from .measure.scoring import split_batches
from .model_outputs import flat_view, is_flat, not_tensors, output_leaves
from .profiles import TargetProfile, resolve_targets
from .verify import verify

__all__ = ["compress", "check_example_inputs"]

#: Reference input/output pairs stored in the bundle (the example inputs come first).
REFERENCE_PAIRS = 4


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[edgekit] {message}", file=sys.stderr, flush=True)


def _describe(tensors: Sequence[Any]) -> str:
    return ", ".join(
        f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        if isinstance(t, torch.Tensor)
        else type(t).__name__
        for t in tensors
    )


def check_example_inputs(
    model: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Run the model once on the example inputs; return (inputs, outputs) as tuples (the
    outputs' tensors in :func:`edgekit.model_outputs.output_leaves` order)."""
    inputs, outputs, _ = _run_example(model, example_inputs)
    return inputs, outputs


def _run_example(
    model: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], Any]:
    """:func:`check_example_inputs`, with the forward's output as it returned it."""
    inputs = ((example_inputs,) if isinstance(example_inputs, torch.Tensor)
              else tuple(example_inputs))
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ShapeError(
            f"example inputs must be a tensor or a tuple of tensors, got ({_describe(inputs)})"
        )
    model.eval()
    try:
        with torch.no_grad():
            out = model(*inputs)
    except Exception as exc:  # the user's model rejected the inputs: say which and why
        raise ShapeError(
            f"example inputs ({_describe(inputs)}) do not fit {type(model).__name__}.forward: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="pass example inputs with the shapes and dtypes the model's forward expects",
        ) from exc
    leaves = output_leaves(out)
    outputs = tuple(t for _, t in leaves)
    bad = not_tensors(leaves)
    if not outputs or bad:
        raise ShapeError(
            f"{type(model).__name__}.forward must return tensors (a tensor, or a tuple, list "
            f"or dict of them), got ({_describe(outputs) or 'no tensor'})"
            + (f"; not a tensor: {', '.join(bad)}" if bad else ""),
            hint="return the tensors to deploy, e.g. wrap the model in a module whose forward "
            "returns model(x).logits")
    return inputs, outputs, out


def _structured(model: torch.nn.Module, out: Any, output_names: Sequence[str] | None
                ) -> tuple[torch.nn.Module, Sequence[str] | None]:
    """A model whose forward returns a dict, a ``ModelOutput`` or nested tuples: its flat view
    (:func:`edgekit.model_outputs.flat_view`) and, unless names were given, the leaves'
    names (``boxes``, ``scores``) where each is a usable, unique tensor name. A tensor or a
    tuple of tensors: the model and the names as given. ``out``: the forward's output on the
    example inputs."""
    if is_flat(out):
        return model, output_names
    if output_names is None:
        names = [n for n, _ in output_leaves(out)]
        try:
            if len(set(names)) == len(names):
                output_names = [check_tensor_name(n, "output name") for n in names]
        except UsageError:
            pass  # a key that is no tensor name: output_0, output_1...
    try:
        view = flat_view(model)
    except Exception as exc:  # a class that cannot be subclassed (a scripted module...)
        raise ShapeError(
            f"{type(model).__name__}.forward returns {type(out).__name__}, and edgekit could "
            f"not give it a forward returning its tensors: {type(exc).__name__}: {exc}",
            hint="wrap the model in a module whose forward returns a tensor or a tuple of "
            "tensors") from exc
    return view, output_names


def _names(given: Sequence[str] | None, count: int, prefix: str) -> list[str]:
    if given is None:
        return [f"{prefix}_{i}" for i in range(count)] if count > 1 else [prefix]
    if isinstance(given, str):
        given = [given]
    names = [check_tensor_name(n, f"{prefix} name") for n in given]
    if len(names) != count:
        raise UsageError(f"{len(names)} {prefix} names given ({', '.join(names)}) "
                         f"for {count} {prefix}s")
    if len(set(names)) != count:
        raise UsageError(f"{prefix} names must be unique: {', '.join(names)}")
    return names


def _check_task_fits(task: Task, inputs: tuple[torch.Tensor, ...], names: list[str]) -> None:
    if len(task.test.inputs) != len(inputs):
        raise ShapeError(
            f"task {task.name} has {len(task.test.inputs)} inputs, the model takes {len(inputs)}"
        )
    for name, data, example in zip(names, task.test.inputs, inputs):
        if tuple(data.shape[1:]) != tuple(example.shape[1:]):
            raise ShapeError(
                f"input {name}: task {task.name} gives samples of shape {tuple(data.shape[1:])}, "
                f"the example input has {tuple(example.shape[1:])}"
            )


def compress(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    targets: Sequence[str | Path | TargetProfile],
    out_dir: str | Path,
    name: str | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    task: Task | None = None,
    recipe: dict[str, Any] | None = None,
    history: Sequence[StageRecord | Mapping[str, Any]] = (),
    verify_samples: int = 200,
    progress: bool = True,
    cache: bool | str | Path = False,
    calibration: Any = None,
    quantization: Any = None,
    overwrite: bool = False,
    verbose: bool = False,
    verify_data: Any = None,
) -> Bundle:
    """Export ``model`` for every target, verify each artifact, and write one bundle.

    ``model``'s forward may return a tensor, a tuple or list of tensors, or a dict of them
    (a ``ModelOutput``, nested, ``None`` entries skipped): the artifacts' outputs are its
    tensors in order, named after their keys unless ``output_names`` are given
    (:mod:`edgekit.model_outputs`).

    The bundle folder ``out_dir`` is replaced only when every target exported and verified;
    otherwise the previous bundle (if any) stays as it was. An existing ``out_dir`` that is
    not an edgekit bundle (or holds files its manifest does not list) is refused before any
    work unless ``overwrite=True``; the root, home and current folders never are replaced.

    Third-party output (converter progress, runtime logs, their warnings) is captured and shown
    only when a target fails (its last lines, as a note on the error) or with ``verbose=True``
    (or ``EDGEKIT_VERBOSE=1``); edgekit's own ``[edgekit]`` lines always reach stderr.

    Example::

        bundle = edgekit.compress(model, torch.zeros(1, 1, 8, 8),
                                  targets=["x86-onnxruntime-fp32"], out_dir="build/cnn")
        session = bundle.load("x86-onnxruntime-fp32")

    ``cache``: ``True`` (the default cache folder, ``$EDGEKIT_CACHE_DIR`` or
    ``~/.cache/edgekit``) or a folder. The key covers the model's class and weights, the
    example inputs, names, task, recipe, history, target profiles and tool versions (see
    :mod:`edgekit.cache`); on a hit the cached bundle is copied into ``out_dir`` atomically and
    nothing is exported. Timings never enter the manifest, so equal inputs give equal bytes.

    int8 targets (``precision = "int8"``) are post-training quantized with ``calibration``
    data (a DataLoader, an iterable of arrays, a ``.npz`` path, a Task or Split; default: the
    task's train split), configured by ``quantization`` (a :class:`edgekit.quantize.QuantConfig`
    or a dict; it overrides the target profile's ``[quantization]`` table key by key, and a
    QuantConfig replaces it whole). With a task, an int8 artifact must stay within the profile's
    ``[accuracy] max_drop`` on the task's test split: the most sensitive layers are kept in
    float until it does, else :class:`edgekit.errors.QuantizationError` (per-layer table,
    suggested float layers) and no bundle is written. Without a task, an int8 artifact must
    pass the profile's ``[gate]`` (centred cosine, SQNR, top-1 agreement against fp32; see
    :mod:`edgekit.quantize.gate`) on held-out data: ``verify_data`` (same forms as
    ``calibration``) when given, else calibration data beyond the calibration samples, else a
    part of the calibration batches held out of calibration.
    """
    check_out_dir(out_dir, overwrite=overwrite)  # before any work
    profiles = resolve_targets(targets)
    if name is not None:
        try:
            check_name(name, "bundle name")
        except UsageError as exc:
            raise UsageError(exc.message, hint="use a plain bundle name such as 'kws'") from None
    inputs, ref_outputs, raw = _run_example(model, example_inputs)
    model, output_names = _structured(model, raw, output_names)
    in_names = _names(input_names, len(inputs), "input")
    out_names = _names(output_names, len(ref_outputs), "output")
    batch = int(inputs[0].shape[0]) if inputs[0].dim() else 1
    if task is not None:
        _check_task_fits(task, inputs, in_names)
    classifier = [out_names[0]] if task is not None and task.kind == "classification" else []
    name = name or Path(out_dir).name
    try:
        records = [StageRecord(h.kind, _without_timings(h.data))
                   for h in stage_records(history, "history=")]
    except EdgekitError as exc:
        raise UsageError(exc.message, hint="pass the records stages return, e.g. "
                         "PruneResult.to_json()") from None
    history_json = [h.to_json() for h in records]

    qconfigs = _quant_configs(profiles, quantization)
    calib: dict[int, list[list[np.ndarray]]] = {}  # calibration feeds per sample count
    spare: dict[int, list[list[np.ndarray]]] = {}  # feeds beyond that count (to hold out)
    verify_feeds: list[list[np.ndarray]] | None = None
    if qconfigs:
        from .quantize import calibration_batches

        source = calibration if calibration is not None else task
        if source is None:
            raise UsageError(
                "int8 targets need calibration data: pass calibration= (a DataLoader, arrays, "
                "a .npz file) or task=",
                hint="a few hundred representative samples, scaled like the training data")
        for limit in sorted({c.samples for c in qconfigs.values()}):
            reference = None
            if task is not None and calibration is not None:
                reference = [t[:limit].numpy() for t in task.train.inputs]
            feeds = calibration_batches(source, example_inputs=inputs,
                                        input_names=in_names, limit=2 * limit,
                                        reference=reference)
            calls = max(1, limit // batch)
            calib[limit], spare[limit] = feeds[:calls], feeds[calls:]
        if verify_data is not None:
            try:
                verify_feeds = calibration_batches(verify_data, example_inputs=inputs,
                                                   input_names=in_names, limit=10_000)
            except (DataError, ShapeError) as exc:
                raise type(exc)(f"verify_data: {exc.message}", hint=exc.hint) from None
    elif calibration is not None or quantization is not None or verify_data is not None:
        raise UsageError("calibration/quantization/verify_data given, but no target is int8",
                         hint="add an int8 target, e.g. x86-onnxruntime-int8")

    cache_key = None
    if cache and not qconfigs:
        from . import cache as _cache

        cache_key = _cache.compress_key(
            model, inputs, in_names=in_names, out_names=out_names, name=name, task=task,
            verify_samples=verify_samples, recipe=recipe, history=history_json, profiles=profiles,
        )
        hit = _cache.restore(cache_key, out_dir, cache_dir=cache, progress=progress,
                            overwrite=overwrite)
        if hit is not None:
            return hit

    build_key = None  # int8 targets record their timed decisions under this key
    if cache and qconfigs:
        from . import cache as _cache

        build_key = _cache.compress_key(
            model, inputs, in_names=in_names, out_names=out_names, name=name, task=task,
            verify_samples=verify_samples, recipe=recipe, history=history_json, profiles=profiles,
        )

    samples: list[list[np.ndarray]] = [[t.numpy() for t in inputs]]
    if task is not None:
        samples += split_batches(task.val, batch, limit=verify_samples)

    manifest_targets: dict[str, TargetEntry] = {}
    versions: dict[str, str] = {
        "edgekit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    quant_caches: dict[str, dict[str, Any]] = {}  # per QuantConfig: what its targets share
    with staged_bundle(Path(out_dir), overwrite=overwrite) as stage, \
            quiet(f"the build of {name}", verbose=verbose):
        for profile in profiles:
            backend: Backend = get_backend(profile.backend)
            versions.update(backend.versions())
            target_dir = stage / profile.name
            target_dir.mkdir()
            _log(progress, f"{profile.name}: exporting with {profile.backend}")
            start = time.perf_counter()
            quant_entry, report = None, None
            if profile.precision == "int8":
                from .quantize.build import build_int8

                def _check(sess: Any, _tol: Any = profile.tolerance) -> Any:
                    return verify(model, sess, samples, tolerance=_tol,
                                  classifier_outputs=classifier)

                qconfig = qconfigs[profile.name]
                cal, held, held_from = calib[qconfig.samples], None, ""
                if verify_feeds is not None:
                    held, held_from = verify_feeds, f"verify data ({len(verify_feeds)} batches)"
                elif task is None:  # no accuracy to gate on: held-out fidelity instead
                    from .quantize.gate import FidelityGate, split_holdout

                    gate = FidelityGate.from_table(profile.gate, f"target {profile.name}")
                    cal, held, held_from = split_holdout(cal, gate.holdout,
                                                         spare[qconfig.samples])
                decisions = None
                if build_key is not None:
                    decisions = _cache.DecisionFile(_cache.decisions_key(
                        build_key, profile, qconfig.to_json(), cal), cache)
                result = build_int8(
                    backend, profile, model, inputs, target_dir, in_names=in_names,
                    out_names=out_names, calibration=cal, config=qconfig,
                    task=task, batch=batch, progress=progress,
                    cache=quant_caches.setdefault(repr(qconfig), {}), check=_check,
                    decisions=decisions, holdout=held, holdout_source=held_from,
                    check_samples=samples)
                artifact, session = result.artifact, result.session
                quant_entry = result.quantization
                report = result.report  # the gate verified the shipped artifact
                export_s, load_s = time.perf_counter() - start, 0.0
            else:
                artifact = backend.export(
                    model,
                    inputs,
                    target_dir,
                    input_names=in_names,
                    output_names=out_names,
                    options=dict(profile.options),
                )
                export_s = time.perf_counter() - start
                start = time.perf_counter()
                session = backend.load(artifact, threads=profile.threads,
                                       options=dict(profile.options))
                load_s = time.perf_counter() - start
            if report is None:
                _log(progress, f"{profile.name}: exported and loaded in "
                     f"{export_s + load_s:.2f} s; verifying on {len(samples)} batches")
                report = verify(model, session, samples, tolerance=profile.tolerance,
                                classifier_outputs=classifier)
            else:
                _log(progress, f"{profile.name}: built in {export_s:.2f} s; verified on "
                     f"{len(samples)} batches")
            report.raise_for_failure(context=f"target {profile.name}")
            manifest_targets[profile.name] = _target_entry(
                profile, artifact, stage, session.info, report.to_json(), quant_entry)
            add_stage(records, "quantize" if profile.precision == "int8" else "export",
                      target=profile.name, backend=profile.backend)
            add_stage(records, "verify", target=profile.name, passed=True, batches=len(samples))

        ref = _reference_pairs(model, samples[:REFERENCE_PAIRS], in_names, out_names)
        save_npz(stage / REFERENCE, ref)
        manifest = Manifest(
            name=name,
            versions=versions,
            recipe=recipe or {},
            model=ModelRecord(
                class_name=type(model).__name__,
                parameters=sum(p.numel() for p in model.parameters()),
                inputs=[_spec(n, t).to_json() for n, t in zip(in_names, inputs)],
                outputs=[_spec(n, t).to_json() for n, t in zip(out_names, ref_outputs)],
                task=None if task is None
                else {"name": task.name, "kind": task.kind, "metric": task.metric},
            ),
            targets=manifest_targets,
            reference=record_file(stage, REFERENCE, pairs=len(samples[:REFERENCE_PAIRS])),
            history=records,
        )
        # Timings (export/load seconds) vary run to run: they go to the progress log only, so
        # the same inputs give a byte-identical manifest.
        write_json(stage / MANIFEST, _without_timings(manifest.to_json()))
    _log(progress, f"bundle written to {out_dir}")
    if cache_key is not None:
        from . import cache as _cache

        _cache.store(cache_key, out_dir, cache_dir=cache)
    return load_bundle(out_dir)


def _quant_configs(profiles: Sequence[TargetProfile], quantization: Any) -> dict[str, Any]:
    """Each int8 target's :class:`~edgekit.quantize.QuantConfig`, by target name.

    Precedence: the defaults < the profile's ``[quantization]`` < ``quantization`` (a dict
    sets its keys, checked like a TOML table; a QuantConfig replaces the whole). A recipe's
    ``[quantization]`` arrives here merged into ``quantization`` by
    :func:`edgekit.recipe.build_recipe`.
    """
    from .quantize import QuantConfig

    if quantization is not None and not isinstance(quantization, (QuantConfig, Mapping)):
        raise UsageError("quantization must be a QuantConfig or a dict, got "
                         f"{type(quantization).__name__}")
    configs: dict[str, Any] = {}
    for profile in profiles:
        if profile.precision != "int8":
            continue
        if isinstance(quantization, QuantConfig):
            configs[profile.name] = quantization
            continue
        config = QuantConfig.from_table(
            profile.quantization, f"target profile {profile.source or profile.name} [quantization]")
        if quantization:
            config = QuantConfig.from_table(quantization, "quantization=", base=config)
        configs[profile.name] = config
    return configs


def _without_timings(data: Any) -> Any:
    """``data`` without wall-clock fields (``seconds``, ``*_seconds``), recursively."""
    if isinstance(data, dict):
        return {
            k: _without_timings(v)
            for k, v in data.items()
            if not (isinstance(k, str) and (k == "seconds" or k.endswith("_seconds")))
        }
    if isinstance(data, list):
        return [_without_timings(v) for v in data]
    return data


def _spec(name: str, tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(tensor.shape), str(tensor.numpy().dtype))


def _target_entry(
    profile: TargetProfile,
    artifact: Artifact,
    stage: Path,
    runtime: dict[str, Any],
    verification: dict[str, Any],
    quantization: dict[str, Any] | None,
) -> TargetEntry:
    rel_root = artifact.root.relative_to(stage)
    return TargetEntry(
        backend=profile.backend,
        precision=artifact.precision,
        profile=profile.to_json(),
        files=[record_file(stage, str(rel_root / f)) for f in artifact.files],
        inputs=[s.to_json() for s in artifact.inputs],
        outputs=[s.to_json() for s in artifact.outputs],
        artifact_info=artifact.info,
        runtime=runtime,
        verification=verification,
        quantization=quantization,
    )


def _reference_pairs(
    model: torch.nn.Module,
    samples: list[list[np.ndarray]],
    in_names: list[str],
    out_names: list[str],
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    outs: list[list[np.ndarray]] = [[] for _ in out_names]
    with torch.no_grad():
        for feeds in samples:
            result = model(*(torch.from_numpy(f) for f in feeds))
            result = result if isinstance(result, (tuple, list)) else (result,)
            for i, r in enumerate(result):
                outs[i].append(r.numpy())
    for i, n in enumerate(in_names):
        arrays[f"input.{n}"] = np.stack([s[i] for s in samples])
    for i, n in enumerate(out_names):
        arrays[f"output.{n}"] = np.stack(outs[i])
    return arrays
