"""A real task: fixed train/val/test splits of real data plus the loss and the metric.

The metric is computed from numpy outputs, so PyTorch and every runtime are scored by the
same code on the same samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    """``inputs`` follow the model's input order; dim 0 of every tensor is the sample."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, n: int) -> Split:
        return Split(tuple(t[:n] for t in self.inputs), self.targets[:n])


@dataclass
class Task:
    """
    ``loss(outputs, targets, inputs)`` takes the model's raw outputs (a tensor or tuple) in train
    mode, the batch targets and the batch inputs (a tuple of tensors) and returns a scalar.
    ``score(outputs, targets, inputs)`` takes a list of numpy arrays (one per model output,
    stacked over samples), numpy targets and the list of numpy inputs, and returns the metric
    named ``metric``.
    ``kind`` is one of: classification, reconstruction, anomaly, embedding, generation.
    """

    name: str
    kind: str
    metric: str
    higher_is_better: bool
    train: Split
    val: Split
    test: Split
    loss: Callable[..., torch.Tensor]
    score: Callable[[Sequence[np.ndarray], np.ndarray, Sequence[np.ndarray]], float]
    num_classes: int | None = None
    description: str = ""

    def drop(self, reference: float, got: float) -> float:
        """How much of the metric ``got`` lost against ``reference`` (positive = worse)."""
        return (reference - got) if self.higher_is_better else (got - reference)
