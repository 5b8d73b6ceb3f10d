"""What a user gets from each runtime's own default flow, done the way its documentation shows,
so edgekit's artifacts can be measured beside it on the same model and data.

* ONNX Runtime int8: fp32 ONNX -> ``quant_pre_process`` -> ``quantize_static(QDQ,
  per_channel=True)``, all else default (int8 activations, MinMax).
* OpenVINO fp32: ``convert_model(model, example_input=x)`` (input shape left dynamic),
  compiled with only the thread count set (the CPU plugin then picks its own precision: bf16
  on CPUs with AMX/AVX-512 BF16).
* OpenVINO int8: the same model -> ``nncf.quantize`` defaults, compiled the same way.
* LiteRT int8: PT2E with litert-torch's symmetric per-channel quantizer (min-max observers).
* LiteRT and ONNX Runtime fp32: the runtimes' default converters (``litert_torch.convert``,
  ``torch.onnx.export(dynamo=True)``) are the calls edgekit makes, so their fp32 files are
  edgekit's fp32 files.
* Structured pruning: torch-pruning's MetaPruner, L2 magnitude, ``pruning_ratio=0.5``, only the
  classifier ignored, then a plain fine-tune (no distillation).

Every flow is calibrated on the same samples (the first ``n`` of the validation split).
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.backends import Artifact, TensorSpec, get_backend


def calibration_batches(task: Any, n: int = 300) -> list[list[np.ndarray]]:
    split = task.val
    n = min(n, len(split))
    return [[t[i:i + 1].numpy() for t in split.inputs] for i in range(n)]


def ort_int8(fp32_onnx: Path, out_dir: Path, calib: list[list[np.ndarray]],
             input_names: list[str], artifact_in: list[TensorSpec],
             artifact_out: list[TensorSpec], threads: int) -> tuple[Any, int]:
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_dir.mkdir(parents=True, exist_ok=True)
    pre, q = out_dir / "pre.onnx", out_dir / "model.onnx"
    try:  # the pre-processing step onnxruntime's documentation asks for before quantize_static
        quant_pre_process(str(fp32_onnx), str(pre))
    except Exception as exc:
        where = " <- ".join(f.name for f in reversed(traceback.extract_tb(exc.__traceback__)[-2:]))
        raise RuntimeError(f"onnxruntime's quant_pre_process failed in {where}: "
                           f"{type(exc).__name__}: {exc}") from exc

    class Reader:
        def __init__(self) -> None:
            self.it = iter([dict(zip(input_names, c)) for c in calib])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    pre.unlink()
    art = Artifact("onnxruntime", out_dir, ["model.onnx"], list(artifact_in), list(artifact_out),
                   "int8")
    return get_backend("onnxruntime").load(art, threads=threads, options={}), q.stat().st_size


class OpenVinoDefaultSession:
    """An OpenVINO model compiled the default way (only the thread count set), fed with
    ``set_input_tensor`` + ``infer()`` so it works with the dynamic shape convert_model leaves."""

    backend = "openvino"

    def __init__(self, model: Any, threads: int, inputs: list[TensorSpec],
                 outputs: list[TensorSpec], int8: bool) -> None:
        import openvino as ov

        self._ov = ov
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
        ran = compiled.get_property("INFERENCE_PRECISION_HINT")
        ran = ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran)
        ran = {"f32": "fp32", "f16": "fp16"}.get(ran, ran)
        self.inputs, self.outputs = inputs, outputs
        self.info = {"runtime": "openvino", "precision": f"int8 (other ops {ran})" if int8
                     else ran, "threads": threads, "flow": "defaults"}
        self._req = compiled.create_infer_request()
        self._n_out = len(outputs)

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        for i, x in enumerate(feeds):
            self._req.set_input_tensor(i, self._ov.Tensor(np.ascontiguousarray(x)))
        self._req.infer()
        return [self._req.get_output_tensor(i).data.copy() for i in range(self._n_out)]


def _ov_model(model: torch.nn.Module, x: tuple[torch.Tensor, ...]) -> Any:
    import openvino as ov

    with torch.no_grad():
        return ov.convert_model(copy.deepcopy(model).eval(), example_input=x)


def openvino_fp32(model: torch.nn.Module, x: tuple[torch.Tensor, ...], out_dir: Path,
                  inputs: list[TensorSpec], outputs: list[TensorSpec],
                  threads: int) -> tuple[Any, int]:
    import openvino as ov

    om = _ov_model(model, x)
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(om, str(out_dir / "model.xml"))  # default: weights compressed to fp16
    sess = OpenVinoDefaultSession(om, threads, inputs, outputs, int8=False)
    return sess, (out_dir / "model.bin").stat().st_size


def openvino_int8(model: torch.nn.Module, x: tuple[torch.Tensor, ...], out_dir: Path,
                  calib: list[list[np.ndarray]], inputs: list[TensorSpec],
                  outputs: list[TensorSpec], threads: int) -> tuple[Any, int]:
    import nncf
    import openvino as ov

    om = _ov_model(model, x)
    data = [c if len(c) > 1 else c[0] for c in calib]
    qm = nncf.quantize(om, nncf.Dataset(data))
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(qm, str(out_dir / "model.xml"))
    sess = OpenVinoDefaultSession(qm, threads, inputs, outputs, int8=True)
    return sess, (out_dir / "model.bin").stat().st_size


def tflite_int8(model: torch.nn.Module, x: tuple[torch.Tensor, ...], out_dir: Path,
                calib: list[list[np.ndarray]], input_names: list[str],
                output_names: list[str], threads: int) -> tuple[Any, int]:
    from edgekit.quantize.config import QuantConfig

    be = get_backend("tflite")
    art = be.quantize(model, x, out_dir, input_names=list(input_names),
                      output_names=list(output_names), options={}, calibration=calib,
                      # litert-torch's own scale clamp (2**-12), as its default flow has it,
                      # and its graph as torch.export gives it (edgekit's rewrites off)
                      config=QuantConfig(io="float", fallback=False, scale_floor="off",
                                         integer_ops=False))
    return be.load(art, threads=threads, options={"io": "float"}), art.size_bytes


#: the folder under ``tmp`` where :func:`default_int8_flows` writes each runtime's file
DEFAULT_DIRS = {"onnxruntime": "native-ort", "openvino": "native-ov", "tflite": "native-tfl"}


def default_int8_flows(model: torch.nn.Module, x: tuple[torch.Tensor, ...],
                       input_names: list[str], output_names: list[str],
                       calib: list[list[np.ndarray]], tmp: Path,
                       threads: int = 1) -> dict[str, Callable[[], Any]]:
    """Per runtime, a call that builds its own default int8 flow on ``model`` and returns a
    session (the ONNX Runtime one from edgekit's fp32 ONNX export, as a user would hand it)."""
    fp32: list[Artifact] = []

    def onnx() -> Artifact:
        if not fp32:
            fp32.append(get_backend("onnxruntime").export(
                model, x, tmp / "native-fp32", input_names=input_names,
                output_names=output_names, options={}))
        return fp32[0]

    d = {rt: tmp / name for rt, name in DEFAULT_DIRS.items()}
    return {
        "onnxruntime": lambda: ort_int8(onnx().path, d["onnxruntime"], calib, input_names,
                                        onnx().inputs, onnx().outputs, threads)[0],
        "openvino": lambda: openvino_int8(model, x, d["openvino"], calib, onnx().inputs,
                                          onnx().outputs, threads)[0],
        "tflite": lambda: tflite_int8(model, x, d["tflite"], calib, input_names,
                                      output_names, threads)[0]}


def precision_summary(runtime: str, folder: Path) -> dict[str, Any]:
    """The runtime's precision summary (``layers``, ``float_ops``...) of the int8 file in
    ``folder``, read back as edgekit reads its own (ONNX Runtime and OpenVINO: the ops on
    float data as the runtime executes them)."""
    if runtime == "onnxruntime":
        from edgekit.backends.onnxruntime_int8 import onnx_precision_summary

        return onnx_precision_summary(next(folder.rglob("*.onnx")))
    if runtime == "openvino":
        import openvino as ov

        from edgekit.backends.openvino_int8 import openvino_precision_summary

        return openvino_precision_summary(ov.Core().read_model(str(next(folder.rglob("*.xml")))))
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.backends.tflite_int8 import tflite_precision_summary

    return tflite_precision_summary(Interpreter(model_path=str(next(folder.rglob("*.tflite")))))


def default_layer_precisions(runtime: str, tmp: Path) -> dict[str, int]:
    """Compute layers per precision of the file :func:`default_int8_flows` wrote for
    ``runtime`` under ``tmp`` (a default flow may leave layers in float: NNCF's
    squeeze-excitation pattern), and its other ops on float data (``float ops``: adds, gates
    and poolings its quantizer left between a dequantize and a quantize)."""
    from collections import Counter

    summary = precision_summary(runtime, tmp / DEFAULT_DIRS[runtime])
    out = dict(Counter(str(r["precision"]) for r in summary["layers"]))
    if float_ops := sum((summary.get("float_ops") or {}).values()):
        out["float ops"] = float_ops
    return out


def torch_pruning_by_hand(model: torch.nn.Module, x: tuple[torch.Tensor, ...], task: Any, *,
                          ratio: float = 0.5, epochs: int = 3) -> dict[str, Any]:
    """MetaPruner(L2, ratio) ignoring only the output layer(s), then a plain fine-tune. Returns
    the pruned model (a copy) and its metric right after pruning and after fine-tuning."""
    import torch_pruning as tp

    from edgekit.models import output_layers
    from edgekit.models.zoo import count_macs
    from edgekit.train import evaluate, fit

    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(True)
    macs0 = count_macs(work, x)
    pruner = tp.pruner.MetaPruner(work, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=output_layers(work))
    pruner.step()
    after = evaluate(work, task.test, task)
    fit(work, task, epochs=epochs, seed=0, progress=False)
    return {"model": work.eval(), "macs": [macs0, count_macs(work, x)],
            "metric_after_prune": after, "metric_after_fine_tune": evaluate(work, task.test, task)}
