"""PyTorch module names (``named_modules``' dotted paths) as every floor compares them."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["in_modules"]


def in_modules(name: str, modules: Iterable[str]) -> bool:
    """``name`` is one of ``modules`` or a module inside one of them (``"a.b"`` is inside
    ``"a"``, ``"ab"`` is not). The root's empty name is inside nothing."""
    return bool(name) and any(name == k or name.startswith(k + ".") for k in modules)
