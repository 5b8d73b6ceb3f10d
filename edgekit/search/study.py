"""The Optuna side of a search: one multi-objective study per target (latency, accuracy,
size), stored in ``OUT/study.db`` (SQLite), so a killed search resumes where it stopped.

Each finished trial is told to the study at once, so it is in the database before the next
one is asked for: a crash loses only trials still running. Those are found on resume (state
RUNNING), marked failed with the reason, and their points asked again first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._deps import require

__all__ = ["STUDY_FILE", "completed", "in_db", "objectives", "open_study", "recover",
           "record_failure", "record_result", "require_optuna"]

STUDY_FILE = "study.db"
#: Opening attempts of the storage (see :func:`_storage`).
STORAGE_TRIES = 5


def require_optuna() -> Any:
    return require("optuna", backend="search (Optuna)", extra="distributed")


def objectives(higher_is_better: bool) -> list[str]:
    """Directions of (latency ms, task metric, size bytes)."""
    return ["minimize", "maximize" if higher_is_better else "minimize", "minimize"]


def storage_url(out_dir: Path) -> str:
    return f"sqlite:///{(Path(out_dir) / STUDY_FILE).resolve()}"


def _storage(out_dir: Path) -> Any:
    """Optuna's storage on ``out_dir/study.db``. Opening a new file writes its schema version;
    a second process opening the same new file at that moment (a report, a second search)
    makes one of the two fail on the version row: retried, the schema is then there."""
    optuna = require_optuna()
    from sqlalchemy.exc import IntegrityError, OperationalError

    attempt = 0
    while True:
        try:
            return optuna.storages.RDBStorage(
                storage_url(out_dir), engine_kwargs={"connect_args": {"timeout": 60}})
        except (IntegrityError, OperationalError):
            attempt += 1
            if attempt >= STORAGE_TRIES:
                raise
            time.sleep(0.2 * attempt)


def open_study(out_dir: Path, target: str, *, higher_is_better: bool, seed: int = 0) -> Any:
    """The study for ``target`` in ``out_dir/study.db``, created or loaded."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(out_dir)
    return optuna.create_study(
        study_name=target, storage=storage, directions=objectives(higher_is_better),
        load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=seed))


def in_db(out_dir: Path) -> list[str]:
    """Names of the studies (targets) stored in ``out_dir/study.db``."""
    optuna = require_optuna()
    if not (Path(out_dir) / STUDY_FILE).is_file():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(_storage(out_dir))]


def completed(study: Any) -> list[Any]:
    optuna = require_optuna()
    return list(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def recover(study: Any) -> int:
    """Trials left RUNNING by a killed search: mark them failed ("interrupted") and queue
    their points to be asked first. Returns how many."""
    optuna = require_optuna()
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "error",
                                           "interrupted: the search stopped while it ran")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(dict(t.params))  # each stale trial is failed once: no repeats
    return len(stale)


def _set_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def record_result(study: Any, trial: Any, point: dict[str, Any], build: dict[str, Any],
                  timing: dict[str, Any]) -> None:
    """Tell a measured trial: values (latency, metric, size) and where each step ran."""
    _set_attrs(trial, {
        "point": point, "accuracy": build["accuracy"], "drop": build["drop"],
        "size_bytes": build["size_bytes"], "latency_ms": timing["latency_ms"],
        "latency": timing.get("latency"), "runtime": timing.get("runtime"),
        "build_node": build["node"], "time_node": timing["node"], "bundle": build["out"],
        "threads": build.get("threads"), "build_s": build.get("build_s"),
        "time_s": timing.get("time_s")})
    study.tell(trial, [timing["latency_ms"], build["accuracy"], build["size_bytes"]])


def record_failure(study: Any, trial: Any, point: dict[str, Any], error: str,
                   **attrs: Any) -> None:
    optuna = require_optuna()
    _set_attrs(trial, {"point": point, "error": error, **attrs})
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
