"""Classic classifiers on the digits: a small CNN, an LSTM over rows, a transformer over pixels."""

from __future__ import annotations

import torch
from torch import nn

from ...data import tasks
from ..registry import ModelSpec, register
from ._common import factory, gen


class DigitCNN(nn.Module):
    """conv 32 (3x3, pad 1) -> ReLU -> maxpool 2 -> dense 64 -> ReLU -> dense 10; input 1x8x8."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, num_classes: int = 10, channels: int = 32, hidden: int = 64,
                 in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels * (image_size // 2) ** 2, hidden)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv(image)))
        return self.head(self.relu2(self.fc(self.flatten(x))))


class RowLSTM(nn.Module):
    """LSTM over the 8 image rows (8 steps x 8 features), last hidden state -> dense 10."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, num_classes: int = 10, input_size: int = 8, hidden: int = 64,
                 num_layers: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])


class PixelTransformer(nn.Module):
    """Transformer encoder over the 64 pixel tokens (values 0..16), mean-pooled -> dense 10."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, num_classes: int = 10, vocab_size: int = 17, seq_len: int = 64,
                 d_model: int = 32, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(1, seq_len, d_model))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=dropout,
                                       batch_first=True)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x.mean(dim=1)))


def _ex_images8(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 1, 8, 8, generator=gen(0)),)


def _ex_rows(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 8, 8, generator=gen(0)),)


def _ex_tokens(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, 17, (batch, 64), generator=gen(0), dtype=torch.int64),)


register(ModelSpec(
    name="cnn", family="classic",
    description="small CNN on 8x8 digits (conv32-pool-dense64-dense10)",
    factory=factory(DigitCNN, "cnn"), task=lambda: tasks.digit_classification("digits8"),
    input_names=("image",), output_names=("logits",), example_inputs=_ex_images8,
    default_epochs=30, tags=("classification", "vision"),
))
register(ModelSpec(
    name="lstm", family="classic",
    description="LSTM (hidden 64) over the 8 rows of a digit",
    factory=factory(RowLSTM, "lstm"), task=lambda: tasks.digit_classification("digit_rows"),
    input_names=("rows",), output_names=("logits",), example_inputs=_ex_rows,
    default_epochs=80, tags=("classification", "sequence"),
))
register(ModelSpec(
    name="transformer", family="classic",
    description="2-layer transformer encoder over the 64 pixel tokens",
    factory=factory(PixelTransformer, "transformer"),
    task=lambda: tasks.digit_classification("digit_tokens"),
    input_names=("tokens",), output_names=("logits",), example_inputs=_ex_tokens,
    default_epochs=30, tags=("classification", "sequence", "attention"),
))
