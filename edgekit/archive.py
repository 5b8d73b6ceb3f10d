"""Bundles as single files: ``edgekit pack`` (tar.gz) and ``edgekit unpack`` (safe extraction).

:func:`unpack_bundle` treats the archive as untrusted. First :func:`scan_archive` reads every
header of the decompressed stream itself, 512 bytes at a time, against :class:`ArchiveLimits`
(member count, PAX/long-name header and path size, per-member, manifest and total size, sparse
members, and a ceiling on decompressed bytes of max(1 GiB, 200x the archive) against gzip bombs),
so Python's ``tarfile`` never reads a hostile header into memory. Then, before anything is
written, every member is checked (regular files and folders only: no symlinks, hard links,
devices or FIFOs; no
absolute paths, no ``..``, no member outside the bundle folder, no duplicates, sizes within
limits); extraction then uses Python's ``tarfile`` ``data`` filter as a second line, into a
staging folder next to the destination; the unpacked manifest is read and every file's sha256
checked. Only then does the staging folder replace the destination (atomically, as for builds).
On any failure nothing is left behind and an existing destination is untouched.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .bundle import MANIFEST, MAX_MANIFEST_BYTES, Bundle, load_bundle, staged_bundle
from .errors import BundleError, UsageError
from .fsio import exclusive_temp, open_regular

__all__ = ["pack_bundle", "unpack_bundle", "scan_archive", "ArchiveLimits", "MAX_UNPACKED_BYTES",
           "MAX_MEMBERS", "MAX_MEMBER_BYTES", "MAX_HEADER_BYTES", "MAX_PATH_BYTES",
           "MIN_CEILING_BYTES", "MAX_RATIO"]

#: Refuse archives that would unpack to more than this (a zip/tar bomb guard; 16 GiB).
MAX_UNPACKED_BYTES = 16 * 2**30
#: Members (headers of files and folders) an archive may hold.
MAX_MEMBERS = 10_000
#: Bytes one member may hold.
MAX_MEMBER_BYTES = 16 * 2**30
#: Bytes of one PAX extended header or GNU long-name record (read into memory to parse).
MAX_HEADER_BYTES = 64 * 2**10
#: Bytes of a member's path.
MAX_PATH_BYTES = 4096
#: An archive may always unpack to this much; beyond it, to at most MAX_RATIO x its own size.
MIN_CEILING_BYTES = 2**30
MAX_RATIO = 200


@dataclass(frozen=True)
class ArchiveLimits:
    """What :func:`unpack_bundle` accepts from an archive; every check runs on the decompressed
    stream, one 512-byte header at a time, before anything is written."""

    members: int = MAX_MEMBERS
    member_bytes: int = MAX_MEMBER_BYTES
    total_bytes: int = MAX_UNPACKED_BYTES
    header_bytes: int = MAX_HEADER_BYTES
    path_bytes: int = MAX_PATH_BYTES
    manifest_bytes: int = MAX_MANIFEST_BYTES
    min_ceiling: int = MIN_CEILING_BYTES
    ratio: int = MAX_RATIO

    def ceiling(self, archive_bytes: int) -> int:
        """Decompressed bytes (headers included) an archive of ``archive_bytes`` may give."""
        return max(self.min_ceiling, self.ratio * archive_bytes)


def pack_bundle(bundle_dir: str | Path, archive: str | Path) -> Path:
    """Write ``bundle_dir`` (checked first) as a deterministic ``.tar.gz`` at ``archive``.

    Members are the manifest's files plus the manifest, under ``<bundle name>/``, with fixed
    owner, mode and time, so the same bundle always gives the same archive bytes.
    """
    bundle = load_bundle(bundle_dir)
    bundle.check_files()
    rels = {MANIFEST} | {rec.path for rec in bundle.manifest.files()}
    archive = Path(archive)
    if archive.resolve().is_relative_to(bundle.root.resolve()):
        raise UsageError(f"the archive {archive} would be inside the bundle it packs")
    archive.parent.mkdir(parents=True, exist_ok=True)
    top = bundle.root.name
    # an exclusively created temporary file (O_EXCL, random name, never through a planted
    # link) beside the archive, renamed over it once complete; removed on any failure
    with exclusive_temp(archive) as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                       filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(rels):
            path = bundle.root / rel
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = path.stat().st_size
            info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return archive


_REGULAR = (b"0", b"\0", b"7")
_DATALESS = (b"1", b"2", b"3", b"4", b"5", b"6")  # tarfile skips no data after these
_COMPRESSED = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
               (b"BZh", lambda f: bz2.BZ2File(f, "rb")),
               (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")))


class _Stream:
    """The archive's decompressed bytes, counted; past ``ceiling`` it refuses (a bomb)."""

    def __init__(self, raw: BinaryIO, archive: Path, limits: ArchiveLimits, size: int) -> None:
        head = raw.read(6)
        raw.seek(0)
        self.stream: BinaryIO = raw
        for magic, opener in _COMPRESSED:
            if head.startswith(magic):
                self.stream = opener(raw)  # type: ignore[assignment]
        self.archive, self.size, self.count = archive, size, 0
        self.limits, self.ceiling = limits, limits.ceiling(size)

    def read(self, n: int, what: str) -> bytes:
        try:
            data = self.stream.read(n)
        except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
            raise BundleError(f"{self.archive} is truncated or corrupt ({what}: {exc})",
                              hint="pass a .tar.gz written by `edgekit pack`") from exc
        self.count += len(data)
        if self.count > self.ceiling:
            raise BundleError(
                f"{self.archive} decompresses to more than {self.ceiling} bytes (a "
                f"{self.size}-byte archive; limit max({self.limits.min_ceiling} bytes, "
                f"{self.limits.ratio}x its size)), while reading {what}: refused as a "
                "decompression bomb",
                hint="only unpack archives written by `edgekit pack`")
        if len(data) < n:
            raise BundleError(f"{self.archive} is truncated ({what} ends after {len(data)} of "
                              f"{n} bytes)", hint="the archive was cut short; copy it again")
        return data

    def skip(self, n: int, what: str) -> None:
        while n > 0:
            step = min(n, 1 << 20)
            self.read(step, what)
            n -= step


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[:1] == b"\xff" else n
    text = field.split(b"\0", 1)[0].strip(b" \0").decode("ascii")
    return int(text or "0", 8)


def _pax_records(data: bytes, where: str) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] not in (b"\0", b""):
        space = data.find(b" ", pos, pos + 24)
        if space < 0:
            raise BundleError(f"{where}: malformed PAX record at byte {pos}: refused")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise BundleError(f"{where}: malformed PAX record at byte {pos}: refused") from None
        record = data[space + 1:pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") \
                or b"=" not in record:
            raise BundleError(f"{where}: malformed PAX record at byte {pos}: refused")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value
        pos += length
    return records


def scan_archive(archive: str | Path, limits: ArchiveLimits | None = None
                 ) -> list[tarfile.TarInfo]:
    """Read every header of ``archive`` from its decompressed stream, one 512-byte block at a
    time, and refuse (BundleError naming the archive, the member and the limit) what
    :class:`ArchiveLimits` does not allow: too many members, PAX or long-name headers over
    ``header_bytes``, paths over ``path_bytes``, members over ``member_bytes`` (the manifest over
    ``manifest_bytes``), a total over ``total_bytes``, sparse members, global PAX headers, and a
    stream that decompresses past the ceiling. Nothing is written; memory stays bounded.
    Returns the members (name, type and size only), in order."""
    archive = Path(archive)
    lim = limits or ArchiveLimits()
    with open_regular(archive, "archive") as raw:
        size = os.fstat(raw.fileno()).st_size
        stream = _Stream(raw, archive, lim, size)
        ceiling = stream.ceiling
        members: list[tarfile.TarInfo] = []
        total = 0
        pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        while True:
            at = stream.count
            block = stream.read(512, f"the header at byte {at}")
            if block == bytes(512):
                return members
            where = f"{archive}: the header at byte {at}"
            stored = _header_checksum(block)
            if stored is None:
                raise BundleError(f"{where} is not a tar header (bad checksum): refused",
                                  hint="pass a .tar.gz written by `edgekit pack`")
            kind = block[156:157]
            raw_name = block[:100].split(b"\0", 1)[0]
            if block[257:265] == b"ustar\x0000" and block[345:500].strip(b"\0"):
                raw_name = block[345:500].split(b"\0", 1)[0] + b"/" + raw_name
            try:
                declared = _number(block[124:136])
            except (ValueError, UnicodeDecodeError):
                raise BundleError(f"{where} has an unreadable size field: refused") from None
            if kind in (b"x", b"X", b"g", b"L", b"K"):
                cap = lim.header_bytes if kind in (b"x", b"X", b"g") else lim.path_bytes
                label = "PAX header" if kind in (b"x", b"X", b"g") else "GNU long-name header"
                if kind == b"g":
                    raise BundleError(f"{where} is a global PAX header: refused (edgekit pack "
                                      "never writes one)",
                                      hint="only unpack archives written by `edgekit pack`")
                if declared < 0 or declared > cap:
                    raise BundleError(f"{where} is a {label} of {declared} bytes, over the "
                                      f"limit of {cap} bytes: refused before reading it",
                                      hint="only unpack archives written by `edgekit pack`")
                data = stream.read(-(-declared // 512) * 512, f"the {label} at byte {at}")
                data = data[:declared]
                if kind in (b"L", b"K"):
                    if kind == b"L":
                        long_name = data.split(b"\0", 1)[0]
                    continue
                pax = _pax_records(data, where)
                sparse = sorted(k for k in pax if k.startswith("GNU.sparse"))
                if sparse:
                    raise BundleError(f"{where} describes a sparse member ({sparse[0]}): "
                                      "refused (bundles hold plain files)",
                                      hint="only unpack archives written by `edgekit pack`")
                continue
            name_b = pax.get("path", long_name if long_name is not None else raw_name)
            name = name_b.decode("utf-8", "replace")
            where = f"{archive}: member {name[:200]!r}"
            if len(name_b) > lim.path_bytes or len(pax.get("linkpath", b"")) > lim.path_bytes:
                raise BundleError(f"{where} has a path of {len(name_b)} bytes, over the limit "
                                  f"of {lim.path_bytes} bytes: refused")
            if "size" in pax:
                try:
                    declared = int(pax["size"])
                except ValueError:
                    raise BundleError(f"{where} has an unreadable PAX size: refused") from None
            pax, long_name = {}, None
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, declared
            members.append(info)
            if len(members) > lim.members:
                raise BundleError(f"{archive} holds more than {lim.members} members (at "
                                  f"{name[:200]!r}): refused",
                                  hint="a bundle archive holds a few files")
            if kind == b"S":
                raise BundleError(f"{where} is a GNU sparse file: refused (bundles hold plain "
                                  "files)", hint="only unpack archives written by `edgekit pack`")
            if kind == b"\0" and raw_name.endswith(b"/") or kind in _DATALESS:
                if kind == b"\0":
                    info.type, info.name = tarfile.DIRTYPE, name.rstrip("/")
                if info.isdir():
                    info.name = info.name.rstrip("/")
                continue  # a folder, link, device or FIFO: no data follows (checked later)
            cap = lim.manifest_bytes if PurePosixPath(name).name == MANIFEST else lim.member_bytes
            if declared < 0 or declared > cap:
                raise BundleError(f"{where} declares {declared} bytes, over the limit of {cap} "
                                  "bytes for one member: refused before reading it",
                                  hint="only unpack archives written by `edgekit pack`")
            total += declared
            if total > lim.total_bytes or stream.count + declared > ceiling:
                raise BundleError(
                    f"{where} brings the archive to {total} bytes unpacked, over the limit "
                    f"of {min(lim.total_bytes, ceiling)} bytes for a {size}-byte archive "
                    f"(max({lim.min_ceiling}, {lim.ratio}x its size), at most "
                    f"{lim.total_bytes}): refused before writing anything",
                    hint="only unpack archives written by `edgekit pack`")
            stream.skip(-(-declared // 512) * 512, f"member {name[:200]!r}")


def _header_checksum(block: bytes) -> int | None:
    try:
        stored = _number(block[148:156])
    except (ValueError, UnicodeDecodeError):
        return None
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored if stored in (unsigned, signed) else None


def _check_member(m: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = m.name
    where = f"{archive}: member {name!r}"
    if not (m.isreg() or m.isdir()):
        kind = ("a symlink" if m.issym() else "a hard link" if m.islnk() else
                "a device" if (m.ischr() or m.isblk()) else "a FIFO" if m.isfifo() else
                "not a regular file")
        raise BundleError(f"{where} is {kind}: refused (bundles hold regular files only)",
                          hint="only unpack archives written by `edgekit pack`")
    if "\0" in name or "\\" in name:
        raise BundleError(f"{where} has an unsafe name: refused")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise BundleError(f"{where} is an absolute path: refused",
                          hint="only unpack archives written by `edgekit pack`")
    if ".." in path.parts:
        raise BundleError(f"{where} climbs out of the folder with '..': refused",
                          hint="only unpack archives written by `edgekit pack`")
    if m.size < 0 or m.size > MAX_UNPACKED_BYTES:
        raise BundleError(f"{where} claims {m.size} bytes: refused")
    return path


def unpack_bundle(archive: str | Path, dest: str | Path, *,
                  limits: ArchiveLimits | None = None, overwrite: bool = False) -> Bundle:
    """Unpack an archive written by :func:`pack_bundle` into the bundle folder ``dest`` and
    verify it (manifest and every checksum); see the module docs for what is refused.
    ``limits`` bounds what the archive may hold (:class:`ArchiveLimits`)."""
    archive = Path(archive)
    if not archive.exists():
        raise UsageError(f"archive {archive} does not exist")
    members = scan_archive(archive, limits)  # every header, bounded, before tarfile reads it
    fh = open_regular(archive, "archive")
    try:
        tar = tarfile.open(fileobj=fh, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        fh.close()
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}",
                          hint="pass a .tar.gz written by `edgekit pack`") from exc
    with fh, tar:
        tops, seen, total = set(), set(), 0
        for m in members:
            path = _check_member(m, archive)
            key = str(path).rstrip("/")
            if m.isreg():
                if key in seen:
                    raise BundleError(f"{archive}: member {m.name!r} appears twice: refused")
                seen.add(key)
                total += m.size
            if path.parts and path.parts[0] != ".":
                tops.add(path.parts[0])
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(f"{archive} would unpack to {total} bytes: refused")
        if len(tops) != 1:
            raise BundleError(f"{archive} holds {len(tops)} top-level entries "
                              f"({', '.join(sorted(tops)[:5])}); a bundle archive holds one folder",
                              hint="pass a .tar.gz written by `edgekit pack`")
        top = tops.pop()
        if f"{top}/{MANIFEST}" not in seen:
            raise BundleError(f"{archive} has no {top}/{MANIFEST}: not a bundle archive")
        with staged_bundle(Path(dest), overwrite=overwrite) as stage:
            try:
                for expected in members:  # one header at a time, as scanned
                    m = tar.next()
                    if m is None or (m.name, m.size, m.isreg(), m.isdir()) != (
                            expected.name, expected.size, expected.isreg(), expected.isdir()):
                        raise BundleError(f"{archive} changed while it was unpacked "
                                          f"(member {expected.name!r}): refused")
                    _check_member(m, archive)
                    tar.extract(m, stage / ".extract", filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise BundleError(f"{archive}: extraction failed ({exc}); nothing was kept",
                                  hint="the archive is truncated or unsafe") from exc
            root = stage / ".extract" / top
            bundle = load_bundle(root)
            listed = {MANIFEST} | {rec.path for rec in bundle.manifest.files()}
            extra = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                           if p.is_file() and str(p.relative_to(root)) not in listed)
            if extra:
                raise BundleError(f"{archive}: files not in the manifest: {', '.join(extra[:5])}",
                                  hint="the archive was altered after `edgekit pack`")
            bundle.check_files()  # every checksum; BundleError naming the file otherwise
            # the bundle becomes dest itself: move its contents up out of <stage>/<top>
            for child in list(root.iterdir()):
                os.rename(child, stage / child.name)
            shutil.rmtree(stage / ".extract")
    return load_bundle(dest)
