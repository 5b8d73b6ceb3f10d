"""Reliability case 10: pruning keeps coupled layers consistent (residual adds,
concatenations, grouped convolutions) and refuses a target that would empty a layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.errors import (
    ConfigError,
)

from reliability_helpers import rel

# =========================================================================== case 10


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head((h + torch.relu(self.res(h))).mean((2, 3)))


class _Concat(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 8, 1)
        self.after = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.cat([self.left(h), self.right(h)], 1)
        return self.head(torch.relu(self.after(h)).mean((2, 3)))


class _Grouped(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        self.pw = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(self.pw(self.grouped(h))).mean((2, 3)))


COUPLINGS = {
    "residual": (_Residual, {"stem", "res"}),
    "concat": (_Concat, {"stem", "left", "right"}),
    "grouped-conv": (lambda: _Grouped(4), {"stem", "grouped"}),
    "depthwise-conv": (lambda: _Grouped(16), {"stem", "grouped", "pw"}),
}


@rel(case=10, behaviour="pruning across a residual add, a concatenation, a grouped or a "
     "depthwise conv: the coupled layers are pruned as one group, recorded by name in the "
     "history, and the model still runs")
@pytest.mark.parametrize("coupling", sorted(COUPLINGS))
def test_pruning_keeps_couplings_and_names_groups(coupling):
    from edgekit.prune import prune

    factory, coupled = COUPLINGS[coupling]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, 3, 8, 8)
    res = prune(model, (x,), ratio=0.5)
    assert model(x).shape == (1, 5)
    groups = res.history["groups"] if isinstance(res.history, dict) else res.history
    names = [{layer for layer, _ in g["layers"]} for g in groups]
    assert any(coupled <= n for n in names), names
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0


@rel(case=10, behaviour="a pruning target that would empty a layer or prunes nothing: "
     "ConfigError saying so, model untouched")
def test_pruning_that_would_empty_layers_is_refused():
    from edgekit.prune import prune

    tiny = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.raises(ConfigError, match="prunes nothing"):
        prune(tiny, (torch.randn(1, 4),), ratio=0.5, round_to=8)
    assert tiny[0].out_features == 8


@rel(case=10, behaviour="a concatenation feeding a grouped conv (which torch-pruning would "
     "mis-index) is refused before anything is pruned: ConfigError naming the concatenated "
     "layers and the grouped conv, with the keep_layers that avoid it")
def test_pruning_concat_into_grouped_conv_names_the_group():
    from edgekit.prune import prune

    torch.manual_seed(0)
    model = _Concat(groups=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"\['left', 'right'\] feeds grouped convolution "
                       r"'after' \(groups=4\)") as err:
        prune(model, (torch.randn(1, 3, 8, 8),), ratio=0.5)
    assert "keep_layers=['left', 'right', 'after']" in str(err.value.hint)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was pruned
    res = prune(model, (torch.randn(1, 3, 8, 8),), ratio=0.5,
                keep_layers=["left", "right", "after"])
    assert res.macs_after < res.macs_before and model(torch.randn(2, 3, 8, 8)).shape == (2, 5)
