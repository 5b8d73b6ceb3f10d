"""Architectures at the shapes users deploy, in plain PyTorch (nothing downloaded).

Each class reproduces a published architecture layer for layer, so its parameter count
equals the reference implementation's (checked in ``tests/test_models_deploy.py``):

name                          reference                    params          standard input
``mobilenet_v2_224``          torchvision mobilenet_v2     3,504,872       1x3x224x224
``resnet18_224``              torchvision resnet18         11,689,512      1x3x224x224
``resnet50_224``              torchvision resnet50         25,557,032      1x3x224x224
``mobilenet_v3_large_224``    torchvision mobilenet_v3_l   5,483,032       1x3x224x224
``deit_tiny_224``             DeiT-tiny, patch 16          5,717,416       1x3x224x224
``bert_mini_128``             BERT-mini, 4 x 256, 4 heads 11,171,074       2x 1x128 int64
``ds_cnn_kws``                MLPerf Tiny KWS DS-CNN       --              1x1x49x10 MFCC
``gru_kws``                   2-layer GRU spotter          --              1x49x10 MFCC
``unet_128``                  U-Net, 4 levels, concat      --              1x3x128x128

The convolutional models are resolution-free (global pooling), so they train at a smaller
resolution than they are timed at; the ViT takes ``img_size`` (position embeddings are sized
from it). ``DEPLOY_SHAPES`` gives each one's standard input; ``build_deploy(name, **kw)`` a fresh
model in eval mode. The U-Net calls one ``MaxPool2d`` module at every level (a reused module,
as users' code often does).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .zoo.edge import MobileNetV2, _make_divisible

__all__ = ["DEPLOY_SHAPES", "build_deploy", "deploy_inputs", "deploy_models", "ResNet",
           "MobileNetV3Large", "VisionTransformer", "BertEncoderClassifier", "KwsDSCNN",
           "GRUSpotter", "UNet"]


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet-18/34/50 in torchvision's layout (7x7 stem, max pool, four stages, fc)."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...],
                 num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        cin, stages = 64, []
        for i, n in enumerate(layers):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(image))).flatten(1))


# --------------------------------------------------------------------------- MobileNetV3


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = _make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


def _cna(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
         act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class MBConv3(nn.Module):
    def __init__(self, cin: int, k: int, hidden: int, cout: int, se: bool, hs: bool,
                 stride: int) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_cna(cin, hidden, 1, act=act))
        layers.append(_cna(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(_cna(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV3Large(nn.Module):
    """MobileNetV3-Large 1.0 (torchvision layout): hard-swish, squeeze-excite, 5.48 M params."""

    OUTPUT_LAYERS = ("head",)
    # kernel, expanded, out, squeeze-excite, hard-swish, stride
    SETTINGS = ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2),
                (3, 72, 24, False, False, 1), (5, 72, 40, True, False, 2),
                (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
                (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1),
                (3, 184, 80, False, True, 1), (3, 184, 80, False, True, 1),
                (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
                (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1),
                (5, 960, 160, True, True, 1))

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cna(in_channels, 16, 3, 2)]
        cin = 16
        for k, hidden, cout, se, hs, s in self.SETTINGS:
            layers.append(MBConv3(cin, k, hidden, cout, se, hs, s))
            cin = cout
        layers.append(_cna(cin, 6 * cin, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pre_head = nn.Sequential(nn.Linear(6 * cin, 1280), nn.Hardswish(), nn.Dropout(0.2))
        self.head = nn.Linear(1280, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_head(self.pool(self.features(image)).flatten(1)))


# --------------------------------------------------------------------------- transformers


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's layout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        # fixed at construction: pruning that shrinks head_dim keeps each head's softmax scale
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:
            scores = scores + mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, pre_norm: bool, eps: float) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:  # ViT
            x = x + self.attn(self.norm1(x), mask)
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        x = self.norm1(x + self.attn(x, mask))  # BERT (post-norm)
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class VisionTransformer(nn.Module):
    """ViT / DeiT: patch embedding, class token, pre-norm encoder, head on the class token.
    DeiT-tiny: dim 192, depth 12, 3 heads, MLP 768, patch 16 (5.72 M params at 1000 classes)."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12,
                 heads: int = 3, mlp: int = 768, num_classes: int = 1000,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        n = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp, True, 1e-6)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class BertEncoderClassifier(nn.Module):
    """A BERT encoder (word, position and token-type embeddings, post-norm blocks) with a
    pooler and a classifier. BERT-mini: 4 layers, hidden 256, 4 heads, intermediate 1024.
    Takes token ids and an attention mask (1 = token, 0 = padding)."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, vocab: int = 30522, dim: int = 256, depth: int = 4, heads: int = 4,
                 mlp: int = 1024, max_len: int = 512, num_classes: int = 2) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        self.token_type = nn.Embedding(2, dim)
        self.emb_norm = nn.LayerNorm(dim, eps=1e-12)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp, False, 1e-12)
                                    for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        pos = torch.arange(n, device=tokens.device).unsqueeze(0)
        x = self.word(tokens) + self.position(pos) + self.token_type(torch.zeros_like(tokens))
        x = self.emb_norm(x)
        additive = (1.0 - mask.to(x.dtype))[:, None, None, :] * -1e4
        for block in self.blocks:
            x = block(x, additive)
        return self.head(torch.tanh(self.pooler(x[:, 0])))


# --------------------------------------------------------------------------- speech


class KwsDSCNN(nn.Module):
    """MLPerf Tiny keyword-spotting DS-CNN on 49x10 MFCC: conv 64 (10x4, stride 2), four
    depthwise-separable blocks, average pool, 12 classes."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, num_classes: int = 12, channels: int = 64, blocks: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, (10, 4), 2, (5, 1)),
                                   nn.BatchNorm2d(channels), nn.ReLU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, channels, 3, 1, 1, groups=channels),
                       nn.BatchNorm2d(channels), nn.ReLU(),
                       nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(mfcc)).flatten(1))


class GRUSpotter(nn.Module):
    """A GRU keyword spotter: two GRU layers over the MFCC frames, the last state to a dense."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, num_classes: int = 12, features: int = 10, hidden: int = 128,
                 layers: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(mfcc)
        return self.head(out[:, -1])


# --------------------------------------------------------------------------- segmentation


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """U-Net: four down levels (one shared MaxPool2d), transposed-conv up levels with skip
    concatenations, a 1x1 head giving per-pixel class scores."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, num_classes: int = 2, in_channels: int = 3, base: int = 32,
                 levels: int = 4) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])]
                                  + [_double_conv(widths[i], widths[i + 1])
                                     for i in range(levels)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2)
                                for i in reversed(range(levels)))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i])
                                   for i in reversed(range(levels)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        x = self.down[0](image)
        for block in self.down[1:]:
            skips.append(x)
            x = block(self.pool(x))
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------- registry


def _tokens(batch: int, n: int = 128) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 30522, (batch, n), generator=g),
            torch.ones(batch, n, dtype=torch.int64))


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v2_224": lambda **kw: MobileNetV2(**{"num_classes": 1000, "width_mult": 1.0,
                                                    "in_channels": 3, "stem_stride": 2, **kw}),
    "resnet18_224": lambda **kw: ResNet(BasicBlock, (2, 2, 2, 2), **kw),
    "resnet50_224": lambda **kw: ResNet(Bottleneck, (3, 4, 6, 3), **kw),
    "mobilenet_v3_large_224": lambda **kw: MobileNetV3Large(**kw),
    "deit_tiny_224": lambda **kw: VisionTransformer(**kw),
    "bert_mini_128": lambda **kw: BertEncoderClassifier(**kw),
    "ds_cnn_kws": lambda **kw: KwsDSCNN(**kw),
    "gru_kws": lambda **kw: GRUSpotter(**kw),
    "unet_128": lambda **kw: UNet(**kw),
}

#: the standard input(s) of each model: shape and dtype per input
DEPLOY_SHAPES: dict[str, tuple[tuple[tuple[int, ...], torch.dtype], ...]] = {
    "mobilenet_v2_224": (((1, 3, 224, 224), torch.float32),),
    "resnet18_224": (((1, 3, 224, 224), torch.float32),),
    "resnet50_224": (((1, 3, 224, 224), torch.float32),),
    "mobilenet_v3_large_224": (((1, 3, 224, 224), torch.float32),),
    "deit_tiny_224": (((1, 3, 224, 224), torch.float32),),
    "bert_mini_128": (((1, 128), torch.int64), ((1, 128), torch.int64)),
    "ds_cnn_kws": (((1, 1, 49, 10), torch.float32),),
    "gru_kws": (((1, 49, 10), torch.float32),),
    "unet_128": (((1, 3, 128, 128), torch.float32),),
}


def deploy_models() -> list[str]:
    return sorted(_FACTORIES)


def build_deploy(name: str, *, seed: int = 0, **kwargs) -> nn.Module:
    """A fresh model in eval mode (random initialisation from ``seed``)."""
    from ..errors import UnknownNameError

    if name not in _FACTORIES:
        raise UnknownNameError("deployment-scale model", name, deploy_models())
    torch.manual_seed(seed)
    return _FACTORIES[name](**kwargs).eval()


def deploy_inputs(name: str, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs of the standard shapes (token ids in the vocabulary, a full mask)."""
    if name == "bert_mini_128":
        return _tokens(batch)
    g = torch.Generator().manual_seed(0)
    return tuple(torch.rand((batch, *shape[1:]), generator=g, dtype=dtype)
                 for shape, dtype in DEPLOY_SHAPES[name])
