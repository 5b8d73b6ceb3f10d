"""Head-aware attention pruning: whole heads or uniform head dims, for nn.MultiheadAttention and
the transformer library's BERT / ViT attention; kept heads compute exactly what they did."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekit.errors import UsageError
from edgekit.prune import prune, replay
from edgekit.prune.attention import (
    PrunableMultiheadAttention,
    find_sites,
    head_importance,
    split_multihead_attention,
)

transformers = pytest.importorskip("transformers")


def _removed(history, layer: str) -> list[int]:
    recs = [g for g in history["groups"]
            if g.get("kind") == "attention" and g["layer"] == layer and g["mode"] == "heads"]
    return [h for r in recs for h in r["heads_removed"]]


def _mask_heads(v_weight, v_bias, out_weight, heads, head_dim) -> None:
    """Remove heads' contributions in the original: zero their value rows and output columns
    (zeroed q/k rows would still give uniform attention over the values)."""
    with torch.no_grad():
        for h in heads:
            sl = slice(h * head_dim, (h + 1) * head_dim)
            v_weight[sl] = 0
            if v_bias is not None:
                v_bias[sl] = 0
            out_weight[:, sl] = 0


class _Block(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.head(a + h)


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_multihead_attention_is_exact(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    split = split_multihead_attention(mha)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, -2:] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for kw in ({}, {"key_padding_mask": mask}, {"attn_mask": causal},
               {"average_attn_weights": False}):
        a, wa = mha(x, x, x, **kw)
        b, wb = split(x, x, x, **kw)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        torch.testing.assert_close(wb, wa, rtol=0, atol=1e-6)


def test_multihead_attention_heads_removed_exactly():
    torch.manual_seed(0)
    model = _Block().eval()
    original = copy.deepcopy(model)
    x = torch.randn(2, 5, 6)
    # the residual stream keeps its width, so only heads go
    res = prune(model, x, ratio=0.5, attention="heads", keep_layers=["inp"])
    attn = model.attn
    assert isinstance(attn, PrunableMultiheadAttention)
    assert attn.num_heads == 2 and attn.head_dim == 4
    assert attn.q_proj.weight.shape == (8, 16) and attn.out_proj.weight.shape == (16, 8)
    gone = _removed(res.history, "attn")
    # the two heads with the least L2 norm over their q/k/v rows and output columns
    holder = nn.Module()
    holder.attn = split_multihead_attention(original.attn)
    scores = head_importance(find_sites(holder)[0])
    assert sorted(gone) == sorted(torch.argsort(scores)[:2].tolist())
    mha = original.attn
    _mask_heads(mha.in_proj_weight[32:], mha.in_proj_bias[32:], mha.out_proj.weight,
                gone, 4)
    torch.testing.assert_close(model(x), original(x), rtol=0, atol=1e-5)
    fresh = replay(_Block().eval(), res.history, x)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_zoo_transformer_loses_whole_heads_replays_and_exports():
    from edgekit.models import build, get_spec

    model = build("transformer")
    x = get_spec("transformer").example_inputs(2)
    res = prune(model, x, ratio=0.5, attention="heads")
    for layer in model.layers:
        attn = layer.self_attn
        assert attn.num_heads == 2 and attn.q_proj.out_features == 2 * attn.head_dim
        assert attn.out_proj.in_features == attn.v_proj.out_features
    assert res.macs_ratio > 2
    fresh = replay(get_spec("transformer").factory(), res.history, x)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(*x), model(*x), rtol=0, atol=0)
    exported = torch.export.export(model, tuple(x)).module()
    torch.testing.assert_close(exported(*x), model(*x), rtol=0, atol=1e-5)


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                     intermediate_size=128, vocab_size=100)
    return BertModel(cfg).eval(), torch.randint(0, 100, (2, 8))


def _vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                    intermediate_size=128, image_size=16, patch_size=8, num_channels=3)
    return ViTModel(cfg).eval(), torch.randn(2, 3, 16, 16)


def test_bert_heads_removed_exactly_with_consistent_attributes():
    model, x = _bert()
    original = copy.deepcopy(model)
    ffn = [f"encoder.layer.{i}.intermediate.dense" for i in range(2)]
    res = prune(model, x, ratio=0.5, attention="heads", keep_layers=ffn)  # heads only
    for i, layer in enumerate(model.encoder.layer):
        sa = layer.attention.self
        assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (2, 16, 32)
        assert sa.query.out_features == sa.key.out_features == sa.value.out_features == 32
        assert layer.attention.output.dense.in_features == 32
        assert sa.scaling == pytest.approx(16 ** -0.5)
        gone = _removed(res.history, f"encoder.layer.{i}.attention.self")
        assert len(gone) == 2
        ref = original.encoder.layer[i].attention
        _mask_heads(ref.self.value.weight, ref.self.value.bias,
                    ref.output.dense.weight, gone, 16)
    assert model.config.num_attention_heads == 2 and model.config.head_dim == 16
    # the residual stream is the model's output: it keeps its width
    assert model.encoder.layer[0].attention.output.dense.out_features == 64
    torch.testing.assert_close(model(x).last_hidden_state, original(x).last_hidden_state,
                               rtol=0, atol=1e-5)
    exported = torch.export.export(model, (x,)).module()
    torch.testing.assert_close(exported(x)["last_hidden_state"], model(x).last_hidden_state,
                               rtol=0, atol=1e-5)
    from transformers import BertModel

    fresh = replay(BertModel(copy.deepcopy(original.config)).eval(), res.history, x)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x).last_hidden_state, model(x).last_hidden_state,
                               rtol=0, atol=0)


def test_vit_heads_removed_exactly():
    model, x = _vit()
    original = copy.deepcopy(model)
    res = prune(model, x, ratio=0.5, attention="heads", keep_layers=["layers.0.mlp.fc1",
                                                                     "layers.1.mlp.fc1"])
    sites = find_sites(model)
    assert len(sites) == 2
    for site in sites:
        assert (site.heads, site.head_dim) == (2, 16)
        assert site.q.out_features == 32 and site.out.in_features == 32
        gone = _removed(res.history, site.name)
        ref = original.get_submodule(site.name)
        _mask_heads(ref.v_proj.weight, ref.v_proj.bias, ref.o_proj.weight, gone, 16)
    assert model.config.num_attention_heads == 2
    torch.testing.assert_close(model(x).last_hidden_state, original(x).last_hidden_state,
                               rtol=0, atol=1e-5)
    exported = torch.export.export(model, (x,)).module()
    torch.testing.assert_close(exported(x)["last_hidden_state"], model(x).last_hidden_state,
                               rtol=0, atol=1e-5)


def test_clip_heads_removed_exactly():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, num_attention_heads=4,
                                             num_hidden_layers=1, intermediate_size=128,
                                             image_size=16, patch_size=8)).eval()
    x = torch.randn(2, 3, 16, 16)
    original = copy.deepcopy(model)
    res = prune(model, x, ratio=0.5, attention="heads", keep_layers=[
        "encoder.layers.0.mlp.fc1"])
    site, = find_sites(model)
    assert (site.heads, site.head_dim, site.module.num_heads) == (2, 16, 2)
    ref = original.get_submodule(site.name)
    _mask_heads(ref.v_proj.weight, ref.v_proj.bias, ref.out_proj.weight,
                _removed(res.history, site.name), 16)
    torch.testing.assert_close(model(x).last_hidden_state, original(x).last_hidden_state,
                               rtol=0, atol=1e-5)


def test_head_dim_mode_shrinks_every_head_alike_without_straddling():
    model, x = _bert()
    res = prune(model, x, ratio=0.5)  # the default: attention="head_dim"
    recs = [g for g in res.history["groups"] if g.get("kind") == "attention"]
    assert len(recs) == 2
    for rec in recs:
        assert rec["heads"] == 4 and rec["head_dim"] == 8 and rec["heads_removed"] == []
        # every head loses 8 of its own 16 positions: no kept position comes from another head
        for idxs in (rec["qk_idxs"], rec["v_idxs"]):
            per_head = [sum(1 for i in idxs if i // 16 == h) for h in range(4)]
            assert per_head == [8, 8, 8, 8]
    sa = model.encoder.layer[0].attention.self
    assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (4, 8, 32)
    assert model.config.num_attention_heads == 4 and model.config.head_dim == 8
    assert model.encoder.layer[0].intermediate.dense.out_features == 64  # the FFNs prune too
    assert res.macs_ratio > 1.9 and model(x).last_hidden_state.shape == (2, 8, 64)


def test_keep_mode_and_bad_mode():
    model, x = _bert()
    prune(model, x, ratio=0.5, attention="keep")
    sa = model.encoder.layer[0].attention.self
    assert (sa.num_attention_heads, sa.attention_head_size) == (4, 16)
    with pytest.raises(UsageError, match="unknown attention mode 'rows'"):
        prune(model, x, ratio=0.5, attention="rows")


class _FusedQKV(nn.Module):
    """timm-style attention: one fused qkv projection, ``num_heads``, ``head_dim``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, 4
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.proj(a.transpose(1, 2).reshape(b, t, -1))


class _OtherQKV(nn.Module):
    """An attention module edgekit does not recognise (fused ``to_qkv``, ``to_out``)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 4
        self.to_qkv = nn.Linear(16, 48)
        self.to_out = nn.Linear(16, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.to_out(a.transpose(1, 2).reshape(b, t, -1))


def _net_around(attn: nn.Module) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.attn = attn
            self.fc = nn.Linear(16, 32)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            h = self.inp(x)
            h = h + self.attn(h)
            return self.head(torch.relu(self.fc(h)))

    torch.manual_seed(0)
    return Net().eval()


def test_unrecognised_attention_keeps_its_head_widths():
    model = _net_around(_OtherQKV())
    prune(model, torch.randn(1, 5, 6), ratio=0.5)
    assert model.attn.to_qkv.out_features == 48 and model.attn.to_out.in_features == 16
    assert model.fc.out_features == 16 and model.inp.out_features == 8  # the rest prunes
    assert model(torch.randn(2, 5, 6)).shape == (2, 5, 3)


def test_fused_qkv_attention_shrinks_every_head_alike():
    model = _net_around(_FusedQKV())
    ref = copy.deepcopy(model)
    x = torch.randn(2, 5, 6)
    res = prune(model, x[:1], ratio=0.5)
    a = model.attn
    assert (a.num_heads, a.head_dim) == (4, 2)
    assert a.qkv.out_features == 3 * 4 * 2 and a.proj.in_features == 8
    assert model.fc.out_features == 16 and model.inp.out_features == 8  # the rest prunes
    (rec,) = [g for g in res.history["groups"] if g.get("kind") == "attention"]
    assert rec["mode"] == "head_dim" and rec["qk_idxs"] == rec["v_idxs"]
    assert model(x).shape == (2, 5, 3)
    fresh = replay(copy.deepcopy(ref), res.history, x[:1])
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_macs_count_attention_products_of_split_and_library_attention(batch_first):
    from edgekit.prune import count_macs

    torch.manual_seed(0)
    model = _Block(batch_first).eval()
    x = torch.randn(1, 5, 6) if batch_first else torch.randn(5, 1, 6)
    before = count_macs(model, (x,))
    model.attn = split_multihead_attention(model.attn)
    assert count_macs(model, (x,)) == before  # the same computation counts the same
    bert, ids = _bert()
    # 2 layers x (4 projections 8x64x64 + scores and values 2 x 8x8x64 + FFN 2 x 8x64x128)
    # + pooler 64x64
    assert count_macs(bert, (ids[:1],)) == 2 * (4 * 8 * 64 * 64 + 2 * 8 * 8 * 64
                                                + 2 * 8 * 64 * 128) + 64 * 64
