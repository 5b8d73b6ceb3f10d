"""Which tensors an int8 build puts on the int8 grid (``QuantConfig.int8_scope``), decided for
every runtime alike: the sources ``"auto"`` compares and the alternative a missed gate tries.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch

__all__ = ["has_layer_norm", "int8_scope_alternative", "scope_sources"]


def scope_sources(name: str, config: Any, model: torch.nn.Module | None
                  ) -> list[tuple[str, dict[str, Any]]]:
    """``int8_scope = "auto"``: for a model with a layer norm, the QDQ model with Q/DQ on every
    op and with Q/DQ on the layer inputs only, both built; the source choice keeps the faster
    unless the other is more faithful within the slowdown its gain allows
    (``benchmarks/results/int8_scope/scope_latency.md``: "layers" 4-28 dB closer to fp32 on
    eight transformers, faster on most, 64% slower on MobileViT, where it gains nothing).
    Elsewhere one source: every op (``"auto"`` without a layer norm), or the configured
    scope."""
    if config.int8_scope != "auto" or model is None or not has_layer_norm(model):
        return [(name, {})]
    return [(f"{name}, every op", {"int8_scope": "all"}),
            (f"{name}, layer inputs only", {"int8_scope": "layers"})]


def int8_scope_alternative(config: Any, model: torch.nn.Module
                           ) -> list[tuple[str, dict[str, Any]]]:
    """``int8_scope = "layers"`` as an alternative realisation where the build quantized
    every op of a model with a layer norm (a transformer's residual stream): a vision
    transformer whose class token the stream's one grid erased (a random DeiT: held-out
    SQNR 2 dB) passes with its adds and norms in float."""
    return [("Q/DQ on layer inputs only", {"int8_scope": "layers"})] \
        if config.int8_scope in ("all", "auto") and has_layer_norm(model) else []


def has_layer_norm(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a layer norm: a residual stream whose rounding a norm magnifies.
    A layer-norm module (``nn.LayerNorm``, ``nn.RMSNorm``, or a class whose name ends in
    LayerNorm or RMSNorm), or a module whose ``forward`` calls ``layer_norm`` / ``rms_norm``
    itself (``F.layer_norm`` on its own parameters; read from its source)."""
    return any(isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))
               or type(m).__name__.endswith(("LayerNorm", "RMSNorm"))
               or _forward_calls_norm(type(m)) for m in model.modules())


#: ``F.layer_norm(``, ``torch.nn.functional.rms_norm(``, ``torch.layer_norm(``...
_NORM_CALL = re.compile(r"(?:\bF|\bfunctional|\btorch)\.(?:layer_norm|rms_norm)\s*\(")


_NORM_CALLERS: dict[type, bool] = {}


def _forward_calls_norm(cls: type) -> bool:
    """Whether ``cls.forward``'s source calls a functional layer or RMS norm (torch.nn's own
    modules are known by type and not read); cached per class."""
    if cls not in _NORM_CALLERS:
        try:
            found = not cls.__module__.startswith("torch.") and _NORM_CALL.search(
                inspect.getsource(cls.forward)) is not None  # type: ignore[attr-defined]
        except (OSError, TypeError):  # no source (compiled, interactive): not known
            found = False
        _NORM_CALLERS[cls] = found
    return _NORM_CALLERS[cls]
