"""ONNX export (``torch.onnx.export(dynamo=True)``) run with onnxruntime's CPU provider.

Example::

    be = OnnxRuntimeBackend()
    art = be.export(model, (x,), out_dir, input_names=["x"], output_names=["y"], options={})
    sess = be.load(art, threads=2, options={})
    (y,) = sess.run([x.numpy()])
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._deps import require
from ..errors import BundleError, ExportError
from ._common import (
    FeedChecker,
    bad_file,
    check_artifact_backend,
    check_export_args,
    check_protobuf_size,
    check_threads,
    eval_mode,
    export_failure,
    list_files,
    missing_modules,
    package_versions,
    run_failure,
)
from .base import Artifact, TensorSpec

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeSession"]

_EXTRA = "onnxruntime"
_NAME = "onnxruntime"


def _onnx_specs(values: Any) -> list[TensorSpec]:
    from onnx.helper import tensor_dtype_to_np_dtype

    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim)
        specs.append(TensorSpec(v.name, shape, str(np.dtype(tensor_dtype_to_np_dtype(t.elem_type)))))
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


class OnnxRuntimeSession:
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

    def run(self, feeds: list[np.ndarray], *, allow_nonfinite: bool = False
            ) -> list[np.ndarray]:
        """Feeds in model order (numpy arrays or torch tensors; see :class:`FeedChecker`).
        NaN/inf inputs raise DataError unless ``allow_nonfinite``; a failing node (e.g. one
        that allocates terabytes) raises :class:`ModelRunError` naming it."""
        arrays = self._check(feeds, allow_nonfinite=allow_nonfinite)
        try:
            return self._sess.run(self._out_names, dict(zip(self._in_names, arrays)))
        except Exception as exc:  # onnxruntime's Fail/RuntimeException, MemoryError
            raise run_failure(_NAME, exc, self._path) from exc


class OnnxRuntimeBackend:
    """fp32 ONNX + onnxruntime (CPU execution provider)."""

    name = _NAME
    extra = _EXTRA
    file_suffix = ".onnx"

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
                raise export_failure(_NAME, model, example_inputs, exc) from exc
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
                "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                              None),
                "export_seconds": round(time.perf_counter() - t0, 3),
                "exporter": "torch.onnx.export(dynamo=True)",
            },
        )

    def export_int8(
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
    ) -> Artifact:
        """QDQ int8 ONNX: the fp32 export, then ``quantize_static`` (see edgekit.quantize.onnx)."""
        import tempfile

        from ..quantize.onnx import quantize_onnx

        check_protobuf_size(model, _NAME, external_data=False,
                            what="the int8 path (onnxruntime quantization) writes one "
                            "self-contained .onnx file")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = self.export(model, example_inputs, Path(tmp), input_names=input_names,
                               output_names=output_names, options=options)
            fp32_size = fp32.size_bytes
            path = out_dir / "model.onnx"
            try:
                qinfo = quantize_onnx(fp32.path, path, input_names=list(input_names),
                                      batches=calibration, config=config, keep_float=keep_float)
            except Exception as exc:
                raise ExportError(f"onnxruntime.quantization failed: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}",
                                  backend=_NAME) from exc
            info = dict(fp32.info)
        proto = check_onnx_file(path)
        init_names = {i.name for i in proto.graph.initializer}
        info.update({"quantization": qinfo, "fp32_size_bytes": fp32_size,
                     "export_seconds": round(time.perf_counter() - t0, 3)})
        return Artifact(
            backend=_NAME, root=out_dir, files=list_files(out_dir, path.name),
            inputs=_onnx_specs(i for i in proto.graph.input if i.name not in init_names),
            outputs=_onnx_specs(proto.graph.output), precision="int8", info=info,
        )

    def load(self, artifact: Artifact, *, threads: int, options: dict[str, Any]) -> OnnxRuntimeSession:
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
