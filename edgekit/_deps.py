"""Import optional heavy packages where they are used, with an error naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendMissingError


def require(module: str, *, backend: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`BackendMissingError` naming ``edgekit[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a broken install of it
        if isinstance(exc, ModuleNotFoundError) and exc.name and not module.startswith(exc.name):
            # The package is there but one of its own dependencies is not.
            raise BackendMissingError(
                backend, f"Python package {exc.name!r} (needed by {module}) is not installed", extra
            ) from exc
        raise BackendMissingError(
            backend, f"Python package {module!r} is not installed", extra
        ) from exc
