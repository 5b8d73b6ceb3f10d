"""OpenVINO IR (``openvino.convert_model`` straight from PyTorch) run on the CPU plugin.

The CPU plugin runs "fp32" models in bf16 on CPUs with AVX512_BF16 unless told otherwise, so
``load`` always sets ``INFERENCE_PRECISION_HINT`` (default ``"f32"``) and records in
``Session.info["precision"]`` the precision the compiled model reports.

Example::

    be = OpenVinoBackend()
    art = be.export(model, (x,), out_dir, input_names=["x"], output_names=["y"], options={})
    sess = be.load(art, threads=2, options={"inference_precision": "f32"})
    (y,) = sess.run([x.numpy()])
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._deps import require
from ..errors import BundleError, ExportError, ModelRunError, UsageError
from ..fsio import check_not_sparse, regular_file
from ..modelfile import MAX_MODEL_BYTES
from ._common import (
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
    list_files,
    missing_modules,
    package_versions,
    run_failure,
)
from .base import Artifact, TensorSpec

__all__ = ["OpenVinoBackend", "OpenVinoSession"]

_EXTRA = "openvino"
_NAME = "openvino"

#: Names OpenVINO makes up for unnamed nodes: "<type>_<process-wide instance counter>".
_AUTO_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_\d+$")


def _normalise_names(om: Any) -> None:
    """Make the saved IR independent of what ran earlier in the process.

    OpenVINO names unnamed nodes ``<Type>_<N>`` and models ``Model<N>`` from process-wide
    counters, so the second export of the same model in one process wrote a different .xml.
    Renumber those names by topological position and give the model a fixed name.
    """
    om.set_friendly_name("edgekit_model")
    for index, op in enumerate(om.get_ordered_ops()):
        match = _AUTO_NAME.match(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match.group(1)}_{index}")
_PRECISIONS = ("f32", "bf16", "f16")


def _port_specs(ports: Any, names: list[str] | None = None) -> list[TensorSpec]:
    specs = []
    for i, p in enumerate(ports):
        ps = p.get_partial_shape()
        shape = tuple(d.get_length() if d.is_static else -1 for d in ps)
        tensor_names = p.get_names()
        if names is not None:
            name = names[i]
        else:
            name = p.get_any_name() if tensor_names else f"output_{i}"
        specs.append(TensorSpec(name, shape, str(np.dtype(p.get_element_type().to_dtype()))))
    return specs


#: Bits per element of the IR's element types (string and dynamic types are not checked).
_ELEMENT_BITS = {
    "f64": 64, "f32": 32, "f16": 16, "bf16": 16, "f8e4m3": 8, "f8e5m2": 8, "f8e8m0": 8,
    "f4e2m1": 4, "nf4": 4, "i64": 64, "i32": 32, "i16": 16, "i8": 8, "i4": 4, "u64": 64,
    "u32": 32, "u16": 16, "u8": 8, "u6": 6, "u4": 4, "u3": 3, "u2": 2, "u1": 1, "boolean": 8,
}


def _check_const(xml_path: Path, layer: Any, attrib: dict[str, str], size: int) -> None:
    """BundleError naming the layer and the file when a Const's declared element type and
    shape do not add up to its byte size in the .bin (OpenVINO only says "inconsistent")."""
    bits = _ELEMENT_BITS.get(attrib.get("element_type", ""))
    shape_text = attrib.get("shape")
    if bits is None or shape_text is None:
        return
    try:
        dims = [int(d) for d in shape_text.split(",") if d.strip()]
    except ValueError as exc:
        raise bad_file(xml_path, f"OpenVINO IR .xml file (Const layer {layer.get('name')!r} "
                       f"has shape {shape_text!r})", exc) from exc
    count = 1
    for d in dims:
        if d < 0:
            raise bad_file(xml_path, f"OpenVINO IR .xml file (Const layer {layer.get('name')!r} "
                           f"has a negative dimension in shape [{shape_text}])")
        count *= d
    want = (count * bits + 7) // 8
    if want != size:
        raise BundleError(
            f"{xml_path}: Const layer {layer.get('name')!r} (id {layer.get('id')}) declares "
            f"{attrib.get('element_type')} of shape [{shape_text}] ({want} bytes) but holds "
            f"{size} bytes in {xml_path.with_suffix('.bin').name}",
            hint="the IR was edited or its .xml and .bin do not belong together; export again")


def _largest_op(model: Any) -> tuple[str, str] | None:
    """(type, name) of the op whose static output is the largest, else of the first op whose
    output size depends on values (Range, Broadcast, Tile...): where an allocation failure most
    likely happened, for runtimes that do not say."""
    best, best_bytes, dynamic = None, 0, None
    try:
        for op in model.get_ordered_ops():
            for out in op.outputs():
                ps = out.get_partial_shape()
                if ps.is_static:
                    n = out.get_element_type().size
                    for d in ps.to_shape():
                        n *= int(d)
                    if n > best_bytes:
                        best, best_bytes = (op.get_type_name(), op.get_friendly_name()), n
                elif dynamic is None and op.get_type_name() in ("Range", "Broadcast", "Tile"):
                    dynamic = (op.get_type_name(), op.get_friendly_name())
    except Exception:  # the model cannot be walked: name no node
        return None
    return best if best is not None and best_bytes >= 2**30 else dynamic or best


def _recurrent(model: torch.nn.Module) -> bool:
    """Whether ``model`` has LSTM/GRU/RNN layers (NNCF's "auto" preset is MIXED for them)."""
    recurrent = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)
    return any(isinstance(m, recurrent) for name, m in model.named_modules() if name)


def _ov_devices() -> list[str]:
    try:
        import openvino as ov
    except ImportError:
        return []
    return list(ov.Core().available_devices)


def check_ir_files(xml_path: Path) -> Path:
    """Check an IR pair cheaply: XML parses, .bin exists and holds every constant the XML
    points at. Returns the .bin path; raises BundleError naming the bad file."""
    from ..modelfile import parse_ir_xml

    root = parse_ir_xml(xml_path)  # DTDs/entities refused; BundleError naming the file
    if root.tag != "net":
        raise bad_file(xml_path, f"OpenVINO IR .xml file (root element <{root.tag}>, not <net>)")
    bin_path = xml_path.with_suffix(".bin")
    if os.path.lexists(bin_path):  # OpenVINO opens it whatever the XML says: never a FIFO
        check_not_sparse(bin_path, regular_file(bin_path, "OpenVINO weights file",
                                                max_bytes=MAX_MODEL_BYTES),
                         "OpenVINO weights file")
    need = 0
    for layer in root.iter("layer"):
        data = layer.find("data")
        if data is not None and "offset" in data.attrib and "size" in data.attrib:
            try:
                offset, size = int(data.attrib["offset"]), int(data.attrib["size"])
            except ValueError as exc:
                raise bad_file(xml_path, "OpenVINO IR .xml file", exc) from exc
            if offset < 0 or size < 0:
                raise bad_file(xml_path, f"OpenVINO IR .xml file (layer {layer.get('name')!r} "
                               f"has offset {offset}, size {size})")
            need = max(need, offset + size)
            if layer.get("type") == "Const":
                _check_const(xml_path, layer, data.attrib, size)
    if need:
        if not bin_path.is_file():
            raise BundleError(
                f"{bin_path} is missing; {xml_path.name} needs its weights file",
                hint="keep model.xml and model.bin together",
            )
        have = bin_path.stat().st_size
        if have < need:
            raise BundleError(
                f"{bin_path} is {have} bytes but {xml_path.name} reads up to byte {need}",
                hint="the weights file is truncated or belongs to another model; export again",
            )
    return bin_path


#: OpenVINO's frames ("Exception from src/inference/src/cpp/core.cpp:117:"): where, not why.
_OV_FRAME = re.compile(r"^Exception from \S+:\d+:$")
#: The node a graph pass failed on ("While validating node 'X (...)' with friendly_name 'Y'").
_OV_PASS_NODE = re.compile(r"\[(\w+)\] END: node: (\w+::\w+) (\S+)")


def compile_failure(xml_path: Path, exc: BaseException) -> ModelRunError:
    """The CPU plugin refused an IR that reads as valid: its reason without OpenVINO's source
    frames, the graph pass and node where it says, and a hint that fits (the file is not
    corrupt: another realisation of the model is what can compile)."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    reason = " ".join(ln for ln in lines if ln and not _OV_FRAME.match(ln))
    reason = reason if len(reason) <= 500 else reason[:497] + "..."
    m = _OV_PASS_NODE.search(reason)
    where = f" (the {m.group(1)} pass, at {m.group(2)} {m.group(3)!r})" if m else ""
    return ModelRunError(
        f"{xml_path}: OpenVINO's CPU plugin could not compile this model{where}: {reason}",
        backend=_NAME, op=m.group(2) if m else None, node=m.group(3) if m else None,
        hint="the IR reads as valid; the plugin's own graph transformations failed on it. "
             "For an int8 build, build it from the other source (quantization "
             "openvino_source = \"nncf\" or \"qdq\") or with int8_scope = \"layers\"; else "
             "use the fp32 target, and report the model to OpenVINO")


class OpenVinoSession(CheckedSession):
    """A compiled OpenVINO model with one bound infer request.

    ``run`` copies the feeds into the request's own input tensors and calls ``infer()``
    (``request.infer([x])`` costs 50-80 us more per call); outputs are copied out.
    """

    backend = _NAME

    def __init__(self, compiled: Any, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 info: dict[str, Any], path: Path | None = None) -> None:
        self._compiled = compiled
        self._path = path
        self.inputs = inputs
        self.outputs = outputs
        self.info = info
        self._check = FeedChecker(inputs)
        self._req = compiled.create_infer_request()
        self._in_tensors = [self._req.get_input_tensor(i) for i in range(len(inputs))]
        self._in_views = [t.data for t in self._in_tensors]
        self._n_out = len(outputs)

    def _call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """NaN/inf inputs are refused by ``run`` (the CPU plugin would return finite outputs
        for them); a failing node raises :class:`ModelRunError` naming it."""
        for i, x in enumerate(arrays):
            view = self._in_views[i]
            if view.shape != x.shape:  # a dynamic input: the request's tensor takes x's shape
                self._in_tensors[i].shape = list(x.shape)
                view = self._in_views[i] = self._in_tensors[i].data
            np.copyto(view, x)
        req = self._req
        try:
            req.infer()
            return [req.get_output_tensor(i).data.copy() for i in range(self._n_out)]
        except Exception as exc:  # RuntimeError from the plugin, MemoryError
            raise run_failure(_NAME, exc, self._path,
                              guess=_largest_op(self._compiled.get_runtime_model())) from exc


#: ``artifact_info`` keys that say why an export took its second route (ONNX Runtime's
#: TorchScript exporter, OpenVINO's ONNX route).
_ROUTE_ERRORS = ("dynamo_error", "pytorch_frontend_error")


def _read_qdq(ov: Any, path: Path) -> tuple[Any, int]:
    """The QDQ model at ``path`` as OpenVINO reads it, with its repeated requantizations
    around layout ops removed first (:func:`.openvino_int8.drop_repeated_requantization`),
    and how many went."""
    import onnx

    from .openvino_int8 import drop_repeated_requantization

    proto = onnx.load(str(path))
    dropped = drop_repeated_requantization(proto)
    if dropped:
        path = path.with_name(path.stem + "-openvino.onnx")
        onnx.save(proto, str(path))
    return ov.Core().read_model(str(path)), dropped


class OpenVinoBackend:
    """fp32 OpenVINO IR on the CPU plugin."""

    name = _NAME
    extra = _EXTRA
    file_suffix = ".xml"
    qat_graph = False
    #: Profile ``[options]`` this backend reads (export: compress_to_fp16; load: the rest).
    options_schema: dict[str, Any] = {
        "inference_precision": _PRECISIONS, "compress_to_fp16": bool,
        "performance_hint": ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"),
    }

    def available(self) -> str | None:
        missing = missing_modules(["openvino"])
        if missing:
            return f"Python package(s) {', '.join(missing)} not installed"
        return None

    def versions(self) -> dict[str, str]:
        return package_versions(["openvino", "torch"])

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
        """Options: ``compress_to_fp16`` (default False: keep fp32 weights in model.bin)."""
        ov = require("openvino", backend=_NAME, extra=_EXTRA)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        xml_path = out_dir / "model.xml"
        example_inputs = tuple(example_inputs)
        t0 = time.perf_counter()
        with eval_mode(model):
            check_export_args(model, example_inputs, input_names, output_names)
            exporter, frontend_error, failure = "openvino.convert_model", None, None
            try:
                with torch.no_grad():
                    om = ov.convert_model(model, example_input=example_inputs)
            except Exception as exc:
                failure = export_failure(_NAME, model, example_inputs, exc)
            if failure is not None:  # outside the handler: the ONNX route's errors are its own
                om = self._convert_onnx(model, example_inputs, input_names, output_names,
                                        failure)
                exporter = "openvino.convert_model (the ONNX export: its PyTorch frontend failed)"
                frontend_error = failure.message
        if len(om.inputs) != len(input_names) or len(om.outputs) != len(output_names):
            raise ExportError(
                f"converted model has {len(om.inputs)} inputs and {len(om.outputs)} outputs, "
                f"expected {len(input_names)} and {len(output_names)}",
                backend=_NAME,
            )
        try:
            om.reshape(
                {om.inputs[i]: ov.PartialShape(list(x.shape)) for i, x in enumerate(example_inputs)}
            )
        except Exception as exc:
            raise ExportError(f"could not make the input shapes static: {first_line(exc)}",
                              backend=_NAME) from exc
        for port, name in zip(om.inputs, input_names):
            port.get_tensor().set_names({name})
        for port, name in zip(om.outputs, output_names):
            port.get_tensor().set_names({name})
        _normalise_names(om)
        ov.save_model(om, str(xml_path), compress_to_fp16=bool(options.get("compress_to_fp16",
                                                                               False)))
        try:
            check_ir_files(xml_path)
            saved = ov.Core().read_model(str(xml_path))
        except Exception as exc:
            raise ExportError(f"the saved IR does not read back: {first_line(exc)}",
                              backend=_NAME) from exc
        inputs = _port_specs(saved.inputs)
        outputs = _port_specs(saved.outputs)
        if [s.name for s in inputs] != list(input_names) or [s.name for s in outputs] != list(
            output_names
        ):
            raise ExportError(
                f"saved IR names {[s.name for s in inputs]} -> {[s.name for s in outputs]} "
                f"differ from the requested {list(input_names)} -> {list(output_names)}",
                backend=_NAME,
            )
        return Artifact(
            backend=_NAME,
            root=out_dir,
            files=list_files(out_dir, xml_path.name),
            inputs=inputs,
            outputs=outputs,
            precision="fp32",
            info={
                "weights": "f16" if options.get("compress_to_fp16") else "f32",
                "export_seconds": round(time.perf_counter() - t0, 3),
                "exporter": exporter,
                **({"pytorch_frontend_error": frontend_error} if frontend_error else {}),
            },
        )

    def _convert_onnx(self, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
                      input_names: list[str], output_names: list[str],
                      failure: ExportError) -> Any:
        """The model through its ONNX export, where OpenVINO's PyTorch frontend rejects it:
        Hugging Face decoders (GPT-2, Llama) fail there on the ``torch.cat`` of their key /
        value cache (an OpenVINO-internal list type reaches ``aten::cat``), while the ONNX
        exporter traces the same call. Raises ``failure`` (the frontend's error) when the
        ONNX route fails too, with that failure added."""
        ov = require("openvino", backend=_NAME, extra=_EXTRA)
        try:
            art = self._onnx_fp32(model, example_inputs, input_names, output_names)
            return ov.convert_model(str(art.root / art.files[0]))
        except Exception as exc:
            raise failure.extend(f" (through its ONNX export too: {first_line(exc)})") from exc

    def int8_available(self) -> str | None:
        return int8_needs(["nncf"])

    def _onnx_fp32(self, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
                   input_names: list[str], output_names: list[str]) -> Artifact:
        """The fp32 ONNX export the QDQ source quantizes, exported once per model (weights,
        input shapes and names) for the life of this backend object, so every QDQ attempt
        of one int8 build derives from the same file."""
        import hashlib
        import tempfile

        from .onnxruntime import OnnxRuntimeBackend

        digest = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        key = (digest.hexdigest(), tuple((tuple(x.shape), str(x.dtype)) for x in example_inputs),
               tuple(input_names), tuple(output_names))
        cache = self.__dict__.setdefault("_onnx_exports", {})
        if key not in cache:
            folder = self.__dict__.setdefault(
                "_onnx_folder", tempfile.TemporaryDirectory(prefix="edgekit-ov-qdq-"))
            out = Path(folder.name) / f"fp32-{len(cache)}"
            cache[key] = OnnxRuntimeBackend().export(
                model, example_inputs, out, input_names=list(input_names),
                output_names=list(output_names), options={})
        return cache[key]

    def _onnx_node_modules(self, model: torch.nn.Module,
                           example_inputs: tuple[torch.Tensor, ...], input_names: list[str],
                           output_names: list[str]) -> dict[str, str]:
        """ONNX node -> PyTorch module of the model's ONNX export (:meth:`_onnx_fp32`)."""
        import onnx

        from .onnxruntime_int8 import onnx_node_modules

        art = self._onnx_fp32(model, example_inputs, input_names, output_names)
        return onnx_node_modules(onnx.load(str(art.root / art.files[0]),
                                           load_external_data=False))

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
        """int8 IR: the fp32 IR (``fp32`` when given, else exported here) quantized by
        ``nncf.quantize`` (``config.openvino_source == "nncf"``, default) or the onnxruntime
        QDQ model read by OpenVINO (``"qdq"``)."""
        import tempfile

        from .openvino_int8 import openvino_precision_summary, quantize_openvino_model

        ov = require("openvino", backend=_NAME, extra=_EXTRA)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        xml_path = out_dir / "model.xml"
        t0 = time.perf_counter()
        onnx_nodes: dict[str, str] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if config.openvino_source == "qdq":
                from dataclasses import replace

                from .onnxruntime import OnnxRuntimeBackend

                # the correction is fitted on ONNX Runtime's arithmetic: on OpenVINO's it
                # lost (MobileNetV3-Large: 11.9 dB on ONNX Runtime, 9.3 on OpenVINO, one file)
                qdq = OnnxRuntimeBackend().quantize(
                    model, example_inputs, Path(tmp) / "qdq", input_names=input_names,
                    output_names=output_names, options={}, calibration=calibration,
                    config=replace(config, int8_bias_correction=False), keep_float=keep_float,
                    fp32=self._onnx_fp32(model, example_inputs, input_names, output_names))
                om, dropped = _read_qdq(ov, qdq.path)
                qinfo = {"quantizer": "onnxruntime quantize_static QDQ read by OpenVINO",
                         **{k: v for k, v in qdq.info["quantization"].items()
                            if k not in ("layers",)},
                         "onnx_layers": qdq.info["quantization"].get("layers", [])}
                qinfo["requantizations_dropped"] = dropped
                source = qdq.info
                if config.int8_bias_correction:
                    qinfo["int8_bias_correction"] = {
                        "applied": False, "skipped": "fitted on ONNX Runtime's int8 arithmetic, "
                        "which OpenVINO's kernels do not share (ONNX Runtime targets only)"}
            else:
                if fp32 is None:
                    fp32 = self.export(model, example_inputs, Path(tmp) / "fp32",
                                       input_names=input_names, output_names=output_names,
                                       options=options)
                om = ov.Core().read_model(str(check_artifact_backend(fp32, _NAME)))
                source = fp32.info
                if "pytorch_frontend_error" in source:  # read from the ONNX export: its ops
                    onnx_nodes = self._onnx_node_modules(  # are named after the ONNX nodes
                        model, example_inputs, input_names, output_names)
                try:
                    om, qinfo = quantize_openvino_model(om, batches=calibration, config=config,
                                                        keep_float=keep_float,
                                                        recurrent=_recurrent(model))
                except Exception as exc:
                    from ._calibration import calibration_failure

                    raise calibration_failure("OpenVINO (nncf.quantize)", calibration,
                                              input_names, exc) from exc
            for port, name in zip(om.inputs, input_names):
                port.get_tensor().set_names({name})
            for port, name in zip(om.outputs, output_names):
                port.get_tensor().set_names({name})
            _normalise_names(om)
            ov.save_model(om, str(xml_path), compress_to_fp16=False)
        check_ir_files(xml_path)
        saved = ov.Core().read_model(str(xml_path))
        onnx_modules = {r["node"]: r["module"]
                        for r in qinfo.pop("onnx_layers", [])} or onnx_nodes
        # what the IR executes; compiled in a child first: a crash there kills only the child
        qinfo.update(openvino_precision_summary(saved, onnx_modules, xml=xml_path))
        return Artifact(
            backend=_NAME, root=out_dir, files=list_files(out_dir, xml_path.name),
            inputs=_port_specs(saved.inputs, list(input_names)),
            outputs=_port_specs(saved.outputs, list(output_names)),
            precision="int8",
            info={"weights": "int8", "quantization": qinfo,
                  "export_seconds": round(time.perf_counter() - t0, 3),
                  # the route the float model took (and why, where the first route failed)
                  "exporter": f"{source.get('exporter', 'openvino.convert_model')} + "
                              f"{qinfo['quantizer']}",
                  **{k: source[k] for k in _ROUTE_ERRORS if k in source}},
        )

    def int8_sources(self, config: Any, model: torch.nn.Module | None = None
                     ) -> list[tuple[str, dict[str, Any]]]:
        """``openvino_source = "auto"``: NNCF on the IR and the ONNX Runtime QDQ model, both
        built and compared; otherwise the configured one. The QDQ model's ``int8_scope =
        "auto"``: for a model with a layer norm, both scopes
        (:func:`edgekit.backends._int8_scope.scope_sources`)."""
        from ._int8_scope import scope_sources

        qdq = [(n, {"openvino_source": "qdq", **c})
               for n, c in scope_sources("ONNX Runtime QDQ", config, model)]
        if config.openvino_source == "auto":
            return [("NNCF", {"openvino_source": "nncf"}), *qdq]
        return qdq if config.openvino_source == "qdq" else [("NNCF", {})]

    def int8_alternatives(self, config: Any, model: torch.nn.Module, *,
                          sources_compared: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The other source (NNCF <-> ONNX Runtime QDQ; from NNCF, also the QDQ source with
        Q/DQ on layer inputs only where the model has a layer norm), then the other NNCF
        preset (NNCF) or per-tensor ranges chosen by error and the other activation type
        (QDQ); with ``sources_compared`` none that only switches the source."""
        from ._int8_scope import int8_scope_alternative
        from ._ranges import error_ranges_alternative

        act = "int8" if config.activation_type == "int8" else "uint8"
        other_act = "uint8" if act == "int8" else "int8"
        preset = config.preset if config.preset != "auto" else (
            "mixed" if _recurrent(model) else "performance")
        other_preset = "performance" if preset == "mixed" else "mixed"
        if config.openvino_source == "nncf":
            alts = [("ONNX Runtime QDQ source", {"openvino_source": "qdq"}),
                    *[(f"ONNX Runtime QDQ source, {label}", {"openvino_source": "qdq", **c})
                      for label, c in int8_scope_alternative(config, model)],
                    (f"NNCF {other_preset} preset", {"preset": other_preset})]
        else:
            alts = [("NNCF source", {"openvino_source": "nncf", "preset": "auto"}),
                    *[(f"QDQ {label}", c) for label, c in (
                        int8_scope_alternative(config, model)
                        + error_ranges_alternative(config))],
                    (f"QDQ {other_act} activations", {"activation_type": other_act})]
        # with the sources compared, a plain switch of source is no longer new
        return [a for a in alts if not (sources_compared and "openvino_source" in a[1]
                                        and "int8_scope" not in a[1])]

    def inspect(self, path: Path) -> Artifact:
        """A lone IR ``.xml`` (with its ``.bin``); int8 when it holds FakeQuantize ops."""
        ov = require("openvino", backend=_NAME, extra=_EXTRA)
        path = Path(path)
        bin_path = check_ir_files(path)
        try:
            model = ov.Core().read_model(str(path))
        except Exception as exc:
            raise bad_file(path, "OpenVINO IR", exc) from exc
        int8 = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        return Artifact(
            backend=_NAME, root=path.parent,
            files=[path.name] + ([bin_path.name] if bin_path.is_file() else []),
            inputs=_port_specs(model.inputs), outputs=_port_specs(model.outputs),
            precision="int8" if int8 else "fp32", info={"source": "file"})

    def check_file(self, path: Path) -> None:
        """XML parsed with DTDs refused, the .bin there and holding every constant."""
        from ..modelfile import check_format

        check_format(path, "openvino")
        check_ir_files(Path(path))

    def device_unavailable_reason(self, device: str) -> str | None:
        """gpu (and cuda): the OpenVINO GPU plugin."""
        if device == "cpu":
            return None
        if device not in ("gpu", "cuda"):
            return f"OpenVINO has no {device} path"
        devs = _ov_devices()
        if not any(d.startswith("GPU") for d in devs):
            return f"OpenVINO sees no GPU device (available: {', '.join(devs) or 'none'})"
        return None

    def load_on_device(self, artifact: Artifact, device: str, *, threads: int,
                       options: dict[str, Any]) -> OpenVinoSession:
        """The model compiled for the GPU plugin; refused when it executes anywhere else."""
        from ..errors import DeviceUnavailableError

        if device == "cpu":
            return self.load(artifact, threads=threads, options=options)
        reason = self.device_unavailable_reason(device)
        if reason:
            raise DeviceUnavailableError(f"{artifact.path}: cannot run on {device}: {reason}")
        ov = require("openvino", backend=_NAME, extra=_EXTRA)
        t0 = time.perf_counter()
        compiled = ov.Core().compile_model(str(artifact.path), "GPU",
                                           {"PERFORMANCE_HINT": "LATENCY"})
        devs = list(compiled.get_property("EXECUTION_DEVICES"))
        if not any(str(d).startswith("GPU") for d in devs):
            raise DeviceUnavailableError(f"OpenVINO executes on {devs}, not on a GPU")
        info = {"runtime": "openvino", "version": ov.get_version(), "device": "GPU",
                "execution_devices": devs, "precision": artifact.precision,
                "load_seconds": round(time.perf_counter() - t0, 3)}
        return OpenVinoSession(compiled, list(artifact.inputs), list(artifact.outputs), info)

    def import_runtime(self) -> None:
        require("openvino", backend=_NAME, extra=_EXTRA)

    def load(self, artifact: Artifact, *, threads: int, options: dict[str, Any]) -> OpenVinoSession:
        """Options: ``inference_precision`` ("f32" default, "bf16", "f16"),
        ``performance_hint`` ("LATENCY" default, "THROUGHPUT")."""
        ov = require("openvino", backend=_NAME, extra=_EXTRA)
        threads = check_threads(threads)
        xml_path = check_artifact_backend(artifact, _NAME)
        bin_path = check_ir_files(xml_path)
        precision = str(options.get("inference_precision", "f32"))
        if precision not in _PRECISIONS:
            raise UsageError(f"inference_precision {precision!r} is not one of {_PRECISIONS}")
        hint = str(options.get("performance_hint", "LATENCY"))
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": hint,
            "INFERENCE_PRECISION_HINT": precision,
        }
        t0 = time.perf_counter()
        core = ov.Core()
        try:
            model = core.read_model(str(xml_path), str(bin_path) if bin_path.is_file() else None)
        except Exception as exc:
            raise bad_file(xml_path, "OpenVINO IR", exc) from exc
        # Names come from the artifact (IR tensors may carry several names).
        names_in = [s.name for s in artifact.inputs]
        names_out = [s.name for s in artifact.outputs]
        if len(model.inputs) != len(names_in) or len(model.outputs) != len(names_out):
            raise BundleError(
                f"{xml_path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs, "
                f"but the artifact records {len(names_in)} and {len(names_out)}"
            )
        for port, name in zip(list(model.inputs) + list(model.outputs), names_in + names_out):
            if not port.get_names():  # an unnamed port: name it as inspect() did (output_0...)
                port.get_tensor().set_names({name})
            if name not in port.get_names():
                raise BundleError(f"{xml_path}: no tensor named {name!r} at its place "
                                  f"(found {sorted(port.get_names())})")
        try:
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            if isinstance(exc, MemoryError) or "alloc" in str(exc).lower():
                raise run_failure(_NAME, exc, xml_path, guess=_largest_op(model),
                                  stage="load") from exc
            raise compile_failure(xml_path, exc) from exc
        ran = compiled.get_property("INFERENCE_PRECISION_HINT")
        ran_name = ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran)
        info = {
            "runtime": "openvino",
            "version": ov.get_version(),
            "device": "CPU",
            "execution_devices": list(compiled.get_property("EXECUTION_DEVICES")),
            # Same vocabulary as the other backends (fp32, bf16, fp16); OpenVINO's own name too.
            "precision": (
                f"int8 (other ops {ran_name})" if artifact.precision == "int8"
                else {"f32": "fp32", "f16": "fp16"}.get(ran_name, ran_name)),
            "openvino_precision": ran_name,
            "requested_precision": precision,
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "load_seconds": round(time.perf_counter() - t0, 3),
        }
        inputs = _port_specs(compiled.inputs, names_in)
        outputs = _port_specs(compiled.outputs, names_out)
        return OpenVinoSession(compiled, inputs, outputs, info, xml_path)
