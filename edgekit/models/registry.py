"""The zoo registry: each model name maps to a factory, its I/O names and its real task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..data.task import Task


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry.

    ``factory(**kwargs)`` builds a fresh, randomly initialised ``nn.Module`` in eval mode whose
    ``forward`` takes the inputs named by ``input_names`` (in order) and returns one tensor or a
    tuple of tensors named by ``output_names``. ``task()`` builds the real task the model is
    trained and evaluated on; its inputs match ``input_names``. ``example_inputs(batch)`` gives
    deterministic inputs of the right shapes and dtypes.
    ``fit`` optionally replaces the generic training loop (e.g. a GAN's alternating updates).
    """

    name: str
    family: str
    description: str
    factory: Callable[..., torch.nn.Module]
    task: Callable[[], Task]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    fit: Callable[..., Any] | None = None
    default_epochs: int = 5
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec
