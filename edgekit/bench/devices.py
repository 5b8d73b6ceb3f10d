"""Where a benchmark runs: CPU, or a GPU through the runtime's own GPU path.

Every GPU path sits behind an availability check. Asking for a GPU that is not there gives a
clear reason (and :class:`DeviceUnavailableError`, exit 2, when nothing can run on it); a
session that would silently fall back to the CPU is refused, so CPU numbers are never
reported as GPU numbers.
"""

from __future__ import annotations

from typing import Any

from ..backends import Artifact, Session, TensorSpec, get_backend
from ..errors import DeviceUnavailableError, UsageError

__all__ = ["DEVICES", "DeviceUnavailableError", "gpu_unavailable_reason", "load_on_device",
           "torch_cuda_reason"]

#: cpu: every runtime's CPU path. cuda: onnxruntime CUDA EP, PyTorch CUDA.
#: tensorrt: onnxruntime TensorRT EP. gpu: OpenVINO GPU plugin (and the cuda paths).
DEVICES = ("cpu", "cuda", "tensorrt", "gpu")
#: The name the PyTorch reference runs under (not a registered backend).
_PYTORCH = "pytorch"


def torch_cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return f"torch.cuda.is_available() is False (torch {torch.__version__})"
    return None


def gpu_unavailable_reason(backend: str, device: str) -> str | None:
    """None when ``backend`` (a registered backend, or "pytorch" for the reference) can run
    on ``device`` here, else why not (one line)."""
    if device == "cpu":
        return None
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}", hint=f"choose one of {', '.join(DEVICES)}")
    if backend == _PYTORCH:
        if device == "tensorrt":
            return "PyTorch reference has no TensorRT path"
        return torch_cuda_reason()
    return get_backend(backend).device_unavailable_reason(device)


def load_on_device(artifact: Artifact, device: str, *, threads: int,
                   options: dict[str, Any]) -> Session:
    """Load ``artifact`` on a GPU ``device``; raises if the runtime would fall back to the CPU."""
    reason = gpu_unavailable_reason(artifact.backend, device)
    if reason:
        raise DeviceUnavailableError(f"{artifact.path}: cannot run on {device}: {reason}")
    return get_backend(artifact.backend).load_on_device(artifact, device, threads=threads,
                                                        options=options)


def torch_session(model: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                  device: str, threads: int) -> Any:
    """A PyTorch reference session on the CPU or (``cuda``/``gpu``) a CUDA GPU."""
    from .reference import TorchSession

    if device == "cpu":
        return TorchSession(model, inputs, outputs, threads=threads)
    reason = gpu_unavailable_reason(_PYTORCH, device)
    if reason:
        raise DeviceUnavailableError(f"PyTorch cannot run on {device}: {reason}")
    return CudaTorchSession(model, inputs, outputs, threads=threads)


class CudaTorchSession:
    """Eager PyTorch on CUDA, on a copy of the model (the caller's stays where it is);
    ``run`` copies outputs back to numpy (which synchronises)."""

    backend = "pytorch"

    def __init__(self, model: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 threads: int) -> None:
        import copy

        import torch

        self.model = copy.deepcopy(model).eval().to("cuda")
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
