"""All-or-nothing pruning: a failure anywhere leaves the caller's model as it was; third-party
errors become edgekit errors naming the layer; success keeps the caller's module objects."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from test_prune_couplings import zeroed_reference
from torch import nn

from edgekit.errors import NotSupportedError
from edgekit.prune import prune


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv(x)))).mean((2, 3))
        return self.head(torch.relu(self.fc(h)))


def _snapshot(model: nn.Module):
    return str(model), {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, snap) -> None:
    text, state = snap
    assert str(model) == text
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], state[k]) for k in state)


def test_failure_deep_inside_torch_pruning_leaves_the_model_untouched(monkeypatch):
    torch.manual_seed(0)
    model = _Net().eval()
    snap = _snapshot(model)
    real = tp.pruner.function.LinearPruner.prune_in_channels
    calls = []

    def flaky(self, layer, idxs):
        calls.append(layer)
        if len(calls) == 2:  # the first group is already pruned when this fails
            raise IndexError("list index out of range")
        return real(self, layer, idxs)

    monkeypatch.setattr(tp.pruner.function.LinearPruner, "prune_in_channels", flaky)
    with pytest.raises(NotSupportedError, match=r"pruning failed at layer 'conv2' while pruning "
                       r"the group rooted at 'conv2' \(layers \['conv2', 'fc'\]\): IndexError: "
                       r"list index out of range. The model passed in is unchanged") as e:
        prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert "keep its widths with keep_layers=['conv2', 'fc']" in str(e.value.hint)
    assert len(calls) == 2
    _unchanged(model, snap)


def test_failure_in_the_mac_counter_after_pruning_leaves_the_model_untouched(monkeypatch):
    import edgekit.prune.pruner as pruner

    torch.manual_seed(0)
    model = _Net().eval()
    snap = _snapshot(model)
    real, calls = pruner.count_macs, []

    def broken(m, inputs):
        calls.append(m)
        if len(calls) > 1:  # the count after pruning
            raise RuntimeError("shape '[4, 64, 64]' is invalid for input of size 8192")
        return real(m, inputs)

    monkeypatch.setattr(pruner, "count_macs", broken)
    with pytest.raises(NotSupportedError, match=r"pruning failed while counting MACs after "
                       r"pruning: RuntimeError: shape '\[4, 64, 64\]'"):
        prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert calls[-1] is not model  # it ran on the working copy
    _unchanged(model, snap)


def test_success_keeps_the_callers_module_objects():
    torch.manual_seed(0)
    model = _Net().eval()
    conv, fc = model.conv, model.fc
    res = prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert res.model is model and model.conv is conv and model.fc is fc
    assert conv.out_channels == 8 and conv.weight.shape == (8, 3, 3, 3)
    assert fc.out_features == 6 and model.head.in_features == 6
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


class MobileViTBlock(nn.Module):
    """Local conv -> feature map unfolded into 2x2 patches of tokens -> transformer -> folded
    back -> fused with the local features (MobileViT's block, small)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.local = nn.Conv2d(16, 16, 1)
        self.attn = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0)
        self.fuse = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        y = self.local(h)
        b, c, hh, ww = y.shape
        p = y.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 3, 5, 2, 4, 1)
        p = self.attn(p.reshape(b * 4, (hh // 2) * (ww // 2), c))
        p = p.reshape(b, 2, 2, hh // 2, ww // 2, c).permute(0, 5, 3, 1, 4, 2)
        y = p.reshape(b, c, hh, ww)
        return self.head(torch.relu(self.fuse(torch.cat([h, y], 1))).mean((2, 3)))


class MobileViTFlat(MobileViTBlock):
    """The same with the token width taken from channels x patch pixels (a reshape that
    couples each channel to four token features)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Linear(16 * 4, 16)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        y = self.local(h)
        b, c, hh, ww = y.shape
        p = y.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 3, 5, 1)
        p = self.tok(p.reshape(b, (hh // 2) * (ww // 2), 4 * c))
        return self.head(self.attn(p).mean(1))


def test_mobilevit_block_prunes_exactly():
    torch.manual_seed(0)
    model = MobileViTBlock().eval()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    res = prune(model, x, ratio=0.5)
    assert model.conv.out_channels == 8 and model.fuse.in_channels == 24
    ref = zeroed_reference(original, res.history)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def test_mobilevit_tokens_from_channels_times_pixels_refused_untouched():
    from edgekit.errors import ConfigError

    torch.manual_seed(0)
    model = MobileViTFlat().eval()
    snap = _snapshot(model)
    with pytest.raises(ConfigError, match="'local' reaches 4 inputs of linear layer 'tok'"):
        prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    _unchanged(model, snap)


def test_a_model_that_cannot_be_copied_is_refused_untouched():
    import threading

    from edgekit.errors import UsageError

    torch.manual_seed(0)
    model = _Net().eval()
    model.lock = threading.Lock()  # type: ignore[assignment]
    snap = _snapshot(model)
    with pytest.raises(UsageError, match="cannot copy _Net to prune it safely: TypeError") as e:
        prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert "deep-copyable" in str(e.value.hint)
    _unchanged(model, snap)
