import os
import signal

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _trace_sigint(request):
    """With ``EDGEKIT_TRACE_SIGINT=FILE``, each test after which the process's SIGINT handler
    differs from before is appended to FILE (something run in-process that leaves Ctrl-C
    ignored is found by name)."""
    path = os.environ.get("EDGEKIT_TRACE_SIGINT")
    before = signal.getsignal(signal.SIGINT) if path else None
    yield
    if path and signal.getsignal(signal.SIGINT) != before:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{request.node.nodeid}: {before} -> {signal.getsignal(signal.SIGINT)}\n")


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


def tiny_tflite_bytes(size: int = 24, fill: bytes = b"") -> bytes:
    """A structurally valid TFLite flatbuffer of exactly ``size`` bytes: an empty Model
    (version 3) and, from 64 bytes on, one buffer whose data (the tail of ``fill``, or zeros)
    runs to the end of the file, so cutting the file breaks it. Passes edgekit's file checks;
    runs nowhere (no subgraphs)."""
    import struct

    fill = fill or bytes(size)
    if size < 64:
        head = (struct.pack("<I", 16) + b"TFL3"            # root table at 16, identifier
                + struct.pack("<HHH", 6, 8, 4) + b"\0\0"   # vtable: 6 bytes, table 8, field 0
                + struct.pack("<iI", 8, 3))                # table: vtable 8 back, version 3
        return head + fill[len(head):size]
    head = (struct.pack("<I", 24) + b"TFL3"
            # Model vtable at 8: 14 bytes, table 12 bytes, version at +4, buffers (field 4) at +8
            + struct.pack("<7H", 14, 12, 4, 0, 0, 0, 8) + b"\0\0"
            # Model table at 24: vtable 16 back, version 3, buffers vector at 36 (36 - 32)
            + struct.pack("<iII", 16, 3, 4)
            # buffers vector at 36: one Buffer table at 52 (52 - 40)
            + struct.pack("<II", 1, 12)
            # Buffer vtable at 44: 6 bytes, table 8 bytes, data (field 0) at +4
            + struct.pack("<3H", 6, 8, 4) + b"\0\0"
            # Buffer table at 52: vtable 8 back, data vector at 60 (60 - 56)
            + struct.pack("<iI", 8, 4)
            # data vector at 60: size - 64 bytes
            + struct.pack("<I", size - 64))
    return head + fill[len(head):size]
