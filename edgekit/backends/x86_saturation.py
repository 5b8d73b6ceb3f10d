"""Whether ONNX Runtime's uint8 x int8 kernels saturate on this machine.

On x86-64 without VNNI (AVX2, AVX-512F), ONNX Runtime's MLAS multiplies uint8 activations by
int8 weights with ``VPMADDUBSW``, which adds two neighbouring products into a *saturating*
int16: ``255 * 127 * 2`` overflows it, so a layer whose activations sit near the top of their
range and whose weights are large loses its output (ONNX Runtime's quantization docs: "try
reduce_range or U8U8"). With 7-bit weights (``reduce_range``: ``-64..64``) two products stay
under ``2 * 255 * 64 = 32640``. VNNI (``VPDPBUSD``, AVX512-VNNI or AVX-VNNI) sums into int32
and never saturates; neither do ARM's kernels.

``reduce_range = "auto"`` (QuantConfig) turns 7-bit weights on when :func:`u8s8_saturates`
says this machine is such a CPU: the machine an x86 build is gated and timed on is taken as
the target's (as the latency check does)."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

__all__ = ["cpu_flags", "u8s8_saturates"]

_X86 = ("x86_64", "amd64", "i686", "i386")
_VNNI = ("avx512_vnni", "avx_vnni")


@lru_cache(maxsize=8)  # read once per file: every ONNX Runtime int8 build asks
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); None where it cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def u8s8_saturates(machine: str | None = None,
                   flags: set[str] | frozenset[str] | None = None) -> tuple[bool, str]:
    """(whether ONNX Runtime's u8s8 int8 kernels saturate here, why), from the machine type
    and the CPU flags (default: this machine's)."""
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        return False, f"{machine}: ONNX Runtime's int8 kernels here do not saturate"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return False, f"{machine}: CPU flags unreadable, VNNI assumed"
    has = sorted(f for f in _VNNI if f in flags)
    if has:
        return False, f"{machine} with {'/'.join(has)}: VPDPBUSD sums into int32"
    return True, (f"{machine} without VNNI ({'AVX2' if 'avx2' in flags else 'no AVX2'}): "
                  "VPMADDUBSW saturates int16 pairs of uint8 x int8 products")
