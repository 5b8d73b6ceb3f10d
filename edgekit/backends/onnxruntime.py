"""ONNX export (``torch.onnx.export(dynamo=True)``) run with onnxruntime's CPU provider.

Example::

    be = OnnxRuntimeBackend()
    art = be.export(model, (x,), out_dir, input_names=["x"], output_names=["y"], options={})
    sess = be.load(art, threads=2, options={})
    (y,) = sess.run([x.numpy()])
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._deps import require
from ..errors import BackendMissingError, BundleError, ExportError, QuantizationError, UsageError
from ._common import (
    CheckedSession,
    FeedChecker,
    bad_file,
    check_artifact_backend,
    check_export_args,
    check_protobuf_size,
    check_threads,
    eval_mode,
    export_failure,
    first_line,
    int8_needs,
    list_files,
    missing_modules,
    package_versions,
    run_failure,
)
from .base import Artifact, TensorSpec

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeSession"]

_EXTRA = "onnxruntime"
_NAME = "onnxruntime"


#: Ops that make an ONNX model int8.
_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger",
             "MatMulInteger", "QLinearMatMul"}
#: device -> the execution provider that runs on it.
_PROVIDERS = {"cuda": "CUDAExecutionProvider", "gpu": "CUDAExecutionProvider",
              "tensorrt": "TensorrtExecutionProvider"}


def _providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def _onnx_specs(values: Any) -> list[TensorSpec]:
    from onnx.helper import tensor_dtype_to_np_dtype

    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim)
        dtype = np.dtype(tensor_dtype_to_np_dtype(t.elem_type))
        specs.append(TensorSpec(v.name, shape, str(dtype)))
    return specs


def check_onnx_file(path: Path) -> Any:
    """Load and check an .onnx file (with its external data); BundleError naming it if bad."""
    onnx = require("onnx", backend=_NAME, extra=_EXTRA)
    from ..modelfile import check_format, check_onnx_external_data

    check_format(path, "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise bad_file(path, "ONNX model", exc) from exc
    # External data is checked (inside the folder, inside the file) before a byte is read.
    check_onnx_external_data(model, path)
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(Path(path).parent))
        onnx.checker.check_model(model if model.ByteSize() < 2**31 - 1 else str(path))
    except Exception as exc:
        raise bad_file(path, "ONNX model", exc) from exc
    if not model.graph.node and not model.graph.output:
        raise bad_file(path, "ONNX model (it has an empty graph)")
    return model


class OnnxRuntimeSession(CheckedSession):
    """An onnxruntime ``InferenceSession``; ``run`` takes/returns numpy arrays in model order."""

    backend = _NAME

    def __init__(self, sess: Any, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 info: dict[str, Any], path: Path | None = None) -> None:
        self._sess = sess
        self._path = path
        self.inputs = inputs
        self.outputs = outputs
        self.info = info
        self._check = FeedChecker(inputs)
        self._in_names = [s.name for s in inputs]
        self._out_names = [s.name for s in outputs]

    def _call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A failing node (e.g. one that allocates terabytes) raises :class:`ModelRunError`
        naming it."""
        try:
            return self._sess.run(self._out_names, dict(zip(self._in_names, arrays)))
        except Exception as exc:  # onnxruntime's Fail/RuntimeException, MemoryError
            raise run_failure(_NAME, exc, self._path) from exc


#: A dynamo export failure on control flow that depends on tensor values: a TorchScript trace
#: would record the branch the example input took, silently wrong for other inputs.
_DATA_DEPENDENT = re.compile(r"data.dependent|GuardOnDataDependent|DataDependentOutput",
                             re.IGNORECASE)


def _torchscript_export(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
                        path: Path, input_names: list[str], output_names: list[str],
                        options: dict[str, Any], failure: ExportError) -> None:
    """The TorchScript exporter, where the dynamo exporter failed: Hugging Face T5 and Swin
    attention ``reshape`` a transposed tensor, which ``torch.export`` records as a ``view``
    that the ONNX exporter's own decomposition then cannot replay ("Cannot view a tensor with
    shape ... and strides ..."). Not where the dynamo exporter refused control flow on tensor
    values (:data:`_DATA_DEPENDENT`). Raises ``failure`` with this exporter's error added
    where it fails too."""
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(model, example_inputs, str(path), dynamo=False,
                              input_names=list(input_names), output_names=list(output_names),
                              opset_version=options.get("opset") or 17)
    except Exception as exc:
        raise failure.extend(f" (the TorchScript exporter failed too: {first_line(exc)})") \
            from exc


class OnnxRuntimeBackend:
    """fp32 ONNX + onnxruntime (CPU execution provider)."""

    name = _NAME
    extra = _EXTRA
    file_suffix = ".onnx"
    qat_graph = False
    #: Profile ``[options]`` this backend reads (export: opset, optimize, external_data;
    #: load: graph_optimization_level).
    options_schema: dict[str, Any] = {
        "opset": int, "optimize": bool, "external_data": bool,
        "graph_optimization_level": ("all", "extended", "basic", "disable"),
    }

    def available(self) -> str | None:
        missing = missing_modules(["onnxruntime", "onnx"])
        if missing:
            return f"Python package(s) {', '.join(missing)} not installed"
        return None

    def versions(self) -> dict[str, str]:
        return package_versions(["onnxruntime", "onnx", "onnxscript", "torch"])

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
        """Options: ``opset`` (int, default: torch's), ``optimize`` (bool, default True),
        ``external_data`` (bool, default True: weights in ``model.onnx.data``)."""
        external = bool(options.get("external_data", True))
        check_protobuf_size(model, _NAME, external_data=external)
        require("onnx", backend=_NAME, extra=_EXTRA)
        require("onnxscript", backend=_NAME, extra=_EXTRA)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.onnx"
        example_inputs = tuple(example_inputs)
        t0 = time.perf_counter()
        with eval_mode(model):
            check_export_args(model, example_inputs, input_names, output_names)
            exporter, dynamo_error = "torch.onnx.export(dynamo=True)", None
            try:
                torch.onnx.export(
                    model,
                    example_inputs,
                    str(path),
                    dynamo=True,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    opset_version=options.get("opset"),
                    optimize=bool(options.get("optimize", True)),
                    external_data=external,
                    verbose=False,
                )
            except Exception as exc:
                failure = export_failure(_NAME, model, example_inputs, exc)
                if _DATA_DEPENDENT.search(f"{type(exc).__name__}: {exc}"):
                    raise failure from exc  # a trace would bake in one branch: no fallback
                _torchscript_export(model, example_inputs, path, input_names, output_names,
                                    options, failure)
                exporter = "torch.onnx.export(dynamo=False) (the dynamo exporter failed)"
                dynamo_error = failure.message
        if not path.is_file():
            raise ExportError(f"torch.onnx.export wrote no file at {path}", backend=_NAME)
        try:
            proto = check_onnx_file(path)
        except BundleError as exc:
            raise ExportError(f"the exported file does not check: {exc.message}",
                              backend=_NAME) from exc
        init_names = {i.name for i in proto.graph.initializer}
        inputs = _onnx_specs(i for i in proto.graph.input if i.name not in init_names)
        outputs = _onnx_specs(proto.graph.output)
        if [s.name for s in inputs] != list(input_names) or [s.name for s in outputs] != list(
            output_names
        ):
            raise ExportError(
                f"exported names {[s.name for s in inputs]} -> {[s.name for s in outputs]} "
                f"differ from the requested {list(input_names)} -> {list(output_names)}",
                backend=_NAME,
            )
        return Artifact(
            backend=_NAME,
            root=out_dir,
            files=list_files(out_dir, path.name),
            inputs=inputs,
            outputs=outputs,
            precision="fp32",
            info={
                "opset": next((o.version for o in proto.opset_import
                               if o.domain in ("", "ai.onnx")), None),
                "export_seconds": round(time.perf_counter() - t0, 3),
                "exporter": exporter,
                **({"dynamo_error": dynamo_error} if dynamo_error else {}),
            },
        )

    def int8_available(self) -> str | None:
        return int8_needs(["onnxruntime.quantization"])

    def weight_qmax(self, config: Any) -> int:
        """The int8 weights' grid ``-q..q`` this config gives: 64 with 7-bit weights
        (``reduce_range``), else 127 (for bias correction)."""
        from .onnxruntime_int8 import reduce_range_decision

        return 64 if reduce_range_decision(config)["applied"] else 127

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
        """QDQ int8 ONNX: ``quantize_static`` on the fp32 export (``fp32`` when given, else
        exported here); see :mod:`edgekit.backends.onnxruntime_int8`."""
        import tempfile

        from .onnxruntime_int8 import quantize_onnx

        check_protobuf_size(model, _NAME, external_data=False,
                            what="the int8 path (onnxruntime quantization) writes one "
                            "self-contained .onnx file")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            if fp32 is None:
                fp32 = self.export(model, example_inputs, Path(tmp), input_names=input_names,
                                   output_names=output_names, options=options)
            else:
                check_artifact_backend(fp32, _NAME)
            path = out_dir / "model.onnx"
            try:
                qinfo = quantize_onnx(fp32.path, path, input_names=list(input_names),
                                      batches=calibration, config=config, keep_float=keep_float)
            except (QuantizationError, UsageError):
                raise  # calibration failed / a quantization setting that does not fit the model
            except Exception as exc:
                raise ExportError(f"onnxruntime.quantization failed: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}",
                                  backend=_NAME) from exc
            info = dict(fp32.info)
            fp32_size = fp32.size_bytes
        proto = check_onnx_file(path)
        init_names = {i.name for i in proto.graph.initializer}
        info.update({"quantization": qinfo, "fp32_size_bytes": fp32_size,
                     "export_seconds": round(time.perf_counter() - t0, 3)})
        return Artifact(
            backend=_NAME, root=out_dir, files=list_files(out_dir, path.name),
            inputs=_onnx_specs(i for i in proto.graph.input if i.name not in init_names),
            outputs=_onnx_specs(proto.graph.output), precision="int8", info=info,
        )

    def int8_sources(self, config: Any, model: torch.nn.Module | None = None
                     ) -> list[tuple[str, dict[str, Any]]]:
        """onnxruntime ``quantize_static`` QDQ; with ``int8_scope = "auto"``, for a model with
        a layer norm, Q/DQ on every op and on the layer inputs only, both built and compared
        (:func:`._int8_scope.scope_sources`)."""
        from ._int8_scope import scope_sources

        return scope_sources("ONNX Runtime QDQ", config, model)

    def int8_alternatives(self, config: Any, model: torch.nn.Module, *,
                          sources_compared: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Q/DQ on the weight layers' inputs only (``int8_scope = "layers"``, where every op
        was quantized), per-tensor ranges chosen by error (where the calibrator set them), then
        the other activation type (uint8 <-> int8)."""
        from ._int8_scope import int8_scope_alternative
        from ._ranges import error_ranges_alternative

        other = "uint8" if config.activation_type == "int8" else "int8"
        return [*int8_scope_alternative(config, model), *error_ranges_alternative(config),
                (f"{other} activations", {"activation_type": other})]

    def inspect(self, path: Path) -> Artifact:
        """A lone ``.onnx`` file (with its ``.data`` file when there is one); int8 when it
        holds quantized ops."""
        path = Path(path)
        proto = check_onnx_file(path)
        init = {i.name for i in proto.graph.initializer}
        ops = {n.op_type for n in proto.graph.node}
        files = [path.name]
        data = path.with_name(path.name + ".data")
        if data.is_file():
            files.append(data.name)
        return Artifact(
            backend=_NAME, root=path.parent, files=files,
            inputs=_onnx_specs(i for i in proto.graph.input if i.name not in init),
            outputs=_onnx_specs(proto.graph.output),
            precision="int8" if ops & _INT8_OPS else "fp32", info={"source": "file"})

    def check_file(self, path: Path) -> None:
        """Protobuf size, then every external-data reference (inside the folder, inside the
        data file), before any tensor byte is read. Without ``onnx`` only the sniff runs."""
        from ..modelfile import MAX_PROTOBUF_BYTES, _bad, check_format, check_onnx_external_data

        path = Path(path)
        check_format(path, "onnx")
        try:
            onnx = require("onnx", backend=_NAME, extra=_EXTRA)
        except BackendMissingError:
            return
        size = path.stat().st_size
        if size > MAX_PROTOBUF_BYTES:
            raise BundleError(f"{path} is {size} bytes; an ONNX protobuf holds at most "
                              f"{MAX_PROTOBUF_BYTES} bytes: refused before reading it",
                              hint="large models keep their weights in external data files")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise _bad(path, f"ONNX model ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
        check_onnx_external_data(proto, path)

    def device_unavailable_reason(self, device: str) -> str | None:
        """cuda: the CUDA execution provider; tensorrt: the TensorRT one."""
        if device == "cpu":
            return None
        if device not in ("cuda", "tensorrt", "gpu"):
            return f"onnxruntime has no {device} path"
        provs = _providers()
        need = _PROVIDERS[device]
        if need not in provs:
            return (f"onnxruntime has no {need} (available: {', '.join(provs) or 'none'}); "
                    "install onnxruntime-gpu on a machine with an NVIDIA GPU")
        return None

    def load_on_device(self, artifact: Artifact, device: str, *, threads: int,
                       options: dict[str, Any]) -> OnnxRuntimeSession:
        """An InferenceSession on the CUDA or TensorRT provider; refused when onnxruntime
        would put the model on the CPU provider instead."""
        from ..errors import DeviceUnavailableError

        if device == "cpu":
            return self.load(artifact, threads=threads, options=options)
        reason = self.device_unavailable_reason(device)
        if reason:
            raise DeviceUnavailableError(f"{artifact.path}: cannot run on {device}: {reason}")
        ort = require("onnxruntime", backend=_NAME, extra=_EXTRA)
        want = _PROVIDERS[device]
        so = ort.SessionOptions()
        so.intra_op_num_threads = check_threads(threads)
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(artifact.path), so,
                                    providers=[want, "CPUExecutionProvider"])
        if sess.get_providers()[0] != want:
            raise DeviceUnavailableError(
                f"onnxruntime fell back to {sess.get_providers()[0]} instead of {want}; "
                "refusing to report CPU numbers as GPU numbers")
        info = {"runtime": "onnxruntime", "version": ort.__version__, "device": device.upper(),
                "providers": sess.get_providers(), "precision": artifact.precision,
                "threads": threads, "load_seconds": round(time.perf_counter() - t0, 3)}
        return OnnxRuntimeSession(sess, artifact.inputs, artifact.outputs, info)

    def import_runtime(self) -> None:
        require("onnxruntime", backend=_NAME, extra=_EXTRA)

    def load(self, artifact: Artifact, *, threads: int, options: dict[str, Any]
             ) -> OnnxRuntimeSession:
        """Options: ``graph_optimization_level`` ("all" default, "extended", "basic", "disable")."""
        ort = require("onnxruntime", backend=_NAME, extra=_EXTRA)
        threads = check_threads(threads)
        path = check_artifact_backend(artifact, _NAME)
        proto = check_onnx_file(path)
        del proto
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = str(options.get("graph_optimization_level", "all"))
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if level not in levels:
            from ..errors import UsageError

            raise UsageError(f"graph_optimization_level {level!r} is not one of {sorted(levels)}")
        so.graph_optimization_level = levels[level]
        t0 = time.perf_counter()
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            if isinstance(exc, MemoryError) or "allocat" in str(exc).lower():
                raise run_failure(_NAME, exc, path, stage="load") from exc
            raise bad_file(path, "model for onnxruntime", exc) from exc
        dtype_map = {
            "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
            "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
            "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(int16)": "int16",
        }

        def specs(args: Any) -> list[TensorSpec]:
            return [
                TensorSpec(a.name, tuple(d if isinstance(d, int) else -1 for d in a.shape),
                           dtype_map.get(a.type, a.type))
                for a in args
            ]

        inputs, outputs = specs(sess.get_inputs()), specs(sess.get_outputs())
        want_in = [s.name for s in artifact.inputs]
        want_out = [s.name for s in artifact.outputs]
        if [s.name for s in inputs] != want_in or [s.name for s in outputs] != want_out:
            raise BundleError(
                f"{path} has inputs {[s.name for s in inputs]} and outputs "
                f"{[s.name for s in outputs]}, but the artifact records {want_in} and {want_out}"
            )
        info = {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "device": "CPU",
            "providers": sess.get_providers(),
            "precision": artifact.precision,
            "threads": threads,
            "intra_op_num_threads": so.intra_op_num_threads,
            "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": "sequential",
            "graph_optimization_level": level,
            "load_seconds": round(time.perf_counter() - t0, 3),
        }
        return OnnxRuntimeSession(sess, inputs, outputs, info, path)
