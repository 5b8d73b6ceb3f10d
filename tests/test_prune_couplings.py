"""Couplings torch-pruning can get wrong: a conv feature map reshaped / flattened into a linear
layer, grouped and depthwise 1-D convs, concatenations. Each is pruned correctly (the pruned
model equals the original with the removed channels zeroed) or refused before anything
changes, naming the layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError
from edgekit.prune import prune


def _out_width(mod: nn.Module) -> int | None:
    return getattr(mod, "out_channels", getattr(mod, "out_features", None))


def zeroed_reference(original: nn.Module, history: dict) -> nn.Module:
    """``original`` with every channel a one-step prune removed zeroed at its producer (weights
    and bias), so it outputs zero there; without normalisation in between, the pruned model
    must compute exactly the same."""
    ref = copy.deepcopy(original)
    named = dict(ref.named_modules())
    with torch.no_grad():
        for g in history["groups"]:
            if g.get("kind") or g["dim"] != "out":
                continue
            width = _out_width(named[g["root"]])
            for name, kind in g["layers"]:
                mod = named[name]
                if kind == "out" and isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) \
                        and _out_width(mod) == width:
                    mod.weight[g["idxs"]] = 0
                    if mod.bias is not None:
                        mod.bias[g["idxs"]] = 0
    return ref


def check_equivalent(model_factory, x, **kw) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = model_factory().eval()
    original = copy.deepcopy(model)
    res = prune(model, x, ratio=0.5, **kw)
    assert res.history["groups"], "something was pruned"
    ref = zeroed_reference(original, res.history)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    assert not torch.allclose(ref(x), original(x))  # the check can fail
    return model, res.history


class Speech(nn.Module):
    """A speech front end: (batch, 1, freq, time) -> convs -> (batch, time, channels x freq)
    -> projection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.proj = nn.Linear(8 * 10, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv(x))))
        b, c, f, t = h.shape
        h = h.permute(0, 3, 1, 2).reshape(b, t, c * f)
        return self.head(torch.relu(self.proj(h)).mean(1))


def test_conv_reshaped_into_a_projection_is_refused_before_anything_changes():
    torch.manual_seed(0)
    model = Speech().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 1, 10, 6)
    with pytest.raises(ConfigError, match=r"channel 0 of 'conv2' reaches 10 inputs of linear "
                       r"layer 'proj'.*Nothing was pruned") as err:
        prune(model, x, ratio=0.5)
    assert "keep_layers=['conv2']" in str(err.value.hint)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.conv2.out_channels == 8 and model.proj.in_features == 80
    # following the hint, the rest prunes and is exact
    pruned, history = check_equivalent(Speech, x, keep_layers=["conv2"])
    assert pruned.conv.out_channels == 4 and pruned.conv2.out_channels == 8
    assert pruned.proj.out_features == 8


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.flatten(torch.relu(self.conv(x)), 1))))


def test_channel_major_flatten_into_linear_prunes_as_one_group():
    model, history = check_equivalent(Flat, torch.randn(2, 3, 4, 4))
    assert model.conv.out_channels == 4 and model.fc.in_features == 64
    assert any({"conv", "fc"} <= {n for n, _ in g["layers"]} for g in history["groups"])


class Conv1dStack(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 16, 3, padding=1)
        self.g = nn.Conv1d(16, 16, 3, padding=1, groups=groups)
        self.b = nn.Conv1d(16, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.g(torch.relu(self.a(x))))).mean(-1))


@pytest.mark.parametrize("groups", [4, 16])
def test_grouped_and_depthwise_conv1d_prune_exactly(groups):
    model, history = check_equivalent(lambda: Conv1dStack(groups), torch.randn(2, 4, 12))
    g = model.g
    assert g.in_channels % g.groups == 0 and g.out_channels % g.groups == 0
    assert model.a.out_channels == 8 and g.in_channels == 8
    if groups == 16:  # depthwise: one group with its input layer
        assert any({"a", "g"} <= {n for n, _ in rec["layers"]} for rec in history["groups"])


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 16, 3, padding=1)
        self.left = nn.Conv1d(16, 8, 1)
        self.right = nn.Conv1d(16, 6, 1)
        self.after = nn.Conv1d(14, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.cat([torch.relu(self.left(h)), torch.relu(self.right(h))], 1)
        return self.head(torch.relu(self.after(h)).mean(-1))


def test_concatenation_prunes_each_branch_at_its_offset():
    model, history = check_equivalent(Concat, torch.randn(2, 3, 10))
    assert model.left.out_channels == 4 and model.right.out_channels == 3
    assert model.after.in_channels == 7
