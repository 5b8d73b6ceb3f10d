"""Pruning the deployment-scale architectures (edgekit.models.deploy) in small configurations:
the fused-qkv attention of edgekit's own ViT / BERT loses whole heads or head positions
exactly, the class token and position embedding follow the residual width, residual adds and
squeeze-excite blocks stay consistent, and a replayed history rebuilds the pruned model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekit.models.deploy import (
    Attention,
    BasicBlock,
    BertEncoderClassifier,
    MobileNetV3Large,
    ResNet,
    VisionTransformer,
)
from edgekit.prune import count_macs, prune, replay
from edgekit.prune.attention import find_sites, prune_site


def _attention(dim: int = 32, heads: int = 4) -> Attention:
    torch.manual_seed(0)
    attn = Attention(dim, heads).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


def test_fused_qkv_attention_is_a_site():
    attn = _attention()
    (site,) = find_sites(attn)
    assert site.fused and site.q is attn.qkv and site.out is attn.proj
    assert (site.heads, site.head_dim, site.v_head_dim) == (4, 8, 8)


def test_removing_heads_of_fused_attention_is_exact():
    attn = _attention()
    ref = copy.deepcopy(attn)
    x, mask = torch.randn(2, 7, 32), torch.randn(2, 1, 1, 7)
    rec = prune_site(find_sites(attn)[0], "heads", 2)
    assert rec is not None and len(rec["heads_removed"]) == 2
    assert (attn.heads, attn.head_dim) == (2, 8)
    assert attn.qkv.out_features == 3 * 2 * 8 and attn.proj.in_features == 16
    # the original with those heads' value rows and output columns zeroed
    with torch.no_grad():
        for h in rec["heads_removed"]:
            ref.qkv.weight[64 + h * 8: 64 + (h + 1) * 8] = 0
            ref.qkv.bias[64 + h * 8: 64 + (h + 1) * 8] = 0
            ref.proj.weight[:, h * 8:(h + 1) * 8] = 0
        torch.testing.assert_close(attn(x, mask), ref(x, mask), atol=1e-5, rtol=0)


def test_shrinking_head_dim_of_fused_attention_is_exact():
    attn = _attention()
    ref = copy.deepcopy(attn)
    x = torch.randn(2, 7, 32)
    rec = prune_site(find_sites(attn)[0], "head_dim", 3)
    assert rec is not None and rec["qk_idxs"] == rec["v_idxs"] and len(rec["qk_idxs"]) == 12
    assert (attn.heads, attn.head_dim) == (4, 5) and attn.qkv.out_features == 60
    # the original with those positions zeroed in q, k and v (same softmax scale)
    with torch.no_grad():
        for i in rec["qk_idxs"]:
            for block in range(3):
                ref.qkv.weight[block * 32 + i] = 0
                ref.qkv.bias[block * 32 + i] = 0
            ref.proj.weight[:, i] = 0
        torch.testing.assert_close(attn(x), ref(x), atol=1e-5, rtol=0)


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch=8, dim=48, depth=2, heads=3, mlp=96,
                             num_classes=5).eval()


@pytest.mark.parametrize("mode", ["heads", "head_dim"])
def test_vit_prunes_to_half_the_macs_and_replays(mode):
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    res = prune(model, x, macs_reduction=0.5, round_to=8, attention=mode)
    assert res.macs_ratio >= 2.0
    width = model.patch_embed.out_channels
    assert width < 48 and width % 8 == 0
    # the class token and position embedding follow the residual width
    assert model.cls_token.shape == (1, 1, width) and model.pos_embed.shape == (1, 17, width)
    for block in model.blocks:
        a = block.attn
        assert a.qkv.out_features == 3 * a.heads * a.head_dim == 3 * a.proj.in_features
        assert a.qkv.in_features == width == a.proj.out_features
        assert a.scale == pytest.approx(16 ** -0.5)  # the original head size's scale
    if mode == "heads":
        assert all(b.attn.heads < 3 and b.attn.head_dim == 16 for b in model.blocks)
    else:
        assert all(b.attn.heads == 3 and b.attn.head_dim < 16 for b in model.blocks)
    fresh = replay(_vit(), res.history, x)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=1e-6, rtol=0)
    assert count_macs(fresh, (x,)) == res.macs_after


def _bert() -> BertEncoderClassifier:
    torch.manual_seed(0)
    return BertEncoderClassifier(vocab=100, dim=32, depth=2, heads=4, mlp=64, max_len=16,
                                 num_classes=3).eval()


@pytest.mark.parametrize("mode", ["heads", "head_dim"])
def test_bert_prunes_heads_and_keeps_padding_masked(mode):
    model = _bert()
    tokens = torch.randint(1, 100, (1, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 16, dtype=torch.int64)
    res = prune(model, (tokens, mask), macs_reduction=0.5, round_to=4, attention=mode)
    assert res.macs_ratio >= 2.0
    attn = [b.attn for b in model.blocks]
    if mode == "heads":
        assert all(a.heads < 4 and a.head_dim == 8 for a in attn)
    else:
        assert all(a.heads == 4 and a.head_dim < 8 for a in attn)
    assert model.word.embedding_dim == model.position.embedding_dim == model.pooler.in_features
    assert model.word.num_embeddings == 100  # the vocabulary is never pruned
    # padded positions still do not change the class-token logits
    short = torch.cat([tokens[:, :10], torch.zeros(1, 6, dtype=torch.int64)], 1)
    m10 = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], 1).long()
    other = short.clone()
    other[:, 10:] = 7
    with torch.no_grad():
        torch.testing.assert_close(model(short, m10), model(other, m10), atol=1e-5, rtol=0)
    fresh = replay(_bert(), res.history, (tokens, mask))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens, mask), model(tokens, mask), atol=1e-6, rtol=0)


def test_resnet_residual_adds_stay_coupled_with_latency_friendly_widths():
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=7).eval()
    x = torch.randn(1, 3, 32, 32)
    res = prune(model, x, macs_reduction=0.5, round_to=16)
    assert res.macs_ratio >= 2.0
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 16 == 0 for c in convs)
    assert sum(c.out_channels for c in convs) < sum(
        c.out_channels for c in ResNet(BasicBlock, (1, 1, 1, 1)).modules()
        if isinstance(c, nn.Conv2d))
    for stage in model.stages:
        block = stage[0]
        skip = block.downsample[0].out_channels if block.downsample is not None else \
            block.conv1.in_channels
        assert block.conv2.out_channels == skip  # both sides of the residual add
    assert model.head.out_features == 7
    with torch.no_grad():
        assert model(x).shape == (1, 7)


def test_mobilenet_v3_squeeze_excite_follows_its_block():
    torch.manual_seed(0)
    model = MobileNetV3Large(num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    res = prune(model, x, macs_reduction=0.5, round_to=8)
    assert res.macs_ratio >= 2.0
    se_blocks = [(blk, se) for blk in model.features if hasattr(blk, "block")
                 for se in blk.block if hasattr(se, "fc1")]
    assert se_blocks
    for blk, se in se_blocks:
        depthwise = next(m for m in blk.block.modules()
                         if isinstance(m, nn.Conv2d) and m.groups > 1)
        assert se.fc1.in_channels == se.fc2.out_channels == depthwise.out_channels
    fresh = MobileNetV3Large(num_classes=5).eval()
    replay(fresh, res.history, x)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=1e-5, rtol=0)


class _InputWidthAttention(nn.Module):
    """timm-style attention whose forward reshapes the heads' output to the input width."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 2, 8
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4)
        return self.proj((q @ k.transpose(-2, -1)).softmax(-1).matmul(v).transpose(1, 2)
                         .reshape(b, n, c))


def test_attention_forward_that_ignores_the_head_attributes_is_refused_atomically():
    from edgekit.errors import NotSupportedError

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.attn, self.head = nn.Linear(4, 16), _InputWidthAttention(), \
                nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.attn(self.inp(x)))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 5, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NotSupportedError, match="attention layer 'attn'") as err:
        prune(model, x, ratio=0.5, keep_layers=["inp"])
    assert "attention='keep'" in str(err.value.hint)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # untouched
    res = prune(model, x, ratio=0.5, attention="keep", keep_layers=["inp"])
    assert model.attn.qkv.out_features == 48 and res.macs_after < res.macs_before
