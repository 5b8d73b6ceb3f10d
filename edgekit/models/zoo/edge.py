"""Edge reference models on 32x32 digits: MobileNetV2, DS-CNN (keyword-spotting shape), ResNet-8."""

from __future__ import annotations

import torch
from torch import nn

from ...data import tasks
from ..registry import ModelSpec, register
from ._common import factory, gen


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (torchvision layout) for small images: 1 input channel, stride-1 stem."""

    OUTPUT_LAYERS = ("head",)
    DEFAULT_LR = 1e-2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, width_mult: float = 0.5, in_channels: int = 1,
                 stem_stride: int = 1, last_channel: int = 1280, dropout: float = 0.2) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, stem_stride)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn(cin, self.last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.last_channel, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(image)).flatten(1)
        return self.head(self.dropout(x))


class DSCNN(nn.Module):
    """Keyword-spotting DS-CNN: conv 64 (3x3) then 4 depthwise-separable blocks (depthwise 3x3 +
    pointwise 1x1, each with batch norm and ReLU; the first depthwise has stride 2), global
    average pool, dense. 21.1 k parameters, 5.4 M MACs on 1x32x32."""

    OUTPUT_LAYERS = ("head",)
    DEFAULT_LR = 1e-2

    def __init__(self, num_classes: int = 10, channels: int = 64, blocks: int = 4,
                 in_channels: int = 1, first_stride: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 3, first_stride, 1),
            nn.BatchNorm2d(channels), nn.ReLU(),
        ]
        for i in range(blocks):
            layers += [
                nn.Conv2d(channels, channels, 3, 2 if i == 0 else 1, 1, groups=channels,
                          bias=False),
                nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels), nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(image)).flatten(1))


class ResidualStack(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny ResNet-8: conv 16, three residual stacks (16, 32/2, 64/2), avg pool, dense."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, 1, 1), nn.BatchNorm2d(w1), nn.ReLU()
        )
        self.stack1 = ResidualStack(w1, w1, 1)
        self.stack2 = ResidualStack(w1, w2, 2)
        self.stack3 = ResidualStack(w2, w3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(w3, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stack3(self.stack2(self.stack1(self.stem(image))))
        return self.head(self.pool(x).flatten(1))


def _ex_images32(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 1, 32, 32, generator=gen(0)),)


def _digits32():
    return tasks.digit_classification("digits32")


register(ModelSpec(
    name="mobilenet_v2", family="edge",
    description="MobileNetV2 (width 0.5, stride-1 stem) on 32x32 digits",
    factory=factory(MobileNetV2, "mobilenet_v2"),
    task=_digits32, input_names=("image",), output_names=("logits",),
    example_inputs=_ex_images32, default_epochs=12, tags=("classification", "vision", "edge"),
))
register(ModelSpec(
    name="ds_cnn", family="edge",
    description="depthwise-separable CNN (keyword-spotting shape) on 32x32 digits",
    factory=factory(DSCNN, "ds_cnn"),
    task=_digits32, input_names=("image",), output_names=("logits",),
    example_inputs=_ex_images32, default_epochs=12, tags=("classification", "vision", "edge"),
))
register(ModelSpec(
    name="resnet8", family="edge",
    description="MLPerf Tiny ResNet-8 (16/32/64) on 32x32 digits",
    factory=factory(ResNet8, "resnet8"),
    task=_digits32, input_names=("image",), output_names=("logits",),
    example_inputs=_ex_images32, default_epochs=10, tags=("classification", "vision", "edge"),
))
