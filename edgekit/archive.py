"""Bundles as single files: ``edgekit pack`` (tar.gz) and ``edgekit unpack`` (safe extraction).

:func:`unpack_bundle` treats the archive as untrusted: before anything is written every member
is checked (regular files and folders only: no symlinks, hard links, devices or FIFOs; no
absolute paths, no ``..``, no member outside the bundle folder, no duplicates, sizes within
limits); extraction then uses Python's ``tarfile`` ``data`` filter as a second line, into a
staging folder next to the destination; the unpacked manifest is read and every file's sha256
checked. Only then does the staging folder replace the destination (atomically, as for builds).
On any failure nothing is left behind and an existing destination is untouched.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from .bundle import MANIFEST, Bundle, load_bundle, staged_bundle
from .errors import BundleError, UsageError

__all__ = ["pack_bundle", "unpack_bundle", "MAX_UNPACKED_BYTES"]

#: Refuse archives that would unpack to more than this (a zip/tar bomb guard; 16 GiB).
MAX_UNPACKED_BYTES = 16 * 2**30
MAX_MEMBERS = 10_000


def pack_bundle(bundle_dir: str | Path, archive: str | Path) -> Path:
    """Write ``bundle_dir`` (checked first) as a deterministic ``.tar.gz`` at ``archive``.

    Members are the manifest's files plus the manifest, under ``<bundle name>/``, with fixed
    owner, mode and time, so the same bundle always gives the same archive bytes.
    """
    bundle = load_bundle(bundle_dir)
    bundle.check_files()
    rels = {MANIFEST}
    for t in bundle.targets:
        rels.update(rec["path"] for rec in bundle.manifest["targets"][t]["files"])
    if "reference" in bundle.manifest:
        rels.add(bundle.manifest["reference"]["path"])
    archive = Path(archive)
    if archive.resolve().is_relative_to(bundle.root.resolve()):
        raise UsageError(f"the archive {archive} would be inside the bundle it packs")
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.partial")
    top = bundle.root.name
    try:
        import gzip

        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
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
        os.replace(tmp, archive)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return archive


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


def unpack_bundle(archive: str | Path, dest: str | Path) -> Bundle:
    """Unpack an archive written by :func:`pack_bundle` into the bundle folder ``dest`` and
    verify it (manifest and every checksum); see the module docs for what is refused."""
    archive = Path(archive)
    if not archive.is_file():
        raise UsageError(f"archive {archive} does not exist")
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}",
                          hint="pass a .tar.gz written by `edgekit pack`") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{archive} is truncated or corrupt: {exc}") from exc
        if len(members) > MAX_MEMBERS:
            raise BundleError(f"{archive} has {len(members)} members: refused")
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
        with staged_bundle(Path(dest)) as stage:
            try:
                tar.extractall(stage / ".extract", members=members, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise BundleError(f"{archive}: extraction failed ({exc}); nothing was kept",
                                  hint="the archive is truncated or unsafe") from exc
            root = stage / ".extract" / top
            bundle = load_bundle(root)
            listed = {MANIFEST} | {rec["path"] for t in bundle.targets
                                   for rec in bundle.manifest["targets"][t]["files"]}
            if "reference" in bundle.manifest:
                listed.add(bundle.manifest["reference"]["path"])
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
