"""The model zoo and its registry."""

from __future__ import annotations

import torch

from ..errors import UnknownNameError
from .registry import _REGISTRY, ModelSpec, register


def get_spec(name: str) -> ModelSpec:
    """The zoo entry registered as ``name`` (UnknownNameError with suggestions otherwise)."""
    _load_zoo()
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, _REGISTRY)
    return _REGISTRY[name]


def list_models(*, realistic: bool = False) -> list[str]:
    """Registered model names, sorted. The realistic-scale entries (family ``"realistic"``:
    deployment-size architectures that take minutes each to train) are listed only with
    ``realistic=True``; :func:`get_spec` and :func:`build` find every entry either way."""
    _load_zoo()
    return sorted(n for n, s in _REGISTRY.items() if realistic or s.family != "realistic")


def _load_zoo() -> None:
    # Importing the zoo package registers every entry once.
    from . import zoo  # noqa: F401


def build(name: str, **kwargs) -> torch.nn.Module:
    """A fresh, randomly initialised zoo model in eval mode (kwargs go to its factory).

    The model remembers its zoo name in ``model.edgekit_name`` so ``edgekit.train.fit`` can find
    the spec's own training hook (e.g. the GAN's adversarial loop).
    """
    spec = get_spec(name)
    model = spec.factory(**kwargs)
    model.edgekit_name = spec.name
    return model.eval()


def output_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers whose output width is fixed by the model's outputs (classifier heads,
    decoder output layers, latent projections): pruning must not shrink them.

    Read from the class attribute ``OUTPUT_LAYERS`` (attribute names); falls back to
    ``model.head`` when present.
    """
    names = getattr(model, "OUTPUT_LAYERS", None) or (("head",) if hasattr(model, "head") else ())
    layers = [getattr(model, n, None) for n in names]
    return [m for m in layers if isinstance(m, torch.nn.Module)]


__all__ = ["ModelSpec", "register", "get_spec", "list_models", "build", "output_layers"]
