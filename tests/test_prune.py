"""Structured pruning (edgekit.prune): every zoo family, replay, importances, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError, UsageError
from edgekit.models import build, get_spec, list_models
from edgekit.prune import LSTMPruner, default_ignored_layers, prune, replay

# MACs after / before at ratio 0.5, worked out from each architecture: a layer keeps
# (1 - r) of its MACs when one side (in or out) is pruned and (1 - r)^2 when both are, so the
# total lies in [0.25, 0.5]; the value depends on how the MACs split between the two kinds.
# e.g. cnn: conv (1->32, out pruned) 18432 MACs x 0.5, fc (512->64, both) 32768 x 0.25,
# head (64->10, in) 640 x 0.5 -> 17728 / 51840 = 0.342.
EXPECTED_MACS = {
    "autoencoder": 0.472, "cnn": 0.342, "ds_cnn": 0.305, "embedding": 0.308, "gan": 0.340,
    "image_audio": 0.301, "image_text": 0.285, "lstm": 0.279, "mobilenet_v2": 0.286,
    "resnet8": 0.253, "transformer": 0.333, "vae": 0.500,
}


def _outs(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _widths(model: nn.Module) -> dict[str, int]:
    widths = {}
    for name, m in model.named_modules():
        for attr in ("out_channels", "out_features", "hidden_size", "embedding_dim"):
            if isinstance(getattr(m, attr, None), int):
                widths[name] = getattr(m, attr)
                break
    return widths


def test_every_zoo_model_has_an_expectation():
    assert sorted(EXPECTED_MACS) == list_models()


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n == "mobilenet_v2" else n for n in list_models()])
def test_prune_ratio_every_zoo_model(name):
    spec = get_spec(name)
    model = build(name)
    x = spec.example_inputs(3)
    ref_shapes = [o.shape for o in _outs(model(*x))]
    before = _widths(model)
    result = prune(model, x, ratio=0.5)

    # MACs and parameters drop by the amount the architecture implies
    macs = result.macs_after / result.macs_before
    params = result.params_after / result.params_before
    assert 0.24 <= macs <= 0.51 and 0.24 <= params <= 0.51
    assert macs == pytest.approx(EXPECTED_MACS[name], abs=0.01)
    assert result.macs_ratio > 1.9

    # every prunable layer lost half its width; the ones that keep it did
    after = _widths(model)
    kept = set(result.ignored)
    assert kept, "output layers are found automatically"
    for layer, width in before.items():
        if layer in kept:
            assert after[layer] == width, layer
    halved = [n for n, w in before.items() if n not in kept and after[n] == w - int(w * 0.5)]
    assert halved, "some layer was pruned"

    # it still runs, with the same output shapes
    assert [o.shape for o in _outs(model(*x))] == ref_shapes

    # the history is plain JSON and replays onto a fresh zoo instance exactly
    history = json.loads(json.dumps(result.history))
    fresh = replay(spec.factory(), history)
    fresh.load_state_dict(model.state_dict())
    assert str(fresh) == str(model)
    for a, b in zip(_outs(model(*x)), _outs(fresh(*x))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_transformer_keeps_num_heads_consistent():
    model = build("transformer")
    x = get_spec("transformer").example_inputs(2)
    prune(model, x, ratio=0.5, round_to=4)
    for layer in model.layers:
        attn = layer.self_attn
        assert attn.num_heads == 4
        assert attn.embed_dim == 16 and attn.head_dim * attn.num_heads == attn.embed_dim
        assert attn.in_proj_weight.shape == (48, 16)
    assert model.embed.num_embeddings == 17  # the vocabulary is never pruned
    assert model.head.out_features == 10


def test_keep_embeddings_freezes_embedding_width():
    model = build("transformer")
    x = get_spec("transformer").example_inputs(2)
    res = prune(model, x, ratio=0.5, keep_embeddings=True)
    assert model.embed.embedding_dim == 32
    assert "embed" in res.ignored
    assert res.macs_after < res.macs_before  # the feed-forward layers still prune


def test_lstm_pruner_removes_units_across_all_gates():
    """A hidden unit with no outgoing influence can be removed without changing the output."""
    torch.manual_seed(0)
    lstm, head = nn.LSTM(5, 6, num_layers=2, batch_first=True), nn.Linear(6, 3)
    dead = [1, 4]
    with torch.no_grad():
        for k in range(2):
            getattr(lstm, f"weight_hh_l{k}")[:, dead] = 0
        lstm.weight_ih_l1[:, dead] = 0
        head.weight[:, dead] = 0
    x = torch.randn(2, 7, 5)
    ref = head(lstm(x)[0][:, -1])
    LSTMPruner().prune_out_channels(lstm, dead)
    assert lstm.hidden_size == 4
    for k in range(2):
        assert getattr(lstm, f"weight_ih_l{k}").shape[0] == 16
        assert getattr(lstm, f"weight_hh_l{k}").shape == (16, 4)
        assert getattr(lstm, f"bias_ih_l{k}").shape == (16,)
    assert lstm.weight_ih_l1.shape == (16, 4)
    keep = [0, 2, 3, 5]
    out = nn.functional.linear(lstm(x)[0][:, -1], head.weight[:, keep], head.bias)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor"])
def test_importance_criteria(importance):
    spec = get_spec("ds_cnn")
    model = build("ds_cnn")
    x = spec.example_inputs(2)
    res = prune(model, x, ratio=0.5, importance=importance)
    assert res.macs_after / res.macs_before == pytest.approx(EXPECTED_MACS["ds_cnn"], abs=0.01)
    assert res.history["importance"] == importance
    model(*x)


@pytest.mark.slow
def test_taylor_uses_task_gradients():
    spec = get_spec("cnn")
    model = build("cnn")
    res = prune(model, spec.example_inputs(1), ratio=0.25, importance="taylor", task=spec.task())
    assert model.conv.out_channels == 24 and res.history["groups"]


@pytest.mark.slow
def test_round_to_and_global_pruning():
    spec = get_spec("mobilenet_v2")
    model = build("mobilenet_v2")
    x = spec.example_inputs(1)
    res = prune(model, x, ratio=0.4, round_to=8)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 8 == 0, name
    model2 = build("resnet8")
    res = prune(model2, get_spec("resnet8").example_inputs(1), ratio=0.5, global_pruning=True)
    assert res.history["global_pruning"] is True and res.macs_after < res.macs_before
    model2(*get_spec("resnet8").example_inputs(2))


@pytest.mark.parametrize("name,goal", [("cnn", 0.5), ("lstm", 0.6),
                                       pytest.param("resnet8", 0.5, marks=pytest.mark.slow)])
def test_macs_and_params_targets(name, goal):
    spec = get_spec(name)
    x = spec.example_inputs(1)
    res = prune(build(name), x, macs_reduction=goal)
    assert res.macs_after <= (1 - goal) * res.macs_before
    assert res.macs_after >= 0.25 * (1 - goal) * res.macs_before  # not wildly overshot
    res = prune(build(name), x, params_reduction=goal)
    assert res.params_after <= (1 - goal) * res.params_before
    fresh = replay(spec.factory(), res.history)
    assert str(fresh) == str(res.model)


def test_ignored_layers_override_and_keep_layers():
    spec = get_spec("cnn")
    x = spec.example_inputs(1)
    model = build("cnn")
    res = prune(model, x, ratio=0.5, keep_layers=["fc"])
    assert model.fc.out_features == 64 and model.conv.out_channels == 16
    assert set(res.ignored) == {"head", "fc"}
    model = build("cnn")
    prune(model, x, ratio=0.5, ignored_layers=["head", "conv"])
    assert model.conv.out_channels == 32 and model.fc.out_features == 32
    with pytest.raises(UsageError, match="no layer named 'nope'"):
        prune(build("cnn"), x, ratio=0.5, keep_layers=["nope"])


def test_layers_feeding_outputs_found_without_output_layers_attribute():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.b = nn.Linear(16, 4)
            self.c = nn.Linear(16, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h).sigmoid(), self.c(h) * 2

    model = Plain().eval()
    x = (torch.randn(2, 8),)
    assert set(default_ignored_layers(model, x)) == {model.b, model.c}
    prune(model, x, ratio=0.5)
    assert model.a.out_features == 8 and model.b.out_features == 4 and model.c.out_features == 2


def test_vae_latent_and_outputs_keep_their_width():
    model = build("vae")
    x = get_spec("vae").example_inputs(2)
    prune(model, x, ratio=0.5)
    assert model.fc_mu.out_features == 8 and model.fc_logvar.out_features == 8
    assert model.head.out_features == 64 and model.decoder[0].out_features == 64


@pytest.mark.parametrize("bad", [0, 1, 1.0, -0.1, 1.5, "0.5", True, float("nan")])
def test_bad_ratio_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="strictly between 0 and 1"):
        prune(build("cnn"), get_spec("cnn").example_inputs(1), ratio=bad)


def test_target_errors():
    x = get_spec("cnn").example_inputs(1)
    with pytest.raises(UsageError, match="exactly one"):
        prune(build("cnn"), x)
    with pytest.raises(UsageError, match="exactly one"):
        prune(build("cnn"), x, ratio=0.5, macs_reduction=0.5)
    with pytest.raises(UsageError, match="unknown importance"):
        prune(build("cnn"), x, ratio=0.5, importance="l3")
    with pytest.raises(UsageError, match="round_to"):
        prune(build("cnn"), x, ratio=0.5, round_to=0)


def test_target_that_would_remove_a_layer():
    x = get_spec("cnn").example_inputs(1)
    with pytest.raises(ConfigError, match="most reached"):
        prune(build("cnn"), x, macs_reduction=0.99, max_layer_ratio=0.5)
    # rounding 8 channels x 0.5 down to a multiple of 8 would empty the layer: it keeps its
    # width instead, and a request that prunes nothing at all is an error
    tiny = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.raises(ConfigError, match="prunes nothing"):
        prune(tiny, (torch.randn(1, 4),), ratio=0.5, round_to=8)
    assert tiny[0].out_features == 8


class _NumpyBlock(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy() * 2)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.weird = _NumpyBlock()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.weird(self.fc(x)))


def test_untraceable_model_names_the_module():
    with pytest.raises(UsageError, match="at module weird"):
        prune(_Untraceable().eval(), (torch.randn(1, 4),), ratio=0.5)


def test_unsupported_recurrent_layers_are_named():
    class Gru(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 8, batch_first=True, bidirectional=True)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    with pytest.raises(UsageError, match="GRU 'rnn' \\(bidirectional"):
        prune(Gru().eval(), (torch.randn(1, 3, 4),), ratio=0.5)
    # kept, the GRU is no longer an error; nothing else is prunable here (head is an output)
    with pytest.raises(ConfigError, match="prunes nothing: every prunable layer keeps"):
        prune(Gru().eval(), (torch.randn(1, 3, 4),), ratio=0.5, keep_layers=["rnn"])


def test_replay_rejects_foreign_history():
    with pytest.raises(ConfigError, match="format"):
        replay(build("cnn"), {"format": "other/9", "groups": []})
    res = prune(build("cnn"), get_spec("cnn").example_inputs(1), ratio=0.5)
    with pytest.raises(ConfigError, match="does not have"):
        replay(build("lstm"), res.history)
