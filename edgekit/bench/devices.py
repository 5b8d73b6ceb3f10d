"""Where a benchmark runs: CPU, or a GPU through the runtime's own GPU path.

Every GPU path sits behind an availability check. Asking for a GPU that is not there gives a
clear reason (and :class:`DeviceUnavailableError`, exit 2, when nothing can run on it); a
session that would silently fall back to the CPU is refused, so CPU numbers are never
reported as GPU numbers.
"""

from __future__ import annotations

import time
from typing import Any

from ..backends import Artifact, TensorSpec
from ..errors import UsageError

__all__ = ["DEVICES", "DeviceUnavailableError", "gpu_unavailable_reason", "load_on_device",
           "torch_cuda_reason"]

#: cpu: every runtime's CPU path. cuda: onnxruntime CUDA EP, PyTorch CUDA.
#: tensorrt: onnxruntime TensorRT EP. gpu: OpenVINO GPU plugin (and the cuda paths).
DEVICES = ("cpu", "cuda", "tensorrt", "gpu")


class DeviceUnavailableError(UsageError):
    """The requested device is not present for any artifact of the run."""


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def _ov_devices() -> list[str]:
    try:
        import openvino as ov
    except ImportError:
        return []
    return list(ov.Core().available_devices)


def torch_cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return f"torch.cuda.is_available() is False (torch {torch.__version__})"
    return None


def gpu_unavailable_reason(backend: str, device: str) -> str | None:
    """None when ``backend`` can run on ``device`` here, else why not (one line)."""
    if device == "cpu":
        return None
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}", hint=f"choose one of {', '.join(DEVICES)}")
    if backend == "onnxruntime":
        provs = _ort_providers()
        need = "TensorrtExecutionProvider" if device == "tensorrt" else "CUDAExecutionProvider"
        if need not in provs:
            return (f"onnxruntime has no {need} (available: {', '.join(provs) or 'none'}); "
                    "install onnxruntime-gpu on a machine with an NVIDIA GPU")
        return None
    if backend == "openvino":
        if device == "tensorrt":
            return "OpenVINO has no TensorRT path"
        devs = _ov_devices()
        if not any(d.startswith("GPU") for d in devs):
            return (f"OpenVINO sees no GPU device (available: {', '.join(devs) or 'none'})")
        return None
    if backend == "pytorch":
        if device == "tensorrt":
            return "PyTorch reference has no TensorRT path"
        return torch_cuda_reason()
    if backend == "tflite":
        return "the LiteRT GPU delegate is not wired into edgekit's harness (CPU only)"
    return f"backend {backend} has no {device} path"


def load_on_device(artifact: Artifact, device: str, *, threads: int,
                   options: dict[str, Any]) -> Any:
    """Load ``artifact`` on a GPU ``device``; raises if the runtime would fall back to the CPU."""
    reason = gpu_unavailable_reason(artifact.backend, device)
    if reason:
        raise DeviceUnavailableError(f"{artifact.path}: cannot run on {device}: {reason}")
    if artifact.backend == "onnxruntime":
        import onnxruntime as ort

        from ..backends.onnxruntime import OnnxRuntimeSession

        want = "TensorrtExecutionProvider" if device == "tensorrt" else "CUDAExecutionProvider"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
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
    if artifact.backend == "openvino":
        import openvino as ov

        from ..backends.openvino import OpenVinoSession

        core = ov.Core()
        t0 = time.perf_counter()
        compiled = core.compile_model(str(artifact.path), "GPU", {"PERFORMANCE_HINT": "LATENCY"})
        devs = list(compiled.get_property("EXECUTION_DEVICES"))
        if not any(str(d).startswith("GPU") for d in devs):
            raise DeviceUnavailableError(f"OpenVINO executes on {devs}, not on a GPU")
        info = {"runtime": "openvino", "version": ov.get_version(), "device": "GPU",
                "execution_devices": devs, "precision": artifact.precision,
                "load_seconds": round(time.perf_counter() - t0, 3)}
        return OpenVinoSession(compiled, list(artifact.inputs), list(artifact.outputs), info)
    raise DeviceUnavailableError(f"backend {artifact.backend} has no {device} path")


def torch_session(model: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                  device: str, threads: int) -> Any:
    """A PyTorch reference session on the CPU or (``cuda``/``gpu``) a CUDA GPU."""
    from .reference import TorchSession

    if device == "cpu":
        return TorchSession(model, inputs, outputs, threads=threads)
    reason = gpu_unavailable_reason("pytorch", device)
    if reason:
        raise DeviceUnavailableError(f"PyTorch cannot run on {device}: {reason}")
    return CudaTorchSession(model, inputs, outputs, threads=threads)


class CudaTorchSession:
    """Eager PyTorch on CUDA; ``run`` copies outputs back to numpy (which synchronises)."""

    backend = "pytorch"

    def __init__(self, model: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 threads: int) -> None:
        import torch

        self.model = model.eval().to("cuda")
        self.inputs, self.outputs = inputs, outputs
        self.info = {"precision": "f32", "threads": threads, "device": "CUDA",
                     "runtime": f"torch {torch.__version__}",
                     "gpu": torch.cuda.get_device_name(0)}

    def run(self, feeds: list[Any]) -> list[Any]:
        import numpy as np
        import torch

        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(np.asarray(f)).to("cuda") for f in feeds))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.cpu().numpy() for o in outs]
