"""TFLite export (``litert_torch.convert``) run with the LiteRT interpreter.

Quirks handled here:

* litert-torch names the signature's inputs ``args_0, args_1, ...`` and outputs
  ``output_0, ...``; the artifact maps them to our names (``Artifact.info["input_map"]`` /
  ``["output_map"]``) and the session feeds/reads tensors in model order.
* 64-bit integer inputs become int32 (``Artifact.inputs`` records int32; ``Session.run``
  casts int64 feeds when the values fit).
* Layout stays NCHW as in PyTorch.

The runtime is ``ai_edge_litert`` or, on devices that only have it, ``tflite_runtime``.

Example::

    be = TFLiteBackend()
    art = be.export(model, (x,), out_dir, input_names=["x"], output_names=["y"], options={})
    sess = be.load(art, threads=2, options={})
    (y,) = sess.run([x.numpy()])
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._deps import require
from ..errors import (
    BackendMissingError,
    BundleError,
    ExportError,
    QuantizationError,
)
from ._common import (
    BareCall,
    CheckedSession,
    FeedChecker,
    bad_file,
    check_artifact_backend,
    check_export_args,
    check_threads,
    eval_mode,
    export_failure,
    first_line,
    int8_needs,
    layout_failure,
    list_files,
    missing_modules,
    package_versions,
    run_failure,
    same_scale_failure,
)
from .base import Artifact, TensorSpec

__all__ = ["FloatIOSession", "TFLiteBackend", "TFLiteSession", "check_tflite_file"]

_EXTRA = "tflite"
_NAME = "tflite"
_RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def _interpreter_module() -> Any:
    """ai_edge_litert's interpreter, else tflite_runtime's; BackendMissingError if neither."""
    last: BackendMissingError | None = None
    for mod in _RUNTIMES:
        try:
            return require(mod, backend=_NAME, extra=_EXTRA)
        except BackendMissingError as exc:
            last = last or exc
    assert last is not None
    raise last


def check_tflite_file(path: Path) -> None:
    """Structural check before the interpreter sees the file (it may crash on garbage): the
    flatbuffer identifier ``TFL3``, and every table, vector and buffer inside the file (see
    :func:`edgekit.modelfile.check_tflite_file`)."""
    from ..modelfile import check_tflite_file as _check

    _check(path)


def prepare_in_child(path: Path) -> None:
    """Open ``path`` and allocate its tensors in a child process first: LiteRT aborts the
    whole process (SIGABRT, no Python exception) on some int8 files it cannot prepare (a
    kernel's check on its requantization scales; a MobileViT whose activations are exactly 0
    did it, its scales floored). A child that dies by a signal raises ModelRunError with the
    runtime's last lines (:mod:`._child`); the caller's process, and the other int8 source,
    live on. A Python error, or a child past its time, is left to the caller's own open."""
    from ._child import run_in_child

    mod = _interpreter_module()
    code = ("import sys\nfrom " + mod.__name__ + " import Interpreter\n"
            "Interpreter(model_path=sys.argv[1], num_threads=1).allocate_tensors()\n")
    run_in_child(code, [str(path)], backend=_NAME, runtime="LiteRT",
                 doing=f"preparing {path.name}",
                 hint="a LiteRT kernel refused this file's quantization parameters: try "
                 "quantization scale_floor = \"off\", or keep the layer it names in float")


def _open_interpreter(path: Path, threads: int) -> Any:
    mod = _interpreter_module()  # a missing runtime is reported first
    check_tflite_file(path)  # then the file is checked before the interpreter sees a byte
    try:
        interp = mod.Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except Exception as exc:
        raise bad_file(path, "TFLite model", exc) from exc
    return interp


_INDEXED = re.compile(r"^(?:args|output)_(\d+)$")


def _ordered(names: list[str]) -> list[str]:
    """Signature names in model order: args_0, args_1, ... / output_0, ... by their number."""
    if all(_INDEXED.match(n) for n in names):
        return sorted(names, key=lambda n: int(_INDEXED.match(n).group(1)))  # type: ignore[union-attr]
    return list(names)


def _signature(interp: Any, path: Path) -> tuple[str, list[dict], list[dict], list[str], list[str]]:
    """(signature key, input details, output details, signature input names, output names),
    details in model order."""
    sigs = interp.get_signature_list()
    if not sigs:
        raise bad_file(path, "TFLite model with a signature (it has none)")
    key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
    runner = interp.get_signature_runner(key)
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()
    in_names = _ordered(list(sigs[key]["inputs"]))
    out_names = _ordered(list(sigs[key]["outputs"]))
    return (key, [in_details[n] for n in in_names], [out_details[n] for n in out_names],
            in_names, out_names)


def _spec(name: str, detail: dict) -> TensorSpec:
    return TensorSpec(name, tuple(int(d) for d in detail["shape"]), str(np.dtype(detail["dtype"])))


def _lowered(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
    """The exported graph of ``model`` with the ops :mod:`.litert_lowering` writes otherwise
    rewritten; None when it has none of them."""
    from .litert_lowering import lower_unrunnable

    gm = torch.export.export(model, tuple(example_inputs)).module()
    return gm if lower_unrunnable(gm) else None


def _convert_fp32(litert_torch: Any, model: torch.nn.Module,
                  example_inputs: tuple[torch.Tensor, ...]) -> Any:
    """``litert_torch.convert(model, example_inputs)``; where it fails on a graph holding ops
    :mod:`.litert_lowering` writes otherwise, the exported graph with those ops rewritten is
    converted instead (the first error stands when nothing was rewritten)."""
    try:
        return litert_torch.convert(model, example_inputs)
    except Exception as exc:
        try:
            gm = _lowered(model, example_inputs)
        except Exception:
            gm = None  # the model does not export: the converter's error says so
        if gm is None:
            raise exc
        return litert_torch.convert(gm, example_inputs)


@contextlib.contextmanager
def _layout_partitioner(litert_torch: Any, name: str | None) -> Any:
    """litert-torch's NCHW-to-NHWC layout pass partitions the graph with ``name`` (its
    ``layout_optimize_partitioner``, kept in the environment) inside the block; None: as
    configured."""
    config: Any = getattr(litert_torch, "config", None)
    if name is None or not hasattr(config, "layout_optimize_partitioner"):
        yield
        return
    key, before = "LAYOUT_OPTIMIZE_PARTITIONER", os.environ.get("LAYOUT_OPTIMIZE_PARTITIONER")
    config.layout_optimize_partitioner = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _layout_broken(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is litert-torch's layout pass refusing a tensor
    or leaving an op's operands in two layouts."""
    seen: BaseException | None = exc
    while seen is not None:
        if "NHWC" in str(seen) or "broadcast" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _convert_int8(litert_torch: Any, gm: Any,
                  example_inputs: tuple[torch.Tensor, ...], quant: Any) -> Any:
    """``litert_torch.convert`` of the int8 graph ``gm``. Where litert-torch's layout pass
    breaks it (a refused tensor, or an op reading both layouts), ``gm`` is converted again
    with each reader of a shared int8 tensor given its own dequantize, then with the pass's
    greedy partitioner instead of its min-cut one; the first error stands when both fail.
    ``gm.edgekit_layout_retry`` says which conversion gave the file (None: the first)."""
    from .tflite_int8 import split_shared_dequantize

    gm.edgekit_layout_retry = None
    try:
        return litert_torch.convert(gm, example_inputs, quant_config=quant)
    except Exception as first:
        if not _layout_broken(first):
            raise
        split = split_shared_dequantize(gm)
        for partitioner in ([None] if split else []) + ["GREEDY"]:
            try:
                with _layout_partitioner(litert_torch, partitioner):
                    edge_model = litert_torch.convert(gm, example_inputs, quant_config=quant)
            except Exception:
                continue
            gm.edgekit_layout_retry = ", ".join(
                (["each reader of a shared int8 tensor given its own dequantize"] if split
                 else []) + (["greedy layout partitioner"] if partitioner else []))
            return edge_model
        raise first


class TFLiteSession(CheckedSession):
    """A LiteRT interpreter with tensors allocated; ``run`` sets inputs by tensor index, at the
    model's own I/O types (int8 tensors for an int8 model with int8 I/O)."""

    backend = _NAME

    def __init__(self, interp: Any, in_idx: list[int], out_idx: list[int],
                 inputs: list[TensorSpec], outputs: list[TensorSpec], info: dict[str, Any],
                 path: Path | None = None) -> None:
        self._in_idx = in_idx
        self._out_idx = out_idx
        self.inputs = inputs
        self.outputs = outputs
        self.info = info
        self._path = path
        self._check = FeedChecker(inputs)
        self._set = interp.set_tensor
        self._get = interp.get_tensor
        self._invoke = interp.invoke

    def _call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A failing invoke raises :class:`ModelRunError`."""
        for idx, x in zip(self._in_idx, arrays):
            self._set(idx, x)
        try:
            self._invoke()
        except Exception as exc:  # RuntimeError from the interpreter, MemoryError
            raise run_failure(_NAME, exc, self._path) from exc
        return [self._get(idx) for idx in self._out_idx]


#: (scale, zero point, integer dtype) of one int8 tensor; None for a tensor left as it is.
Conversion = tuple[float, int, Any] | None


class FloatIOSession:
    """An int8 model with float I/O (``io = "float"``): float32 in and out, quantized and
    dequantized at the boundary with each tensor's scale and zero point, as device code does.

    ``run`` includes the conversion. Latency excludes it: ``timed(feeds)`` returns the inner
    :class:`TFLiteSession` and the feeds already quantized, which
    :func:`edgekit.measure.timing.timed_call` (and so every timer) uses.
    """

    backend = _NAME

    def __init__(self, inner: TFLiteSession, convert_in: list[Conversion],
                 convert_out: list[Conversion]) -> None:
        self.inner = inner
        self.inputs = [s if c is None else TensorSpec(s.name, s.shape, "float32")
                       for s, c in zip(inner.inputs, convert_in)]
        self.outputs = [s if c is None else TensorSpec(s.name, s.shape, "float32")
                        for s, c in zip(inner.outputs, convert_out)]
        self.info = inner.info
        self._convert_in = convert_in
        self._convert_out = convert_out
        self._check = FeedChecker(self.inputs)

    def quantize_feeds(self, feeds: list[np.ndarray], *, allow_nonfinite: bool = False
                       ) -> list[np.ndarray]:
        """Float feeds (checked as ``run`` does) -> the inner session's int8 feeds."""
        arrays = self._check(feeds, allow_nonfinite=allow_nonfinite)
        return [x if c is None else _quantize(x, *c) for x, c in zip(arrays, self._convert_in)]

    def run(self, feeds: list[np.ndarray], *, allow_nonfinite: bool = False
            ) -> list[np.ndarray]:
        """Float feeds in model order -> float outputs (see :meth:`TFLiteSession.run`)."""
        outs = self.inner.run(self.quantize_feeds(feeds, allow_nonfinite=allow_nonfinite))
        return [o if c is None else (o.astype(np.float32) - c[1]) * np.float32(c[0])
                for o, c in zip(outs, self._convert_out)]

    def timed(self, feeds: list[np.ndarray]) -> tuple[BareCall | TFLiteSession,
                                                       list[np.ndarray]]:
        """What a latency measures: the inner interpreter call and its pre-quantized feeds."""
        quantized = self.quantize_feeds(feeds)
        timed = getattr(self.inner, "timed", None)
        return timed(quantized) if timed is not None else (self.inner, quantized)


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def pt2e_scope(config: Any, *, qat: bool = False) -> dict[str, Any]:
    """Which ops litert's quantizer annotates (``config.int8_scope``): ``"layers"`` (the weight
    layers only) or ``"all"``. ``"auto"`` annotates every op here: a model with a layer norm
    whose build misses its gate gets ``"layers"`` as the first alternative (LiteRT's sources
    are not doubled for it). A QAT graph keeps the fake-quantizers it was trained with."""
    if qat:
        return {"setting": config.int8_scope, "applied": "all",
                "why": "a QAT graph keeps the fake-quantizers it was trained with"}
    applied = "layers" if config.int8_scope == "layers" else "all"
    return {"setting": config.int8_scope, "applied": applied}


class TFLiteBackend:
    """fp32 TFLite via litert-torch, run with ai-edge-litert (or tflite-runtime)."""

    name = _NAME
    extra = _EXTRA
    file_suffix = ".tflite"
    qat_graph = True
    #: Profile ``[options]`` this backend reads (load: io, the int8 model's I/O type).
    options_schema: dict[str, Any] = {"io": ("float", "int8")}

    def available(self) -> str | None:
        if all(missing_modules([m]) for m in ("ai_edge_litert", "tflite_runtime")):
            return "Python package ai_edge_litert (or tflite_runtime) not installed"
        return None

    def versions(self) -> dict[str, str]:
        return package_versions(["litert-torch", "ai-edge-litert", "tflite-runtime", "torch"])

    def export(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        out_dir: Path,
        *,
        input_names: list[str],
        output_names: list[str],
        options: dict[str, Any],
    ) -> Artifact:
        """Options: none yet for fp32 (int8 adds a quantizer later)."""
        litert_torch = require("litert_torch", backend=_NAME, extra=_EXTRA)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.tflite"
        example_inputs = tuple(example_inputs)
        t0 = time.perf_counter()
        source: Any = model
        for attempt in range(2):
            with eval_mode(model):
                check_export_args(model, example_inputs, input_names, output_names)
                try:
                    # litert-torch prints its progress to stdout: keep stdout for data.
                    with contextlib.redirect_stdout(sys.stderr):
                        edge_model = _convert_fp32(litert_torch, source, example_inputs)
                except Exception as exc:
                    raise export_failure(_NAME, model, example_inputs, exc) from exc
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    edge_model.export(str(path))
            except Exception as exc:
                raise ExportError(f"writing {path} failed: {first_line(exc)}",
                                  backend=_NAME) from exc
            try:
                interp = _open_interpreter(path, 1)
                break
            except BundleError as exc:
                # an op lowered to StableHLO that LiteRT has no kernel for (topk's SORT):
                # convert again from the graph with such ops rewritten, where it has any
                retry = None
                if attempt == 0 and "STABLEHLO_" in exc.message:
                    with eval_mode(model):
                        retry = _lowered(model, example_inputs)
                if retry is None:
                    raise ExportError(f"the exported file does not load: {exc.message}",
                                      backend=_NAME) from exc
                source = retry
        key, in_det, out_det, sig_in, sig_out = _signature(interp, path)
        if len(sig_in) != len(input_names) or len(sig_out) != len(output_names):
            raise ExportError(
                f"signature {key!r} has inputs {sig_in} and outputs {sig_out}; expected "
                f"{len(input_names)} inputs and {len(output_names)} outputs",
                backend=_NAME,
            )
        inputs = [_spec(n, d) for n, d in zip(input_names, in_det)]
        outputs = [_spec(n, d) for n, d in zip(output_names, out_det)]
        changed = {
            s.name: {"torch": str(x.dtype).replace("torch.", ""), "tflite": s.dtype}
            for s, x in zip(inputs, example_inputs)
            if str(x.dtype).replace("torch.", "") != s.dtype
        }
        return Artifact(
            backend=_NAME,
            root=out_dir,
            files=list_files(out_dir, path.name),
            inputs=inputs,
            outputs=outputs,
            precision="fp32",
            info={
                "signature": key,
                "input_map": dict(zip(input_names, sig_in)),
                "output_map": dict(zip(output_names, sig_out)),
                "dtype_changes": changed,
                "layout": "NCHW (as in PyTorch)",
                "export_seconds": round(time.perf_counter() - t0, 3),
                "exporter": "litert_torch.convert",
            },
        )

    def int8_available(self) -> str | None:
        return int8_needs(["litert_torch", "torchao"])

    def quantize(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        out_dir: Path,
        *,
        input_names: list[str],
        output_names: list[str],
        options: dict[str, Any],
        calibration: list[list[np.ndarray]],
        config: Any,
        keep_float: list[str] | tuple[str, ...] = (),
        fp32: Artifact | None = None,
        prepared: Any = None,
    ) -> Artifact:
        """int8 .tflite through PT2E with litert-torch's quantizer (symmetric, per-channel
        weights, int8 activations), from the PyTorch model (``fp32`` is not used: LiteRT
        quantizes the graph, not a file). ``prepared``: an already fake-quantized (QAT)
        graph. ``config.activations_16bit``: ``"all"`` builds TFLite's 16x8 mode (int16
        activations), ``"auto"`` builds it where the 8-bit outputs need it and keeps it
        within the latency limit (:mod:`edgekit.backends.tflite_16x8`)."""
        litert_torch = require("litert_torch", backend=_NAME, extra=_EXTRA)
        from litert_torch.quantize.quant_config import QuantConfig as LiteRTQuantConfig

        from ._pt2e_scales import floor_record, source_flags
        from .tflite_16x8 import (
            choose_16x8,
            graph_biases,
            unsupported_int16,
            wide_mode,
            widen_16x8_biases,
        )
        from .tflite_int8 import (
            float_modules,
            litert_quantizer,
            pt2e_calibrate_convert,
            pt2e_prepare,
            tflite_precision_summary,
        )

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.tflite"
        example_inputs = tuple(example_inputs)
        t0 = time.perf_counter()
        qat = prepared is not None
        mode = wide_mode(config, qat=qat)
        scope = pt2e_scope(config, qat=qat)

        def build(target: Path, wide: bool) -> tuple[Any, Any, list[str]]:
            """Convert to ``target``: (converted graph, prepared graph, widened biases)."""
            quantizer = litert_quantizer(config, keep_float, qat=qat, wide=wide,
                                         layers_only=scope["applied"] == "layers"
                                         and not wide)
            graph = prepared
            gm: Any = None
            with eval_mode(model):
                check_export_args(model, example_inputs, input_names, output_names)
                try:
                    with contextlib.redirect_stdout(sys.stderr):
                        if graph is None:
                            graph = pt2e_prepare(model, example_inputs, quantizer, wide=wide,
                                                 rewrite=config.integer_ops)
                            gm = pt2e_calibrate_convert(graph, calibration, input_names,
                                                        config=config)
                        else:  # QAT: the fake-quantized graph already holds its ranges
                            gm = pt2e_calibrate_convert(graph.eval(), [])
                        quant = LiteRTQuantConfig(pt2e_quantizer=quantizer)
                        edge_model = _convert_int8(litert_torch, gm, example_inputs, quant)
                        edge_model.export(str(target))
                except QuantizationError:
                    raise  # calibration failed: the message names the inputs and shapes
                except Exception as exc:
                    refused = (unsupported_int16(exc) if wide else None) or \
                        same_scale_failure(_NAME, model, example_inputs, exc) or \
                        layout_failure(_NAME, gm, exc)
                    if refused is not None:
                        raise refused from exc
                    raise export_failure(_NAME, model, example_inputs, exc) from exc
            return gm, graph, widen_16x8_biases(target, graph_biases(gm)) if wide else []

        wide_record: dict[str, Any] = {"setting": config.activations_16bit, "chosen": False}
        if mode == "auto":
            (gm, prepared, widened), wide_record = choose_16x8(
                build, path, model, calibration, config, float_runner)
        else:
            gm, prepared, widened = build(path, mode == "all")
            wide_record["chosen"] = mode == "all"
            if qat and config.activations_16bit:
                wide_record["reason"] = "a QAT graph carries its own 8-bit fake-quantizers"
        wide_record["int64_biases"] = len(widened)
        below = list(getattr(gm, "edgekit_scales_below_clamp", []))
        prepare_in_child(path)  # an int8 file LiteRT cannot prepare kills a child, not us
        interp = _open_interpreter(path, 1)
        key, in_det, out_det, sig_in, sig_out = _signature(interp, path)
        inputs = [_spec(n, d) for n, d in zip(input_names, in_det)]
        outputs = [_spec(n, d) for n, d in zip(output_names, out_det)]

        def qparams(d: dict) -> dict[str, Any]:
            scale, zp = d.get("quantization", (0.0, 0))
            return {"dtype": str(np.dtype(d["dtype"])), "scale": float(scale),
                    "zero_point": int(zp)}

        ops = [o["op_name"] for o in interp._get_ops_details()]
        summary = tflite_precision_summary(interp)
        # what executes, read from the file: compute layers on int16 data (16x8)
        wide_record["int16_layers"] = sum(1 for r in summary["layers"]
                                          if r["precision"] == "int16")
        tensors = interp.get_tensor_details()
        int8_weights = sum(1 for t in tensors if np.dtype(t["dtype"]) == np.int8
                           and len(t["shape"]) >= 2)
        return Artifact(
            backend=_NAME, root=out_dir, files=list_files(out_dir, path.name),
            inputs=inputs, outputs=outputs, precision="int8",
            info={
                "signature": key,
                "input_map": dict(zip(input_names, sig_in)),
                "output_map": dict(zip(output_names, sig_out)),
                "io": config.io,
                "io_quantization": {
                    **{n: qparams(d) for n, d in zip(input_names, in_det)},
                    **{n: qparams(d) for n, d in zip(output_names, out_det)}},
                "layout": "NCHW (as in PyTorch)",
                "quantization": {
                    "quantizer": "PT2E + litert_torch PT2EQuantizer (symmetric"
                    + (", 16x8: int16 activations)" if wide_record["int16_layers"] else ")"),
                    "activations_16bit": wide_record,
                    "int8_scope": scope if not wide_record["chosen"] else {
                        **scope, "applied": "all",
                        "why": "16-bit activations: every op annotated"},
                    "per_channel": config.per_channel, "qat": qat,
                    "float_modules": list(keep_float),
                    # modules litert's quantizer cannot annotate (GRU): left in float
                    "float_modules_unannotatable": float_modules(model),
                    # modules called more than once: each call annotated on its own
                    "unshared_modules": list(getattr(prepared, "edgekit_unshared_modules",
                                                     [])),
                    # hardsigmoid / hardswish written out in ops the quantizer takes
                    # (integer_ops; 16x8: the hardswishes only)
                    "rewritten_activations": list(getattr(prepared, "edgekit_rewritten", [])),
                    # nodes written otherwise (or identity casts dropped) so that
                    # litert-torch converts the graph and LiteRT runs it
                    "lowered_nodes": list(getattr(prepared, "edgekit_lowered", [])),
                    # how litert-torch's layout pass was brought to convert the graph
                    "layout_retry": getattr(gm, "edgekit_layout_retry", None),
                    "ops": {o: ops.count(o) for o in sorted(set(ops))},
                    "int8_weight_tensors": int8_weights,
                    "ranges": getattr(gm, "edgekit_ranges", None),
                    "scale_floor": floor_record(config, below),
                    **summary,
                },
                "export_seconds": round(time.perf_counter() - t0, 3),
                "exporter": "litert_torch.convert (PT2E int8)",
                **source_flags(len(below)),
            },
        )

    def int8_sources(self, config: Any, model: torch.nn.Module | None = None
                     ) -> list[tuple[str, dict[str, Any]]]:
        """PT2E with litert-torch's quantizer: with ``scale_floor="auto"``, scales floored and
        clamped at litert-torch's 2**-12, compared where the two differ
        (:mod:`edgekit.backends._pt2e_scales`); where the ranges are left to the quantizer's
        observers (``range_method="runtime"``, 8-bit), also the ranges chosen per tensor by
        error (``"auto"``): the same ops on other numbers, the more faithful kept. A trained
        MobileNetV3-Large went from 84.33% to 90.33% (fp32 91.44%) with them."""
        from ._pt2e_scales import floor_sources
        from ._ranges import error_ranges_alternative

        sources = floor_sources(config, "PT2E litert")
        if not config.activations_16bit:
            floor = {"scale_floor": "on"} if config.scale_floor == "auto" else {}
            sources += [(f"PT2E litert, {label}", {**changes, **floor})
                        for label, changes in error_ranges_alternative(config)]
        return sources

    def int8_alternatives(self, config: Any, model: torch.nn.Module, *,
                          sources_compared: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Only the weight layers annotated (``int8_scope = "layers"``) where the model has a
        layer norm and every op was (8-bit, PTQ); else none."""
        from ._int8_scope import int8_scope_alternative

        return [] if config.activations_16bit else int8_scope_alternative(config, model)

    def inspect(self, path: Path) -> Artifact:
        """A lone ``.tflite`` file, I/O by its signature; int8 when it holds quantized
        tensors."""
        path = Path(path)
        interp = _open_interpreter(path, 1)
        _, in_det, out_det, sig_in, sig_out = _signature(interp, path)
        int8 = any(np.dtype(d["dtype"]) in (np.int8, np.uint8)
                   and d.get("quantization", (0, 0))[0] for d in interp.get_tensor_details())
        return Artifact(
            backend=_NAME, root=path.parent, files=[path.name],
            inputs=[_spec(n, d) for n, d in zip(sig_in, in_det)],
            outputs=[_spec(n, d) for n, d in zip(sig_out, out_det)],
            precision="int8" if int8 else "fp32",
            info={"source": "file", "input_map": {n: n for n in sig_in},
                  "output_map": {n: n for n in sig_out}})

    def check_file(self, path: Path) -> None:
        """The flatbuffer's tables, vectors and buffers all inside the file."""
        check_tflite_file(Path(path))

    def device_unavailable_reason(self, device: str) -> str | None:
        """CPU only: the LiteRT GPU delegate is not wired in."""
        if device == "cpu":
            return None
        return "the LiteRT GPU delegate is not wired into edgekit's harness (CPU only)"

    def load_on_device(self, artifact: Artifact, device: str, *, threads: int,
                       options: dict[str, Any]) -> TFLiteSession | FloatIOSession:
        """The CPU session for ``cpu``; any other device is refused."""
        from ..errors import DeviceUnavailableError

        reason = self.device_unavailable_reason(device)
        if reason:
            raise DeviceUnavailableError(f"{artifact.path}: cannot run on {device}: {reason}")
        return self.load(artifact, threads=threads, options=options)

    def import_runtime(self) -> None:
        _interpreter_module()

    def load(self, artifact: Artifact, *, threads: int, options: dict[str, Any]
             ) -> TFLiteSession | FloatIOSession:
        threads = check_threads(threads)
        path = check_artifact_backend(artifact, _NAME)
        t0 = time.perf_counter()
        interp = _open_interpreter(path, threads)
        key, in_det, out_det, sig_in, sig_out = _signature(interp, path)
        want_in = [artifact.info.get("input_map", {}).get(s.name) for s in artifact.inputs]
        want_out = [artifact.info.get("output_map", {}).get(s.name) for s in artifact.outputs]
        if None in want_in or None in want_out:  # no recorded mapping: trust the order
            want_in, want_out = sig_in, sig_out
        if sorted(want_in) != sorted(sig_in) or sorted(want_out) != sorted(sig_out):
            raise BundleError(
                f"{path}: signature {key!r} has inputs {sig_in} and outputs {sig_out}, "
                f"but the artifact maps to {want_in} and {want_out}"
            )
        by_in = dict(zip(sig_in, in_det))
        by_out = dict(zip(sig_out, out_det))
        inputs = [_spec(s.name, by_in[n]) for s, n in zip(artifact.inputs, want_in)]
        outputs = [_spec(s.name, by_out[n]) for s, n in zip(artifact.outputs, want_out)]
        # int8 artifacts with io="float": a FloatIOSession around the interpreter's session.
        io = str(options.get("io", artifact.info.get("io", "int8")))
        convert_in: list[Conversion] = [None] * len(inputs)
        convert_out: list[Conversion] = [None] * len(outputs)
        if artifact.precision == "int8" and io == "float":
            convert_in = [_conversion(by_in[n]) for n in want_in]
            convert_out = [_conversion(by_out[n]) for n in want_out]
        mod = type(interp).__module__.split(".")[0]
        info = {
            "runtime": mod,
            "version": package_versions(["ai-edge-litert" if mod == "ai_edge_litert"
                                         else "tflite-runtime"]).popitem()[1],
            "device": "CPU",
            "precision": artifact.precision,
            "threads": threads,
            "signature": key,
            "load_seconds": round(time.perf_counter() - t0, 3),
        }
        if artifact.precision == "int8":
            info["io"] = io
        session = TFLiteSession(
            interp,
            [int(by_in[n]["index"]) for n in want_in],
            [int(by_out[n]["index"]) for n in want_out],
            inputs,
            outputs,
            info,
            path,
        )
        if any(convert_in) or any(convert_out):
            return FloatIOSession(session, convert_in, convert_out)
        return session


def float_runner(path: Path) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """A one-thread interpreter of ``path`` with float inputs and outputs in model order
    (quantized and dequantized at the boundary as :class:`FloatIOSession` does, without its
    checks): what the 16x8 choice measures and times."""
    interp = _open_interpreter(path, 1)
    _key, in_det, out_det, _sig_in, _sig_out = _signature(interp, path)
    conv_in = [_conversion(d) for d in in_det]
    conv_out = [_conversion(d) for d in out_det]

    def run(feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        for d, c, x in zip(in_det, conv_in, feeds):
            x = np.asarray(x)
            interp.set_tensor(d["index"], x if c is None else _quantize(x, *c))
        interp.invoke()
        outs = [interp.get_tensor(d["index"]) for d in out_det]
        return [o if c is None else (o.astype(np.float32) - c[1]) * np.float32(c[0])
                for o, c in zip(outs, conv_out)]

    return run


def _conversion(detail: dict[str, Any]) -> Conversion:
    """The float<->integer conversion of one interpreter tensor (int8, uint8, or int16 in
    16x8 files), None when it is not quantized."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]) in (np.int8, np.uint8, np.int16) and scale:
        return float(scale), int(zero_point), np.dtype(detail["dtype"])
    return None
