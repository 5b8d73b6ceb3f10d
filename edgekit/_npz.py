"""Deterministic .npz files: fixed member order and timestamps, so equal arrays give equal bytes.

:func:`check_npz` looks at a ``.npz`` from its zip directory and ``.npy`` headers before numpy
loads it: a FIFO or device, a sparse file, a member whose declared shape needs more bytes than
the member holds (numpy would allocate it first: 1 TiB from a 1 KB file), a zip entry declaring
more bytes than deflate can give from its compressed size, object dtypes: all refused, naming the
file, the member and the sizes.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import BundleError, EdgekitError
from .fsio import check_not_sparse, open_regular, regular_file

#: Deflate gives at most ~1032 bytes per compressed byte; a zip entry declaring more is a lie.
MAX_DEFLATE_RATIO = 1100
#: Bytes all arrays of one .npz may declare together (8 GiB).
MAX_NPZ_BYTES = 8 * 2**30

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arrays[key]), allow_pickle=False)


def check_npz(path: str | Path, what: str = ".npz file", *,
              error: type[EdgekitError] = BundleError, max_bytes: int = MAX_NPZ_BYTES) -> None:
    """Refuse (``error`` naming the file and member) a ``.npz`` that numpy must not load: see
    the module docs. Reads the zip directory and each member's ``.npy`` header only."""
    path = Path(path)
    try:
        st = regular_file(path, what)
        check_not_sparse(path, st, what)
        fh = open_regular(path, what)
    except BundleError as exc:
        raise error(exc.message, hint=exc.hint) from None
    total = 0
    with fh:
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise error(f"{what} {path} is not a readable .npz (zip) file: {exc}",
                        hint="save it with numpy.savez") from exc
        with zf:
            for info in zf.infolist():
                where = f"{what} {path}: member {info.filename[:200]!r}"
                ratio = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
                if info.compress_size > st.st_size or \
                        info.file_size > info.compress_size * ratio + 1024:
                    raise error(f"{where} declares {info.file_size} bytes from "
                                f"{info.compress_size} compressed bytes in a {st.st_size}-byte "
                                "file: refused (the zip directory lies)",
                                hint="the file is corrupt or crafted; save it again")
                if not info.filename.endswith(".npy"):
                    raise error(f"{where} is not a .npy array: refused",
                                hint="save the arrays with numpy.savez")
                declared = _declared_bytes(zf, info, where, error)
                if declared > info.file_size:
                    raise error(f"{where} declares an array of {declared} bytes but holds "
                                f"{info.file_size}: refused before allocating it",
                                hint="the file is truncated or crafted; save it again")
                total += declared
                if total > max_bytes:
                    raise error(f"{where} brings the arrays to {total} bytes, over the limit of "
                                f"{max_bytes} bytes: refused")


def _declared_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
                    error: type[EdgekitError]) -> int:
    """Bytes the member's ``.npy`` header says its array takes (header read only)."""
    fmt = np.lib.format
    try:
        with zf.open(info) as member:
            version = fmt.read_magic(member)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(member)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
        raise error(f"{where} has an unreadable .npy header: {exc}",
                    hint="save the arrays with numpy.savez") from exc
    if dtype.hasobject:
        raise error(f"{where} holds Python objects (dtype {dtype}): refused (pickles run code)",
                    hint="store numeric arrays")
    return math.prod(shape) * dtype.itemsize
