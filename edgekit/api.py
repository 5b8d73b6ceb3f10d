"""What build scripts call: build a zoo or user model into a verified bundle."""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import sysconfig
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import Bundle
from .errors import UsageError
from .manifest import StageRecord, add_stage
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
    overwrite: bool = False,
) -> tuple[Bundle, torch.nn.Module]:
    """Train a zoo model on its real task, then export, verify and bundle it.

    Returns the bundle and the trained PyTorch model (the reference the bundle was verified
    against). ``overwrite``: see :func:`edgekit.compress`.
    """
    from .bundle import check_out_dir
    from .profiles import resolve_targets
    from .train import evaluate, fit

    spec = get_spec(name)
    check_out_dir(out_dir, overwrite=overwrite)  # fail fast, before any training
    profiles = resolve_targets(targets)
    torch.manual_seed(seed)
    model = spec.factory(**(model_kwargs or {}))
    task = spec.task()
    history: list[StageRecord] = []
    epochs_run = 0
    if train:
        start = time.perf_counter()
        result = fit(model, task, epochs=epochs, seed=seed, progress=progress, spec=spec)
        epochs_run = len(result["loss"])
        add_stage(history, "train", task=task.name, epochs=epochs_run, metric=task.metric,
                  val=round(float(result["best_val"]), 4),
                  test=round(evaluate(model, task.test, task), 4),
                  seconds=round(time.perf_counter() - start, 2))
    model.eval()
    recipe = {
        "model": name,
        "model_kwargs": model_kwargs or {},
        "train": train,
        "epochs": epochs_run,
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
        overwrite=overwrite,
    )
    return bundle, model


#: Modules whose callables are never model factories (calling them could end the process).
_NOT_FACTORIES = {"builtins", "posix", "nt", "os", "sys", "subprocess", "signal", "ctypes",
                  "shutil", "multiprocessing", "faulthandler", "_thread", "threading", "pty"}


def _stdlib(module_name: str) -> bool:
    """Whether ``module_name`` is a builtin or standard-library module (by where it lives, so a
    user's own ``test`` package is not mistaken for the standard library's)."""
    if module_name.split(".")[0] in _NOT_FACTORIES or module_name in sys.builtin_module_names:
        return True
    mod = sys.modules.get(module_name)
    file = getattr(mod, "__file__", None)
    if mod is None or file is None:
        return mod is not None  # a loaded module without a file is builtin
    where = Path(file).resolve()
    libs = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")}
    return "site-packages" not in where.parts and any(lib in where.parents for lib in libs)


def _factory_home(obj: Any) -> str | None:
    """The module a callable was defined in (for functools.partial: its function's)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.ismethod(obj):
        obj = obj.__func__
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return None
    return getattr(obj, "__module__", None) or ""


def load_factory(ref: str) -> torch.nn.Module:
    """Build a user model from ``package.module:factory`` (a function or class, no arguments).

    Before calling it, the factory is checked statically: it must be a Python function or
    class (or a ``functools.partial`` of one) defined in a module outside the Python standard
    library, so ``os:abort``, ``sys:exit`` or ``subprocess:call`` are refused by name and never
    run. This cheap check was chosen over calling the factory in a child process first: a
    child would import and run the user's code twice (slow for real models, and side effects
    twice) and still could not vouch for the call in this process. Exceptions raised by the
    factory (and ``sys.exit`` from it) become a :class:`UsageError` naming the factory and
    where it failed; a result that is not a ``torch.nn.Module`` is refused.
    """
    if ":" not in ref:
        raise UsageError(
            f"{ref!r} is neither a zoo model nor a 'module:factory' reference",
            hint="e.g. `mypkg.models:build_net`; the module must be importable",
        )
    module_name, _, attr = ref.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    hint = "give a function or class of your own that returns a torch.nn.Module, e.g. " \
        "`mypkg.models:build_net`"
    if module_name.split(".")[0] in _NOT_FACTORIES:
        raise UsageError(f"the factory {ref} is in the Python standard library module "
                         f"{module_name!r}, not a model factory: refused without calling it",
                         hint=hint)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UsageError(f"module {module_name!r} has no callable {attr!r}")
    home = _factory_home(factory)
    if home is None:
        raise UsageError(f"the factory {ref} is a {type(factory).__name__}, not a Python "
                         "function or class: refused without calling it", hint=hint)
    if _stdlib(module_name) or _stdlib(home):
        raise UsageError(f"the factory {ref} is {home}.{getattr(factory, '__name__', attr)} "
                         "from the Python standard library, not a model factory: refused "
                         "without calling it", hint=hint)
    try:
        model = factory()
    except SystemExit as exc:
        raise UsageError(f"the factory {ref} called sys.exit({exc.code!r}) when called; it must "
                         "return a torch.nn.Module", hint=hint) from None
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        at = f" at {frames[-1].filename}:{frames[-1].lineno}" if len(frames) > 1 else ""
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise UsageError(f"the factory {ref} raised {type(exc).__name__}{at} when called with "
                         f"no arguments{': ' + detail if detail else ''}",
                         hint="the factory must take no arguments and return a "
                         "torch.nn.Module") from exc
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
