"""Bundles: one folder per build, with every artifact, reference data and ``manifest.json``.

Layout::

    <bundle>/manifest.json            schema version, versions, recipe, I/O specs, sha256s,
                                      verification numbers, the history of stages
    <bundle>/reference.npz            reference inputs and PyTorch outputs
    <bundle>/<target>/model.<ext>     one folder per target profile

Bundles are written through :func:`staged_bundle`: everything goes into a hidden staging
folder next to the destination (``.<name>.partial-<pid>-*``), which is exchanged with the
destination in one atomic ``renameat2(RENAME_EXCHANGE)`` only when the build succeeded, so the
path is never missing (elsewhere: two renames, repaired by the next run if killed in between).
A failed or interrupted build leaves the previous bundle untouched; the next run removes the
staging folders of dead processes. :func:`check_out_dir` decides what may be replaced: only a
folder edgekit made (unless ``overwrite``), never the root, home or current folder.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Artifact, Session, TensorSpec, get_backend
from .errors import BundleError, OutputPathError, UnknownNameError
from .fsio import (
    atomic_write_text,
    check_not_sparse,
    iter_chunks,
    open_regular,
    regular_file,
    umask,
)
from .manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    FileRecord,
    Manifest,
    TargetEntry,
    listed_paths,
)

__all__ = [
    "SCHEMA_VERSION",
    "Bundle",
    "check_out_dir",
    "check_record",
    "file_record",
    "load_bundle",
    "record_file",
    "recover",
    "sha256_file",
    "staged_bundle",
    "write_json",
]

REFERENCE = "reference.npz"
#: manifest.json is read whole and parsed; larger ones are refused before reading.
MAX_MANIFEST_BYTES = 64 * 2**20
#: Largest file a bundle may list (artifacts, reference data); checked from stat before reading.
MAX_FILE_BYTES = 16 * 2**30


def sha256_file(path: Path, *, max_bytes: int | None = MAX_FILE_BYTES) -> str:
    """sha256 of a regular file, read in blocks (a FIFO, device or over-size file is refused
    with BundleError naming it, before a byte is read)."""
    digest = hashlib.sha256()
    for block in iter_chunks(path, "file", max_bytes=max_bytes):
        digest.update(block)
    return digest.hexdigest()


def record_file(root: Path, rel: str, **extra: Any) -> FileRecord:
    """The record of the file ``root / rel``: its path, sha256 and size (``extra`` keys too)."""
    path = root / rel
    return FileRecord(rel, sha256_file(path), path.stat().st_size, dict(extra))


def file_record(root: Path, rel: str) -> dict[str, Any]:
    """:func:`record_file` as JSON, for writing a manifest by hand."""
    return record_file(root, rel).to_json()


def write_json(path: Path, data: dict[str, Any] | Manifest) -> None:
    """Deterministic JSON (sorted keys, fixed indent), written atomically."""
    if isinstance(data, Manifest):
        data = data.to_json()
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(path, text)  # O_EXCL temporary file, random name, then one rename


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


#: staging folders are named ``.<dest>.partial-<pid>-<random>`` (the build) and
#: ``.<dest>.old-<pid>-<random>`` (the previous bundle while it is swapped out), so the next
#: run can tell the leftovers of a dead process from the folders of a live one.
_STAGING_RE = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[^/]+\Z")
_RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths atomically
_AT_FDCWD = -100
_OUT_HINT = ("choose a new or empty folder for --out (e.g. build/<name>); "
             "--force / overwrite=True does not apply to this folder")


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else 0


def _refuse(dest: Path, why: str) -> OutputPathError:
    real = dest.resolve()
    shown = str(dest) if real == dest or dest.is_symlink() else f"{dest} ({real})"
    return OutputPathError(f"refusing to write a bundle at {shown}: {why}; nothing was written",
                           hint=_OUT_HINT)


def _check_dangerous(dest: Path) -> None:
    """Folders edgekit never replaces, even with overwrite: the root, the home folder, the
    current folder and its parents, mount points, links, sticky folders (/tmp) and another
    user's folder in one."""
    if dest.is_symlink():
        raise _refuse(dest, f"it is a link (to {os.readlink(dest)}), not a folder edgekit made")
    real = dest.resolve()
    if real.parent == real:
        raise _refuse(dest, "it is the root folder")
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current folder was removed: nothing of it to protect
        cwd = Path("/nonexistent-cwd")
    if real == cwd or real in cwd.parents:
        raise _refuse(dest, "it is the current folder" if real == cwd
                      else f"it holds the current folder {cwd}")
    home = Path(os.path.expanduser("~")).resolve()
    if real == home or real in home.parents:
        raise _refuse(dest, "it is your home folder" if real == home
                      else f"it holds your home folder {home}")
    if os.path.ismount(real):
        raise _refuse(dest, "it is a mount point")
    try:
        st, parent_st = os.stat(real), os.stat(real.parent)
    except OSError:
        return
    if st.st_mode & stat.S_ISVTX:
        raise _refuse(dest, "it is a shared sticky folder (like /tmp) that other users write in")
    if parent_st.st_mode & stat.S_ISVTX and st.st_uid != _euid():
        raise _refuse(dest, f"it belongs to another user (uid {st.st_uid}) in the shared "
                      f"sticky folder {real.parent}")


def _manifest_paths(dest: Path) -> set[str] | str:
    """The paths an edgekit manifest at ``dest`` lists (manifest.json included), or why
    ``dest`` holds no edgekit manifest."""
    path = dest / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"it has no {MANIFEST}"
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
        return f"its {MANIFEST} is not a regular file of at most {MAX_MANIFEST_BYTES} bytes"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return f"its {MANIFEST} is not valid JSON"
    listed = listed_paths(data)
    return f"its {MANIFEST} is not an edgekit manifest" if listed is None else listed


def foreign_entries(dest: Path, *, limit: int = 5) -> tuple[str | None, list[str]]:
    """Why ``dest`` is not an edgekit bundle (or None) and up to ``limit`` names it holds that
    its manifest does not list (links count as foreign). An empty folder gives (None, [])."""
    with os.scandir(dest) as it:
        top = sorted(e.name for e in it)
    if not top:
        return None, []
    listed = _manifest_paths(dest)
    if isinstance(listed, str):
        return listed, top[:limit]
    dirs = {str(p) for rel in listed for p in Path(rel).parents if str(p) != "."}
    extra: list[str] = []
    for here, subdirs, files in os.walk(dest):
        base = Path(here).relative_to(dest)
        for name in sorted(subdirs):
            rel = str(base / name)
            if rel not in dirs or os.path.islink(os.path.join(here, name)):
                extra.append(rel + "/")
                subdirs.remove(name)  # do not descend into what is not ours
        for name in sorted(files):
            rel = str(base / name)
            if rel not in listed or os.path.islink(os.path.join(here, name)):
                extra.append(rel)
        if len(extra) >= limit:
            break
    return None, extra[:limit]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_staging(folder: Path, name: str | None = None) -> list[tuple[str, Path]]:
    """(kind, path) of this user's staging folders in ``folder`` (for the bundle ``name``, or
    any) whose process is gone."""
    found: list[tuple[str, Path]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        m = _STAGING_RE.match(entry.name)
        if m is None or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == _euid():
            found.append((m["kind"], Path(entry.path)))
    return found


def _leftovers(dest: Path) -> list[tuple[str, Path]]:
    return _dead_staging(dest.parent, dest.name)


def remove_dead_partials(folder: str | Path) -> None:
    """Remove the ``.*.partial-<pid>-*`` folders in ``folder`` whose process is gone (the
    build cache's staging; a live process's folders are never touched)."""
    for kind, path in _dead_staging(Path(folder)):
        if kind == "partial":
            shutil.rmtree(path, ignore_errors=True)


def recover(dest: Path, *, progress: bool = True) -> None:
    """Tidy up after runs that died writing ``dest``: when ``dest`` is missing and a dead run
    left the previous bundle in ``.<name>.old-*``, move it back; remove every other leftover
    staging folder of a dead process (a live process's folders are never touched)."""
    dest = Path(dest).absolute()
    leftovers = _leftovers(dest)
    olds = sorted((p for kind, p in leftovers if kind == "old"),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    if olds and not os.path.lexists(dest):
        try:
            os.rename(olds[0], dest)
        except OSError as exc:
            raise OutputPathError(
                f"{dest} is missing and a killed run left the previous bundle in {olds[0]}, "
                f"which could not be moved back: {exc.strerror}",
                hint=f"move it back by hand: mv {olds[0]} {dest}") from exc
        if progress:
            print(f"[edgekit] restored the previous bundle at {dest} from {olds[0].name} "
                  "(a run was killed while replacing it)", file=sys.stderr, flush=True)
        leftovers = [(k, p) for k, p in leftovers if p != olds[0]]
    for _, path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def check_out_dir(dest: str | Path, *, overwrite: bool = False) -> Path:
    """Check a bundle destination before any work; return it as an absolute path.

    Always refused (:class:`OutputPathError`): the root folder, the home folder (and its
    parents), the current folder and its parents, a mount point, a link, another user's
    folder in a sticky folder, a file. Refused unless ``overwrite``: an existing folder that
    is not an edgekit bundle or holds anything its manifest does not list (an empty folder is
    fine). Leftovers of killed runs are recovered or removed first (:func:`recover`).
    """
    dest = Path(dest).absolute()
    _check_dangerous(dest)
    parent = dest.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"cannot create output folder {dest.parent}: a file is in the "
                              f"way ({parent} is not a folder)",
                              hint="choose another output folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {parent} is not writable",
                              hint="choose a folder you can write to")
    if dest.parent.is_dir():
        recover(dest)
    if os.path.lexists(dest) and not dest.is_dir():
        raise OutputPathError(f"{dest} exists and is not a folder",
                              hint="choose another output path")
    if overwrite or not dest.is_dir():
        return dest
    try:
        why, names = foreign_entries(dest)
    except OSError as exc:
        raise OutputPathError(f"cannot read output folder {dest}: {exc.strerror}",
                              hint="choose a folder you can read and write") from exc
    if why is None and not names:
        return dest
    shown = ", ".join(names) + (", ..." if len(names) >= 5 else "")
    what = (f"it is not an edgekit bundle ({why}) and holds {shown}" if why
            else f"it holds files its manifest does not list: {shown}")
    raise OutputPathError(
        f"refusing to replace {dest}: {what}; replacing it would delete them",
        hint="choose another --out, or pass --force (Python: overwrite=True) to replace the "
             "folder and everything in it")


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot (the caller falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(stage: Path, dest: Path) -> None:
    """Make ``stage`` become ``dest`` with no moment where ``dest`` is missing (one atomic
    exchange; elsewhere two renames, which :func:`recover` repairs if killed in between)."""
    if not os.path.lexists(dest):
        os.rename(stage, dest)
        return
    if _rename_exchange(stage, dest):
        old = stage  # now holds the previous bundle, under a name the next run cleans
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
        os.rmdir(old)
        os.rename(dest, old)
        try:
            os.rename(stage, dest)
        except OSError:
            os.rename(old, dest)
            raise
    shutil.rmtree(old, ignore_errors=True)


def _apply_umask(root: Path) -> None:
    """Folders 0o777 and files 0o666, less the user's umask (staging starts as 0700)."""
    mask = umask()
    os.chmod(root, 0o777 & ~mask)
    for here, dirs, files in os.walk(root):
        for name in dirs:
            if not os.path.islink(os.path.join(here, name)):
                os.chmod(os.path.join(here, name), 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(here, name)):
                os.chmod(os.path.join(here, name), 0o666 & ~mask)


@contextmanager
def staged_bundle(dest: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it atomically becomes ``dest``.

    ``dest`` is checked first (:func:`check_out_dir`: never the root, home or current folder,
    a mount point or another user's folder; an existing folder only if it is an edgekit
    bundle, unless ``overwrite``). On any exception (including KeyboardInterrupt) the staging
    folder is removed and ``dest``, if it existed, is left exactly as it was. The finished
    bundle gets the user's umask.
    """
    dest = check_out_dir(dest, overwrite=overwrite)
    _check_writable(dest.parent)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-{os.getpid()}-",
                                      dir=dest.parent))
    except OSError as exc:
        raise OutputPathError(f"cannot write in {dest.parent}: {exc.strerror}") from exc
    try:
        yield stage
        _apply_umask(stage)
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
    try:
        _swap_into_place(stage, dest)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise BundleError(f"cannot move the finished bundle into {dest}: {exc.strerror}",
                          hint="the previous bundle, if any, is untouched") from exc


@dataclass
class Bundle:
    """A bundle on disk. ``manifest`` is its checked ``manifest.json``
    (:class:`~edgekit.manifest.Manifest`), e.g. ``bundle.manifest.targets[t].backend``."""

    root: Path
    manifest: Manifest
    #: True when the bundle was restored from the build cache instead of being built.
    cache_hit: bool = field(default=False, compare=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def targets(self) -> list[str]:
        return sorted(self.manifest.targets)

    def target(self, target: str) -> TargetEntry:
        """One target's manifest entry (:class:`UnknownNameError` listing the targets if none)."""
        if target not in self.manifest.targets:
            raise UnknownNameError(f"target in bundle {self.root}", target, self.targets)
        return self.manifest.targets[target]

    def artifact(self, target: str) -> Artifact:
        entry = self.target(target)
        files = [f.path for f in entry.files]
        first = Path(files[0]).parent
        return Artifact(
            backend=entry.backend,
            root=self.root / first,
            files=[str(Path(f).relative_to(first)) for f in files],
            inputs=[TensorSpec.from_json(t) for t in entry.inputs],
            outputs=[TensorSpec.from_json(t) for t in entry.outputs],
            precision=entry.precision,
            info=dict(entry.artifact_info or {}),
        )

    def check_files(self) -> None:
        """Raise :class:`BundleError` naming the first file that is missing or altered."""
        for rec in self.manifest.files():
            check_record(self.root, rec)

    def load(self, target: str, *, threads: int | None = None) -> Session:
        """Load one target's artifact into its runtime (after checking its checksums)."""
        entry = self.target(target)
        for rec in entry.files:
            check_record(self.root, rec)
        return get_backend(entry.backend).load(
            self.artifact(target), threads=threads or entry.threads, options=entry.options)


def check_record(root: Path, rec: FileRecord) -> None:
    """Raise :class:`BundleError` unless the file ``rec`` lists is in ``root``, regular, inside
    the bundle, of the recorded size and sha256."""
    path = root / rec.path
    if path.is_symlink() or not path.resolve().is_relative_to(Path(root).resolve()):
        raise BundleError(
            f"bundle {root}: file {rec.path} is a link or resolves outside the bundle "
            f"({path.resolve()}): refused",
            hint="bundles hold regular files only; rebuild or re-unpack the bundle")
    if not path.exists():
        raise BundleError(
            f"bundle {root}: file {rec.path} is missing",
            hint="rebuild the bundle; do not edit its files by hand",
        )
    st = regular_file(path, f"bundle {root}: file", max_bytes=MAX_FILE_BYTES)
    if rec.bytes is not None and rec.bytes != st.st_size:
        raise BundleError(
            f"bundle {root}: checksum mismatch for {rec.path}: the file is {st.st_size} "
            f"bytes, the manifest says {rec.bytes} (refused before reading it)",
            hint="the file was altered after the build; rebuild the bundle")
    check_not_sparse(path, st, f"bundle {root}: file")
    actual = sha256_file(path)
    if actual != rec.sha256:
        raise BundleError(
            f"bundle {root}: checksum mismatch for {rec.path} "
            f"(manifest {rec.sha256[:12]}…, file {actual[:12]}…)",
            hint="the file was altered after the build; rebuild the bundle",
        )


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle folder (or its ``manifest.json``); the schema check is
    :meth:`Manifest.from_json`."""
    root = Path(path)
    if root.name == MANIFEST:
        root = root.parent
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        olds = [p for kind, p in _leftovers(Path(root).absolute()) if kind == "old"]
        if olds and not os.path.lexists(root):
            raise BundleError(
                f"bundle {root} is missing: a run was killed while replacing it and the "
                f"previous bundle is in {olds[0]}",
                hint="the next `edgekit build`/`unpack` to this folder moves it back; or move "
                     f"it back by hand: mv {olds[0]} {root}")
        raise BundleError(
            f"{root} is not an edgekit bundle: {MANIFEST} is missing",
            hint="pass the folder that `edgekit build` wrote",
        )
    try:
        with open_regular(manifest_path, "manifest", max_bytes=MAX_MANIFEST_BYTES) as fh:
            data = json.loads(fh.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    return Bundle(root=root, manifest=Manifest.from_json(data, manifest_path))
