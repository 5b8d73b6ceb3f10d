"""Which models ``int8_scope = "auto"`` treats as having a layer norm (both scopes built)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.backends._int8_scope import has_layer_norm, scope_sources
from edgekit.quantize.config import QuantConfig


class _FunctionalNorm(nn.Module):
    """A block that normalizes with F.layer_norm on parameters of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.gain = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.layer_norm(x + 1, (8,), self.gain))


class _RMS(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.rms_norm(x, (8,)))


class _NamedAttribute(nn.Module):
    """An attribute called layer_norm that is not one: not a layer norm."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_norm = nn.Identity()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer_norm(x))


def test_layer_norm_modules_and_functional_calls_are_found():
    assert has_layer_norm(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)))
    assert has_layer_norm(nn.Sequential(nn.Linear(8, 8), nn.RMSNorm(8)))
    assert has_layer_norm(nn.Sequential(_FunctionalNorm()))
    assert has_layer_norm(_RMS())
    assert not has_layer_norm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    assert not has_layer_norm(_NamedAttribute())


def test_auto_builds_both_scopes_for_a_functional_norm():
    auto = QuantConfig.coerce({"int8_scope": "auto"})
    assert [c for _, c in scope_sources("qdq", auto, _FunctionalNorm())] == [
        {"int8_scope": "all"}, {"int8_scope": "layers"}]
    assert scope_sources("qdq", auto, _NamedAttribute()) == [("qdq", {})]
