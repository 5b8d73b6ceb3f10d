"""Search and sweeps: the fastest artifact per target within an accuracy budget, by latency
measured on the target.

The package is callable: ``edgekit.search("cnn", targets=[...], out_dir=...)`` is
:func:`edgekit.search.runner.search`; :func:`edgekit.sweep` (:func:`.sweep.sweep`) runs a
plain grid over a recipe's fields. Modules: :mod:`.source` (the model: zoo, user factory with
its data, recipe), :mod:`.space` (what is searched), :mod:`.trial`
(build and time one point), :mod:`.scheduler` (Ray tasks and resources), :mod:`.study` (Optuna,
resumable SQLite storage), :mod:`.report` (JSON, Markdown, Pareto PNG), :mod:`.runner` (the
loop). Ray and Optuna are imported only when a search runs (``edgekit[distributed]``).
"""

import sys as _sys
import types as _types
from typing import Any as _Any

__all__ = ["search"]


def search(*args: _Any, **kwargs: _Any) -> dict:
    """Run a search; see :func:`edgekit.search.runner.search`."""
    from .runner import search as _search

    return _search(*args, **kwargs)


class _CallableModule(_types.ModuleType):
    def __call__(self, *args: _Any, **kwargs: _Any) -> dict:
        return search(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
