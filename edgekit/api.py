"""What build scripts call: build a zoo or user model into a verified bundle."""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import Bundle
from .errors import UsageError
from .models import get_spec
from .pipeline import compress
from .profiles import TargetProfile

__all__ = ["build_zoo_model", "load_factory", "parse_input_spec"]


def build_zoo_model(
    name: str,
    *,
    targets: Sequence[str | Path | TargetProfile],
    out_dir: str | Path,
    epochs: int | None = None,
    train: bool = True,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[Bundle, torch.nn.Module]:
    """Train a zoo model on its real task, then export, verify and bundle it.

    Returns the bundle and the trained PyTorch model (the reference the bundle was verified
    against).
    """
    from .pipeline import resolve_targets
    from .train import evaluate, fit

    spec = get_spec(name)
    profiles = resolve_targets(targets)  # fail fast, before any training
    torch.manual_seed(seed)
    model = spec.factory(**(model_kwargs or {}))
    task = spec.task()
    history: list[dict[str, Any]] = []
    if train:
        start = time.perf_counter()
        result = fit(model, task, epochs=epochs, seed=seed, progress=progress, spec=spec)
        history.append(
            {
                "stage": "train",
                "task": task.name,
                "epochs": len(result["loss"]),
                "metric": task.metric,
                "val": round(float(result["best_val"]), 4),
                "test": round(evaluate(model, task.test, task), 4),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    model.eval()
    recipe = {
        "model": name,
        "model_kwargs": model_kwargs or {},
        "train": train,
        "epochs": history[0]["epochs"] if history else 0,
        "seed": seed,
        "targets": [p.name for p in profiles],
    }
    bundle = compress(
        model,
        spec.example_inputs(1),
        targets=profiles,
        out_dir=out_dir,
        name=name,
        input_names=spec.input_names,
        output_names=spec.output_names,
        task=task,
        recipe=recipe,
        history=history,
        progress=progress,
    )
    return bundle, model


def load_factory(ref: str) -> torch.nn.Module:
    """Build a user model from ``package.module:factory`` (a function or class, no arguments)."""
    if ":" not in ref:
        raise UsageError(
            f"{ref!r} is neither a zoo model nor a 'module:factory' reference",
            hint="e.g. `mypkg.models:build_net`; the module must be importable",
        )
    module_name, _, attr = ref.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UsageError(f"module {module_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


def parse_input_spec(text: str) -> torch.Tensor:
    """``1x3x32x32`` or ``int64:1x64`` -> a deterministic example tensor of that shape."""
    dtype_name, _, shape_text = text.rpartition(":")
    dtype_name = dtype_name or "float32"
    if dtype_name not in _DTYPES or not re.fullmatch(r"\d+(x\d+)*", shape_text):
        raise UsageError(
            f"bad input shape {text!r}",
            hint="write it as 1x3x32x32, optionally with a dtype: int64:1x64 "
            f"(dtypes: {', '.join(_DTYPES)})",
        )
    shape = tuple(int(d) for d in shape_text.split("x"))
    if any(d == 0 for d in shape):
        raise UsageError(f"bad input shape {text!r}: dimensions must be positive")
    gen = torch.Generator().manual_seed(0)
    if _DTYPES[dtype_name].is_floating_point:
        return torch.rand(shape, generator=gen)
    return torch.randint(0, 10, shape, generator=gen, dtype=_DTYPES[dtype_name])
