"""A MobileNetV3-style block shared by the integer-ops tests of each runtime."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    """Conv + Hardswish, a squeeze-excitation gate (mean, ReLU, Hardsigmoid), a functional
    hardswish, a residual add, a concatenation (``join``; TFLite has no int16 one) and a max
    pool."""

    def __init__(self, join: bool = True) -> None:
        super().__init__()
        self.join = join
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.f1 = nn.Conv2d(16, 8, 1)
        self.f2 = nn.Conv2d(8, 16, 1)
        self.gate = nn.Hardsigmoid()
        self.c2 = nn.Conv2d(16, 16, 1)
        self.c3 = nn.Conv2d(32 if join else 16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        g = self.gate(self.f2(torch.relu(self.f1(x.mean((2, 3), keepdim=True)))))
        y = nn.functional.hardswish(self.c2(x * g)) + x
        y = nn.functional.max_pool2d(torch.cat([y, x], 1) if self.join else y, 2)
        return self.fc(self.c3(y).mean((2, 3)))


def block(join: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return Block(join).eval()


def inputs(n: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((1, 3, 16, 16)).astype(np.float32)] for _ in range(n)]
