"""The PyTorch model itself as a Session, so it is timed and scored like every runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..backends import TensorSpec


class TorchSession:
    """Eager PyTorch on the CPU, with ``threads`` intra-op threads, in eval mode."""

    backend = "pytorch"

    def __init__(
        self,
        model: torch.nn.Module,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        *,
        threads: int = 2,
    ) -> None:
        self.model = model.eval()
        self.inputs = inputs
        self.outputs = outputs
        self.threads = threads
        self.info: dict[str, Any] = {
            "precision": "f32",
            "threads": threads,
            "device": "cpu",
            "runtime": f"torch {torch.__version__}",
        }

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(np.asarray(f)) for f in feeds))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in outs]
