"""Safe file primitives: the one place edgekit writes, reads and names files on disk.

* :func:`atomic_write` / :func:`atomic_write_text` write through a temporary file created
  exclusively (``O_EXCL``, random name, never through a planted link) next to the target and
  renamed over it; the temporary file is removed on any failure.
* :func:`exclusive_temp` is the same temporary file as a context manager, for writers that
  stream (archives, C sources): yield an open binary file, rename on success.
* :func:`regular_file` refuses FIFOs, devices, sockets, folders and (optionally) links and
  files larger than a limit, from ``lstat``/``fstat`` before a byte is read, so a FIFO never
  blocks and a sparse 15 GiB file is never read into memory.
* :func:`iter_chunks` reads a regular file in fixed-size blocks (hashing, embedding).
* :func:`check_name` validates a name that becomes a file or folder name (target profiles,
  tensor names): a safe charset and length, never a path.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import BundleError, UsageError

__all__ = ["atomic_write", "atomic_write_text", "exclusive_temp", "regular_file",
           "iter_chunks", "check_not_sparse", "check_name", "check_tensor_name", "CHUNK",
           "NAME_RE", "MAX_NAME"]

CHUNK = 1 << 20
MAX_NAME = 128
#: letters, digits, '.', '_', '-', '+'; starts with a letter or digit (never '.', '..', '-x').
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_RESERVED = {"manifest.json", "reference.npz"}


def check_name(name: object, what: str, *, where: str | None = None) -> str:
    """Return ``name`` if it is safe as one file/folder name, else raise :class:`UsageError`
    naming ``what`` (and ``where`` it was read) and the rule."""
    at = f" in {where}" if where else ""
    shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:60] + "…")
    if not isinstance(name, str):
        raise UsageError(f"{what} {shown}{at} must be a string")
    problem = None
    if not name:
        problem = "is empty"
    elif len(name) > MAX_NAME:
        problem = f"is {len(name)} characters long (at most {MAX_NAME})"
    elif name in _RESERVED:
        problem = "is a file name a bundle reserves"
    elif not NAME_RE.match(name):
        problem = ("holds characters outside letters, digits, '.', '_', '-', '+' or does not "
                   "start with a letter or digit (names are never paths)")
    if problem:
        raise UsageError(f"{what} {shown}{at} {problem}",
                         hint="use a plain name such as 'x86-onnxruntime-int8'")
    return name


@contextmanager
def exclusive_temp(path: str | Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file created exclusively beside ``path``; on success it replaces
    ``path`` atomically (with the user's umask applied, or ``mode``), on failure it is gone."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    with exclusive_temp(path, mode=mode) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> Path:
    return atomic_write(path, text.encode("utf-8"), mode=mode)


def _umask() -> int:
    # Linux shows it without changing it; elsewhere os.umask can only be read by setting it
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def umask() -> int:
    """The process's umask."""
    return _umask()


def regular_file(path: str | Path, what: str = "file", *, max_bytes: int | None = None,
                 follow_links: bool = True) -> os.stat_result:
    """``stat`` of ``path`` if it is a regular file (within ``max_bytes``), else
    :class:`BundleError` naming the file and what it is. Never opens the file."""
    path = Path(path)
    try:
        st = os.stat(path) if follow_links else os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BundleError(f"cannot read {what} {path}: {exc.strerror}") from exc
    kind = _kind(st.st_mode)
    if kind != "regular file":
        raise BundleError(f"{what} {path} is {kind}, not a regular file: refused",
                          hint="pass a regular file (not a FIFO, device, socket, folder or link)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise BundleError(f"{what} {path} is {st.st_size} bytes, over the limit of "
                          f"{max_bytes} bytes: refused",
                          hint="a file this large is not a model edgekit can handle here")
    return st


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | Path, what: str = "file", *,
                 max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file: ``O_NONBLOCK`` so a FIFO planted
    after the check cannot block, then ``fstat`` on the open descriptor (no race)."""
    regular_file(path, what, max_bytes=max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file: refused")
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise BundleError(f"{what} {path} is {st.st_size} bytes, over the limit of "
                          f"{max_bytes} bytes: refused")
    return os.fdopen(fd, "rb")


#: Files at least this large whose allocated blocks cover under 1/SPARSE_RATIO of their size
#: are refused as sparse (a 15 GiB file of holes is not a model).
SPARSE_MIN_BYTES = 64 * 2**20
SPARSE_RATIO = 16


def check_not_sparse(path: str | Path, st: os.stat_result | None = None,
                     what: str = "file") -> os.stat_result:
    """Refuse (BundleError naming the file) a large file whose disk blocks cover only a small
    part of its size: a sparse file, mostly holes, that would be read as gigabytes of zeros."""
    st = st if st is not None else regular_file(path, what)
    allocated = getattr(st, "st_blocks", None)
    if allocated is not None and st.st_size >= SPARSE_MIN_BYTES \
            and allocated * 512 * SPARSE_RATIO < st.st_size:
        raise BundleError(
            f"{what} {path} is a sparse file: {st.st_size} bytes long but only "
            f"{allocated * 512} bytes on disk: refused before reading it",
            hint="a model or data file is never mostly holes; export or copy it again")
    return st


def iter_chunks(path: str | Path, what: str = "file", *, size: int = CHUNK,
                max_bytes: int | None = None) -> Iterator[bytes]:
    """The bytes of a regular file in blocks of ``size`` (never the whole file at once)."""
    with open_regular(path, what, max_bytes=max_bytes) as fh:
        while block := fh.read(size):
            yield block


#: tensor names a user gives (CLI, API, recipes): letters, digits, '_', '.', ':', '-'.
TENSOR_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")
#: names read from an artifact or manifest may be longer (TFLite fuses op names into them).
MAX_ARTIFACT_TENSOR_NAME = 1024


def check_tensor_name(name: object, what: str, *, where: str | None = None,
                      from_artifact: bool = False) -> str:
    """Return ``name`` if it is a usable input/output tensor name, else :class:`UsageError`
    naming ``what`` and ``where`` it was read.

    Names a user gives follow :data:`TENSOR_NAME_RE` (at most :data:`MAX_NAME` characters; no
    '/', spaces or control characters). Names read from an artifact or a manifest
    (``from_artifact``) keep the runtimes' wider charset ('/', ';', ' ' in TFLite and ONNX
    names) but must be printable, non-empty and at most :data:`MAX_ARTIFACT_TENSOR_NAME`
    characters. Tensor names never become file names; C code carries them as escaped strings.
    """
    at = f" in {where}" if where else ""
    shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:60] + "…")
    if not isinstance(name, str):
        raise UsageError(f"{what} {shown}{at} must be a string")
    limit = MAX_ARTIFACT_TENSOR_NAME if from_artifact else MAX_NAME
    problem = None
    if not name:
        problem = "is empty"
    elif len(name) > limit:
        problem = f"is {len(name)} characters long (at most {limit})"
    elif from_artifact and not name.isprintable():
        problem = "holds control characters (NUL, newline, escape...)"
    elif not from_artifact and not TENSOR_NAME_RE.match(name):
        problem = ("holds characters outside letters, digits, '_', '.', ':', '-' or does not "
                   "start with a letter, digit or '_'")
    if problem:
        raise UsageError(f"{what} {shown}{at} {problem}",
                         hint="use a plain tensor name such as 'image' or 'logits'")
    return name
