"""A content-addressed build cache: equal inputs -> the bundle built before, without rebuilding.

A cache entry is a finished bundle folder stored under ``<cache>/<key[:2]>/<key>``; the
cache folder is ``$EDGEKIT_CACHE_DIR`` or ``~/.cache/edgekit``. Keys are sha256 digests of a
canonical JSON document of everything that decides the bundle's bytes:

``compress_key`` (any model handed to :func:`edgekit.compress`)
    the model's class (module + qualified name), every state_dict tensor (name, dtype, shape,
    sha256 of its bytes, in sorted name order), the example inputs (shape, dtype, sha256),
    input/output names, bundle name, task (name, kind, metric) and ``verify_samples``, the
    recipe and history records, the target profiles' contents, the tool versions (edgekit,
    python, torch, numpy and each backend's packages) and a fingerprint of edgekit's own
    source and data files.

``recipe_key`` (a recipe that trains a zoo model; computed before training, so a hit skips it)
    the normalised recipe, the sha256 of the weights file it names, the target profiles'
    contents, the tool versions and the edgekit source fingerprint (which covers the zoo
    model code, the training code and the bundled datasets).

``decisions_key`` (one int8 target of a build)
    the ``compress_key`` of the build, the target's profile, the quantization config and the
    calibration data (sha256 of every batch). Under it a :class:`DecisionFile`
    (``<cache>/decisions/<key[:2]>/<key>.json``) keeps what the int8 search chose where a
    timing decided (the source, the latency variant, the layers kept in float), so a rebuild
    of the same inputs reuses the choice instead of timing again and gives the same bytes.

Entries are written atomically (copy to a temporary folder, then one rename) and checked
against their own checksums before use; a damaged entry is dropped and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .bundle import Bundle, load_bundle, remove_dead_partials, staged_bundle
from .errors import BundleError, EdgekitError
from .fsio import CHUNK
from .profiles import TargetProfile

__all__ = ["DecisionFile", "cache_dir", "compress_key", "decisions_key", "recipe_key", "restore",
           "source_fingerprint", "store"]

KEY_SCHEMA = 1


def cache_dir(cache: bool | str | Path = True) -> Path:
    """The cache folder: ``cache`` when it is a path, else ``$EDGEKIT_CACHE_DIR`` or
    ``~/.cache/edgekit``."""
    if isinstance(cache, (str, Path)) and not isinstance(cache, bool):
        return Path(cache)
    env = os.environ.get("EDGEKIT_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "edgekit"


@lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """sha256 over edgekit's own files (code, bundled data, CMake module), by relative path."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def tool_versions(profiles: Sequence[TargetProfile]) -> dict[str, str]:
    from .backends import get_backend

    versions = {
        "edgekit": __version__,
        "edgekit_source": source_fingerprint(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for profile in profiles:
        versions.update(get_backend(profile.backend).versions())
    return versions


def _tensor_digest(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return {
        "dtype": str(t.dtype).replace("torch.", ""),
        "shape": list(t.shape),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def _digest(document: dict[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compress_key(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    in_names: Sequence[str],
    out_names: Sequence[str],
    name: str,
    task: Any,
    verify_samples: int,
    recipe: dict[str, Any] | None,
    history: Sequence[dict[str, Any]],
    profiles: Sequence[TargetProfile],
) -> str:
    state = model.state_dict()
    cls = type(model)
    document = {
        "schema": KEY_SCHEMA,
        "kind": "compress",
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "state_dict": {k: _tensor_digest(state[k]) for k in sorted(state)},
        "inputs": [_tensor_digest(t) for t in inputs],
        "input_names": list(in_names),
        "output_names": list(out_names),
        "name": name,
        "task": None if task is None else [task.name, task.kind, task.metric],
        "verify_samples": verify_samples if task is not None else None,
        "recipe": recipe or {},
        "history": list(history),
        "profiles": [p.to_json() for p in profiles],
        "versions": tool_versions(profiles),
    }
    return _digest(document)


def recipe_key(
    recipe: dict[str, Any], *, weights_sha256: str | None, profiles: Sequence[TargetProfile]
) -> str:
    document = {
        "schema": KEY_SCHEMA,
        "kind": "recipe",
        "recipe": recipe,
        "weights_sha256": weights_sha256,
        "profiles": [p.to_json() for p in profiles],
        "versions": tool_versions(profiles),
    }
    return _digest(document)


def _entry(key: str, cache: bool | str | Path) -> Path:
    return cache_dir(cache) / key[:2] / key


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[edgekit] {message}", file=sys.stderr, flush=True)


def restore(
    key: str, out_dir: str | Path, *, cache_dir: bool | str | Path = True, progress: bool = True,
    overwrite: bool = False,
) -> Bundle | None:
    """Copy the cached bundle for ``key`` into ``out_dir`` (atomically); None on a miss."""
    entry = _entry(key, cache_dir)
    if not entry.is_dir() and not entry.is_symlink():
        _log(progress, f"cache miss {key[:16]}")
        return None
    try:
        if entry.is_symlink() or entry.parent.is_symlink():
            raise BundleError(f"{entry} is reached through a symbolic link")
        files = _entry_files(entry)  # before reading anything in it
        cached = load_bundle(entry)
        cached.check_files()
        _check_listed(files, cached)
    except EdgekitError as exc:
        _log(progress, f"cache entry {key[:16]} is damaged ({exc.message}); rebuilding")
        _drop(entry)
        return None
    try:
        with staged_bundle(Path(out_dir), overwrite=overwrite) as stage:
            for rel in files:
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                _copy_regular(entry / rel, stage / rel)
    except _Damaged as exc:  # the entry changed under us (a link swapped in): rebuild
        _log(progress, f"cache entry {key[:16]} is damaged ({exc.message}); rebuilding")
        _drop(entry)
        return None
    _log(progress, f"cache hit {key[:16]}: bundle restored to {out_dir} without rebuilding")
    bundle = load_bundle(out_dir)
    bundle.cache_hit = True
    return bundle


def _entry_files(entry: Path) -> list[str]:
    """The entry's files (relative POSIX paths), if it holds only folders and regular files:
    a symbolic link anywhere (to a file or a folder, inside or out), a FIFO or a device makes
    it damaged (:class:`BundleError`)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(entry, followlinks=False):
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            rel = path.relative_to(entry).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{rel} is a symbolic link (cache entries hold regular files "
                                  "only)")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"{rel} is not a regular file")
            files.append(rel)
    return sorted(files)


def _check_listed(files: list[str], cached: Bundle) -> None:
    """Every file of the entry is one its manifest lists (edgekit stores nothing else)."""
    listed = cached.manifest.listed_paths()
    for rel in files:
        if rel not in listed:
            raise BundleError(f"{rel} is not listed in the entry's manifest")


class _Damaged(BundleError):
    """A cache entry that changed while it was being copied."""


def _copy_regular(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new ``dst`` without following a link at ``src`` (``O_NOFOLLOW``) and
    only if the opened file is regular, so a link swapped in after the walk is refused."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(src, flags)
    except OSError as exc:
        raise _Damaged(f"{src.name} cannot be opened as a regular file "
                       f"({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Damaged(f"{src.name} is not a regular file")
        with open(dst, "xb") as out:
            shutil.copyfileobj(fh, out, CHUNK)


def _drop(entry: Path) -> None:
    """Remove a damaged entry; a link (the entry or its shard folder) is removed itself,
    never what it points at."""
    for path in (entry.parent, entry):
        if path.is_symlink():
            path.unlink(missing_ok=True)
            return
    shutil.rmtree(entry, ignore_errors=True)


def store(key: str, bundle_dir: str | Path, *, cache_dir: bool | str | Path = True) -> None:
    """Copy a finished bundle into the cache. A cache that cannot be written is not an error."""
    entry = _entry(key, cache_dir)
    if entry.is_dir():
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_partials(entry.parent)  # staging of killed runs; the pid names its owner
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.partial-{os.getpid()}-",
                                    dir=entry.parent))
        try:
            shutil.copytree(bundle_dir, tmp / "b", symlinks=True)  # never copy through a link
            os.rename(tmp / "b", entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # another process stored it first, or the cache is read-only


def decisions_key(build_key: str, profile: TargetProfile, config: dict[str, Any],
                  calibration: Sequence[Sequence[np.ndarray]]) -> str:
    """The key of one int8 target's decisions: the build's ``compress_key``, the target's
    profile, the quantization config (``QuantConfig.to_json()``) and the calibration data."""
    calib = hashlib.sha256()
    for batch in calibration:
        for array in batch:
            a = np.ascontiguousarray(array)
            calib.update(f"{a.dtype.str}{a.shape}".encode())
            calib.update(a.tobytes())
    return _digest({"schema": KEY_SCHEMA, "kind": "int8-decisions", "build": build_key,
                    "profile": profile.to_json(), "quantization": config,
                    "calibration": calib.hexdigest()})


class DecisionFile:
    """One int8 target's recorded decisions: a JSON object in the cache folder, written
    atomically; a missing, unreadable or malformed file reads as None (the search runs)."""

    def __init__(self, key: str, cache: bool | str | Path = True) -> None:
        self.path = cache_dir(cache) / "decisions" / key[:2] / f"{key}.json"
        self.where = f"cache {key[:16]}"

    def load(self) -> dict[str, Any] | None:
        """The recorded object, or None."""
        try:
            if self.path.is_symlink() or not self.path.is_file():
                return None
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, record: dict[str, Any]) -> None:
        """Write ``record`` (temp file + rename). A cache that cannot be written is not an
        error."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(record, fh, indent=1)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, TypeError, ValueError):
            pass
