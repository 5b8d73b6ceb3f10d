"""Bundles: one folder per build, with every artifact, reference data and ``manifest.json``.

Layout::

    <bundle>/manifest.json            schema version, versions, recipe, I/O specs, sha256s,
                                      verification numbers, the history of stages
    <bundle>/reference.npz            reference inputs and PyTorch outputs
    <bundle>/<target>/model.<ext>     one folder per target profile

Bundles are written through :func:`staged_bundle`: everything goes into a hidden staging
folder next to the destination, which replaces the destination in one rename only when the
build succeeded. A failed or interrupted build leaves the previous bundle untouched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Artifact, Session, TensorSpec, get_backend
from .errors import BundleError, OutputPathError, UnknownNameError

__all__ = ["Bundle", "load_bundle", "staged_bundle", "sha256_file", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE = "reference.npz"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(root: Path, rel: str) -> dict[str, Any]:
    path = root / rel
    return {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Deterministic JSON (sorted keys, fixed indent), written atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_writable(parent: Path) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputPathError(
            f"cannot create output folder {parent}: a file is in the way ({exc.strerror})",
            hint="choose another output folder",
        ) from exc
    except OSError as exc:
        raise OutputPathError(
            f"cannot create output folder {parent}: {exc.strerror}",
            hint="choose a folder you can write to",
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"output folder {parent} is not writable", hint="choose a folder you can write to"
        )


_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EROFS, errno.EACCES, errno.EPERM}


def write_failure(exc: BaseException, where: Path) -> str | None:
    """A full disk / quota / read-only or unwritable output behind ``exc`` (anywhere in its
    cause chain, including converters that wrap the OSError), described; else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    where_s = str(Path(where).absolute())
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL:
            return f"{os.strerror(cur.errno).lower()} ({cur.filename or 'while writing'})"
        if isinstance(cur, OSError) and cur.errno in _DENIED and cur.filename \
                and str(Path(str(cur.filename)).absolute()).startswith(where_s):
            return f"{os.strerror(cur.errno).lower()} ({cur.filename})"
        text = str(cur)
        for needle in ("No space left on device", "Disk quota exceeded", "File too large"):
            if needle in text:
                return needle.lower()
        cur = cur.__cause__ or cur.__context__
    return None


@contextmanager
def staged_bundle(dest: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it atomically becomes ``dest``.

    On any exception (including KeyboardInterrupt) the staging folder is removed and ``dest``,
    if it existed, is left exactly as it was.
    """
    dest = Path(dest).absolute()
    _check_writable(dest.parent)
    if dest.exists() and not dest.is_dir():
        raise OutputPathError(f"{dest} exists and is not a folder", hint="choose another output path")
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as exc:
        raise OutputPathError(f"cannot write in {dest.parent}: {exc.strerror}") from exc
    try:
        yield stage
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        failed = write_failure(exc, dest.parent)
        if failed is not None and not isinstance(exc, OutputPathError):
            kept = (f"the previous bundle at {dest} is untouched" if dest.exists()
                    else f"nothing was written at {dest}")
            full = any(w in failed for w in ("space", "quota", "large"))
            raise OutputPathError(
                f"writing the bundle in {dest.parent} failed: {failed}; the partial bundle was "
                f"removed and {kept}",
                hint="free some disk space (or choose another --out) and build again" if full
                else "choose a folder you can write to",
            ) from exc
        raise
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rmdir(old)
        os.rename(dest, old)
    try:
        os.rename(stage, dest)
    except OSError as exc:
        if old is not None:
            os.rename(old, dest)
        shutil.rmtree(stage, ignore_errors=True)
        raise BundleError(f"cannot move the finished bundle into {dest}: {exc.strerror}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Bundle:
    """A bundle on disk. ``manifest`` is the parsed ``manifest.json``."""

    root: Path
    manifest: dict[str, Any]
    #: True when the bundle was restored from the build cache instead of being built.
    cache_hit: bool = field(default=False, compare=False)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def targets(self) -> list[str]:
        return sorted(self.manifest["targets"])

    def _target(self, target: str) -> dict[str, Any]:
        if target not in self.manifest["targets"]:
            raise UnknownNameError(f"target in bundle {self.root}", target, self.targets)
        return self.manifest["targets"][target]

    def artifact(self, target: str) -> Artifact:
        entry = self._target(target)
        files = [f["path"] for f in entry["files"]]
        first = Path(files[0]).parent
        return Artifact(
            backend=entry["backend"],
            root=self.root / first,
            files=[str(Path(f).relative_to(first)) for f in files],
            inputs=[TensorSpec.from_json(t) for t in entry["inputs"]],
            outputs=[TensorSpec.from_json(t) for t in entry["outputs"]],
            precision=entry["precision"],
            info=dict(entry.get("artifact_info", {})),
        )

    def check_files(self) -> None:
        """Raise :class:`BundleError` naming the first file that is missing or altered."""
        for target in self.targets:
            for rec in self._target(target)["files"]:
                _check_record(self.root, rec)
        if "reference" in self.manifest:
            _check_record(self.root, self.manifest["reference"])

    def load(self, target: str, *, threads: int | None = None) -> Session:
        """Load one target's artifact into its runtime (after checking its checksums)."""
        entry = self._target(target)
        for rec in entry["files"]:
            _check_record(self.root, rec)
        backend = get_backend(entry["backend"])
        profile = entry.get("profile", {})
        return backend.load(
            self.artifact(target),
            threads=threads or int(profile.get("threads", 2)),
            options=dict(profile.get("options", {})),
        )


def _check_record(root: Path, rec: dict[str, Any]) -> None:
    path = root / rec["path"]
    if path.is_symlink() or not path.resolve().is_relative_to(Path(root).resolve()):
        raise BundleError(
            f"bundle {root}: file {rec['path']} is a link or resolves outside the bundle "
            f"({path.resolve()}): refused",
            hint="bundles hold regular files only; rebuild or re-unpack the bundle")
    if not path.is_file():
        raise BundleError(
            f"bundle {root}: file {rec['path']} is missing",
            hint="rebuild the bundle; do not edit its files by hand",
        )
    actual = sha256_file(path)
    if actual != rec["sha256"]:
        raise BundleError(
            f"bundle {root}: checksum mismatch for {rec['path']} "
            f"(manifest {rec['sha256'][:12]}…, file {actual[:12]}…)",
            hint="the file was altered after the build; rebuild the bundle",
        )


def _check_file_entry(manifest_path: Path, rec: Any) -> None:
    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) \
            or not isinstance(rec.get("sha256"), str) or not rec.get("sha256"):
        raise BundleError(f"{manifest_path}: incomplete file entry {rec!r}")
    text = rec["path"]
    rel = Path(text)
    if (not text or "\0" in text or "\\" in text or rel.is_absolute() or ".." in rel.parts
            or text.strip() in (".", "")):
        raise BundleError(f"{manifest_path}: unsafe or incomplete file entry {rec!r}")


def _valid_spec(spec: Any) -> bool:
    return (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in spec["shape"]))


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle folder (or its ``manifest.json``)."""
    root = Path(path)
    if root.name == MANIFEST:
        root = root.parent
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{root} is not an edgekit bundle: {MANIFEST} is missing",
            hint="pass the folder that `edgekit build` wrote",
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: the top level must be an object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported "
            f"(this edgekit reads {SCHEMA_VERSION})",
            hint="rebuild the bundle with this edgekit version",
        )
    for key in ("name", "targets"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: missing key {key!r}")
    if not isinstance(manifest["name"], str) or not isinstance(manifest["targets"], dict):
        raise BundleError(f"{manifest_path}: 'name' must be a string and 'targets' an object")
    for target, entry in manifest["targets"].items():
        if not isinstance(entry, dict):
            raise BundleError(f"{manifest_path}: target {target!r} must be an object")
        for key in ("backend", "precision", "files", "inputs", "outputs"):
            if key not in entry:
                raise BundleError(f"{manifest_path}: target {target!r} lacks {key!r}")
        for key in ("backend", "precision"):
            if not isinstance(entry[key], str):
                raise BundleError(f"{manifest_path}: target {target!r}: {key!r} must be a string")
        if not isinstance(entry["files"], list) or not entry["files"]:
            raise BundleError(f"{manifest_path}: target {target!r}: 'files' must be a non-empty "
                              "list")
        for rec in entry["files"]:
            _check_file_entry(manifest_path, rec)
        for key in ("inputs", "outputs"):
            specs = entry[key]
            if not isinstance(specs, list) or not all(_valid_spec(s) for s in specs):
                raise BundleError(f"{manifest_path}: target {target!r}: {key!r} must be a list "
                                  "of {name, shape (list of integers), dtype}")
    if "reference" in manifest:
        _check_file_entry(manifest_path, manifest["reference"])
    return Bundle(root=root, manifest=manifest)
