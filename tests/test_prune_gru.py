"""GRU pruning across its three gates and the next layer (edgekit.prune.gru)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError, UsageError
from edgekit.prune import prune, replay
from edgekit.prune.gru import GRUPruner


def _zero_units(gru: nn.GRU, units: list[int], consumer: nn.Linear | None = None) -> None:
    """The reference: units whose rows (all three gates, both matrices, biases), recurrent
    column and next-layer input column are zero stay at zero from h0 = 0."""
    hid = gru.hidden_size
    rows = [g * hid + u for g in range(3) for u in units]
    with torch.no_grad():
        for k in range(gru.num_layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(gru, f"{name}_l{k}")[rows] = 0
            getattr(gru, f"weight_hh_l{k}")[:, units] = 0
            if k > 0:
                getattr(gru, f"weight_ih_l{k}")[:, units] = 0
        if consumer is not None:
            consumer.weight[:, units] = 0


@pytest.mark.parametrize("layers", [1, 2])
def test_gru_pruner_equals_the_gru_with_those_units_zeroed(layers):
    torch.manual_seed(0)
    gru, head = nn.GRU(5, 6, num_layers=layers, batch_first=True), nn.Linear(6, 3)
    units, keep = [1, 4], [0, 2, 3, 5]
    ref_gru, ref_head = copy.deepcopy(gru), copy.deepcopy(head)
    _zero_units(ref_gru, units, ref_head)
    x = torch.randn(2, 7, 5)
    ref = ref_head(ref_gru(x)[0])
    GRUPruner().prune_out_channels(gru, units)
    assert gru.hidden_size == 4
    for k in range(layers):
        assert getattr(gru, f"weight_ih_l{k}").shape == (12, 5 if k == 0 else 4)
        assert getattr(gru, f"weight_hh_l{k}").shape == (12, 4)
        assert getattr(gru, f"bias_hh_l{k}").shape == (12,)
    out = nn.functional.linear(gru(x)[0], head.weight[:, keep], head.bias)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert (ref - head(copy.deepcopy(ref_gru)(x)[0])).abs().max() < 1e-6  # sanity: same ref


class _Spotter(nn.Module):
    """A keyword-spotter shape: features -> linear -> GRU (two layers) -> classifier."""

    def __init__(self, bidirectional: bool = False, layers: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 16)
        self.rnn = nn.GRU(16, 12, num_layers=layers, batch_first=True,
                          bidirectional=bidirectional)
        self.head = nn.Linear(24 if bidirectional else 12, 4)

    def forward(self, x):
        return self.head(self.rnn(torch.relu(self.fc(x)))[0][:, -1])


def test_prune_gru_model_matches_the_zeroed_original_and_replays():
    torch.manual_seed(0)
    model = _Spotter().eval()
    original = copy.deepcopy(model)
    x = torch.randn(3, 9, 10)
    res = prune(model, x, ratio=0.5)
    assert model.rnn.hidden_size == 6 and model.fc.out_features == 8
    assert model.head.in_features == 6 and model.rnn.input_size == 8
    groups = {g["root"]: g for g in res.history["groups"]}
    assert {"rnn", "fc"} <= set(groups)
    assert ["head", "in"] in groups["rnn"]["layers"] and ["rnn", "in"] in groups["fc"]["layers"]
    # reference: the original with the removed fc outputs and GRU units zeroed
    ref = copy.deepcopy(original)
    with torch.no_grad():
        ref.fc.weight[groups["fc"]["idxs"]] = 0
        ref.fc.bias[groups["fc"]["idxs"]] = 0
    _zero_units(ref.rnn, groups["rnn"]["idxs"], ref.head)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    assert res.macs_after < 0.4 * res.macs_before
    fresh = replay(_Spotter().eval(), res.history, x)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_bidirectional_gru_is_refused_and_the_hint_works():
    torch.manual_seed(0)
    model = _Spotter(bidirectional=True).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 5, 10)
    with pytest.raises(UsageError, match="GRU 'rnn' \\(bidirectional") as err:
        prune(model, x, ratio=0.5)
    assert "keep_layers=['rnn']" in str(err.value.hint)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    res = prune(model, x, ratio=0.5, keep_layers=["rnn"])  # following the hint works
    assert model.rnn.hidden_size == 12 and model.fc.out_features == 8
    assert model.rnn.input_size == 8 and model.rnn.weight_ih_l0_reverse.shape == (36, 8)
    assert model(x).shape == (2, 4) and res.macs_after < res.macs_before


def test_kept_gru_and_ignored_layers_no_longer_crash():
    x = torch.randn(2, 5, 10)
    torch.manual_seed(0)
    model = _Spotter().eval()
    prune(model, x, ratio=0.5, ignored_layers=["rnn", "head"])
    assert model.rnn.hidden_size == 12 and model.fc.out_features == 8
    model = _Spotter().eval()
    prune(model, x, ratio=0.5, keep_layers=["rnn"])
    assert model.rnn.hidden_size == 12 and model.fc.out_features == 8


def test_nothing_left_to_prune_says_which_layers_keep_their_width():
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    with pytest.raises(ConfigError, match=r"every prunable layer keeps its width .*'head', "
                       r"'rnn'") as err:
        prune(Bare().eval(), torch.randn(1, 3, 4), ratio=0.5, keep_layers=["rnn"])
    assert "too narrow" not in str(err.value)
    model = Bare().eval()
    prune(model, torch.randn(1, 3, 4), ratio=0.5)  # the GRU itself prunes
    assert model.rnn.hidden_size == 4 and model.head.in_features == 4
