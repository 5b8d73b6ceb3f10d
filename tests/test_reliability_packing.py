"""Reliability case 15: pack/unpack round trips; unpacking refuses unsafe members, bad
checksums and truncation; a bundle's symlink out of its folder is refused."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from edgekit.bundle import load_bundle
from edgekit.cli import main
from edgekit.errors import (
    BundleError,
)

from conftest import tiny_tflite_bytes
from reliability_helpers import fake_bundle, prepare_previous, rel, tree

# =========================================================================== case 15


@pytest.fixture
def packed(tmp_path):
    root = fake_bundle(tmp_path / "kws", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)})
    from edgekit.archive import pack_bundle

    return root, pack_bundle(root, tmp_path / "kws.tar.gz")


def _hostile(tmp_path: Path, name: str, add) -> Path:
    path = tmp_path / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _member(tar, name, data=b"x", **kw):
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


@rel(case=15, behaviour="pack -> unpack round trip: deterministic archive, unpacked bundle "
     "passes every checksum")
def test_pack_unpack_round_trip(packed, tmp_path, capsys):
    from edgekit.archive import pack_bundle, unpack_bundle

    root, archive = packed
    again = pack_bundle(root, tmp_path / "again.tar.gz")
    assert again.read_bytes() == archive.read_bytes()
    bundle = unpack_bundle(archive, tmp_path / "restored")
    bundle.check_files()
    assert tree(tmp_path / "restored") == tree(root)
    assert main(["unpack", str(archive), "-o", str(tmp_path / "cli")]) == 0
    assert "checksums ok" in capsys.readouterr().out


@rel(case=15, behaviour="archives with absolute paths, '..', symlinks, hard links, devices or "
     "FIFOs: refused before anything is written; the destination untouched, nothing left")
@pytest.mark.parametrize("attack", ["absolute", "dotdot", "symlink", "hardlink", "device",
                                    "fifo"])
def test_unpack_refuses_unsafe_members(attack, packed, tmp_path, capsys):
    from edgekit.archive import unpack_bundle

    _, good = packed
    evil_target = tmp_path / "evil-target"

    def add(tar):
        with tarfile.open(good) as src:
            for m in src.getmembers():
                tar.addfile(m, src.extractfile(m))
        if attack == "absolute":
            _member(tar, str(evil_target))
        elif attack == "dotdot":
            _member(tar, "kws/../../evil-target")
        elif attack == "symlink":
            _member(tar, "kws/t/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        elif attack == "hardlink":
            _member(tar, "kws/t/hl", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        elif attack == "device":
            _member(tar, "kws/t/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        else:
            _member(tar, "kws/t/fifo", type=tarfile.FIFOTYPE)

    archive = _hostile(tmp_path, attack, add)
    dest = tmp_path / "dest"
    before = prepare_previous(dest)
    with pytest.raises(BundleError, match="refused"):
        unpack_bundle(archive, dest)
    assert tree(dest) == before and not evil_target.exists()
    assert not list(tmp_path.glob(".dest.*"))
    assert main(["unpack", str(archive), "-o", str(dest)]) == 1
    assert "refused" in capsys.readouterr().err


@rel(case=15, behaviour="archives whose files do not match the manifest checksums, with extra "
     "files, or truncated: BundleError naming the file; nothing left, destination untouched")
def test_unpack_checks_checksums_and_truncation(packed, tmp_path):
    from edgekit.archive import unpack_bundle

    _, good = packed

    def tampered(tar):
        with tarfile.open(good) as src:
            for m in src.getmembers():
                data = src.extractfile(m).read()
                if m.name.endswith("model.tflite"):
                    data = data[:-1] + b"X"
                _member(tar, m.name, data)

    def extra(tar):
        with tarfile.open(good) as src:
            for m in src.getmembers():
                tar.addfile(m, src.extractfile(m))
        _member(tar, "kws/t/payload.sh", b"#!/bin/sh\n")

    dest = tmp_path / "dest"
    before = prepare_previous(dest)
    with pytest.raises(BundleError, match=r"checksum mismatch for t/model.tflite"):
        unpack_bundle(_hostile(tmp_path, "tampered", tampered), dest)
    with pytest.raises(BundleError, match=r"files not in the manifest: t/payload.sh"):
        unpack_bundle(_hostile(tmp_path, "extra", extra), dest)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BundleError, match="cut.tar.gz"):
        unpack_bundle(cut, dest)
    assert tree(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@rel(case=15, behaviour="a bundle folder whose file is a symlink out of it (checksum made to "
     "match): verify, load and embed refuse it as a link, nothing read through it")
def test_bundle_symlink_out_of_the_folder_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside.tflite"
    outside.write_bytes(tiny_tflite_bytes(64))
    root = fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": outside.read_bytes()})
    (root / "t" / "model.tflite").unlink()
    (root / "t" / "model.tflite").symlink_to(outside)
    with pytest.raises(BundleError, match="is a link or resolves outside the bundle"):
        load_bundle(root).check_files()
    assert main(["verify", str(root)]) == 1
    assert "is a link" in capsys.readouterr().err
    assert main(["embed", str(root), "-o", str(tmp_path / "gen")]) == 1
    assert not (tmp_path / "gen").exists()
