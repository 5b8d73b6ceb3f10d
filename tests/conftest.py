import torch
from torch import nn


class TinyNet(nn.Module):
    """A small conv classifier on 1x8x8 images (the digits' native shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()
