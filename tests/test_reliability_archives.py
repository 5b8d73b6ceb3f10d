"""Reliability cases 20 and 21: archive bombs, and huge, sparse or special files.

Every archive here is a real .tar.gz (GNU tar for the sparse ones) built in a few milliseconds:
a header that claims gigabytes followed by a short gzip stream, or many tiny headers. The CLI
runs in a child under a 4 GiB address-space cap (``run_capped``); a FIFO is a real FIFO and the
tests that could block carry a timeout.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgekit.archive import ArchiveLimits, pack_bundle, unpack_bundle
from edgekit.errors import BundleError, DataError

from capped import run_capped
from conftest import tiny_tflite_bytes
from reliability_helpers import fake_bundle, rel, tree

GiB = 2**30
CAP_GIB = 4


# --------------------------------------------------------------------------- helpers


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode = size, kind, 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)  # base-256 sizes past 8 GiB


def _gz(path: Path, *parts: bytes, zeros: int = 0) -> Path:
    """A gzip file of ``parts`` then ``zeros`` zero bytes, written in 1 MiB steps."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1,
                                                mtime=0) as gz:
        for part in parts:
            gz.write(part)
        block = bytes(1 << 20)
        while zeros > 0:
            gz.write(block[:zeros])
            zeros -= len(block)
    return path


@pytest.fixture
def previous(tmp_path):
    """A real bundle unpacked at ``dest`` (the previous bundle an unpack must not touch)."""
    root = fake_bundle(tmp_path / "kws", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)})
    good = pack_bundle(root, tmp_path / "kws.tar.gz")
    dest = tmp_path / "dest"
    unpack_bundle(good, dest)
    return dest, tree(dest), good


def _refused_by_cli(archive: Path, dest: Path, before: dict, *needles: str) -> None:
    res = run_capped(["unpack", str(archive), "-o", str(dest)], cap_gib=CAP_GIB, timeout=120)
    text = res.out + res.err
    assert res.code == 1, text
    assert not res.traceback, text
    assert "refused" in res.err and archive.name in res.err, res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)
    assert 0 < res.peak_rss_bytes < 1 * GiB, res.peak_rss_bytes  # far below the 4 GiB cap
    assert tree(dest) == before
    assert not [p.name for p in dest.parent.iterdir() if ".partial-" in p.name
                or p.name.startswith(".dest.")]


# =========================================================================== case 20


@rel(case=20, behaviour="3 MB-class archives whose manifest.json claims 3 GiB, whose PAX header "
     "claims 3 GiB, or whose path is 5000 bytes: `unpack` refuses from the header (naming the "
     "archive, member and limit), exit 1, no traceback, memory far below a 4 GiB cap, previous "
     "bundle intact, nothing left")
@pytest.mark.parametrize("attack", ["manifest-3gib", "pax-3gib", "path-5000"])
def test_unpack_refuses_huge_headers_and_members(attack, previous, tmp_path):
    dest, before, _ = previous
    archive = tmp_path / f"{attack}.tar.gz"
    if attack == "manifest-3gib":
        _gz(archive, _header("b/manifest.json", 3 * GiB), zeros=3 << 20)
        needles = ("'b/manifest.json'", "declares 3221225472 bytes", "limit of 67108864")
    elif attack == "pax-3gib":
        _gz(archive, _header("././@PaxHeader", 3 * GiB, tarfile.XHDTYPE), zeros=3 << 20)
        needles = ("PAX header of 3221225472 bytes", "limit of 65536")
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("b/" + "a" * 5000)
            tar.addfile(info, io.BytesIO(b""))
        _gz(archive, buf.getvalue())
        needles = ("path of 5002 bytes", "limit of 4096")
    with pytest.raises(BundleError, match="refused"):
        unpack_bundle(archive, dest)
    _refused_by_cli(archive, dest, before, *needles)


@rel(case=20, behaviour="an archive of 50,000 empty-file headers (the 8-million-header attack, "
     "scaled): refused at member 10,001 while streaming, naming the archive and the limit, "
     "exit 1, no traceback, memory far below a 4 GiB cap, previous bundle intact")
def test_unpack_refuses_too_many_members(previous, tmp_path):
    dest, before, _ = previous
    blob = b"".join(_header(f"b/f{i}", 0) for i in range(50_000))
    archive = _gz(tmp_path / "headers.tar.gz", blob)
    _refused_by_cli(archive, dest, before, "more than 10000 members")


@rel(case=20, behaviour="gzip bombs: a small archive whose member declares 6 GiB (refused from "
     "the declared size against max(1 GiB, 200x the archive)), and 24 MiB of real zeros with "
     "the ceiling lowered to 1 MiB: refused before anything is written, naming archive, member "
     "and limit")
def test_unpack_refuses_gzip_bombs(previous, tmp_path):
    dest, before, _ = previous
    bomb = _gz(tmp_path / "bomb.tar.gz", _header("b/t/model.tflite", 6 * GiB), zeros=6 << 20)
    assert bomb.stat().st_size < 100_000
    _refused_by_cli(bomb, dest, before, "'b/t/model.tflite'", "6442450944",
                    "max(1073741824, 200x its size)")
    # real data, honest headers: the decompressed size is what is over the ceiling
    honest = tmp_path / "honest.tar.gz"
    with tarfile.open(honest, "w:gz") as tar:
        info = tarfile.TarInfo("b/t/zeros.bin")
        info.size = 24 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert honest.stat().st_size < 100_000
    limits = ArchiveLimits(min_ceiling=1 << 20)
    with pytest.raises(BundleError, match=r"honest.tar.gz: member 'b/t/zeros.bin' .*refused "
                                          r"before writing anything"):
        unpack_bundle(honest, dest, limits=limits)
    assert tree(dest) == before


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar for sparse archives")
@rel(case=20, behaviour="GNU tar --sparse archives (old GNU 'S' members and PAX GNU.sparse "
     "records) of a 15 GiB file of holes: refused as sparse before anything is written, exit 1, "
     "no traceback, previous bundle intact")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_unpack_refuses_sparse_members(fmt, previous, tmp_path):
    dest, before, _ = previous
    src = tmp_path / "src" / "b" / "t"
    src.mkdir(parents=True)
    with open(src / "model.tflite", "wb") as fh:
        fh.write(b"x" * 4096)
        fh.truncate(15 * GiB)
    archive = tmp_path / f"sparse-{fmt}.tar.gz"
    subprocess.run(["tar", f"--format={fmt}", "--sparse", "-czf", str(archive), "-C",
                    str(tmp_path / "src"), "b"], check=True, timeout=60)
    assert archive.stat().st_size < 200_000
    (src / "model.tflite").unlink()
    _refused_by_cli(archive, dest, before, "sparse")


# =========================================================================== case 21


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"\x1c\x00\x00\x00TFL3")
        fh.truncate(size)
    return path


@rel(case=21, behaviour="a bundle whose artifact is a 15 GiB sparse file (manifest bytes and "
     "checksum entry made to match the size): `verify` and `embed` refuse it as sparse from "
     "stat before reading a byte, naming the file; exit 1, no traceback, memory far below a "
     "4 GiB cap, in seconds")
def test_sparse_artifact_is_refused_before_reading(tmp_path):
    root = fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)})
    import json

    manifest = json.loads((root / "manifest.json").read_text())
    _sparse(root / "t" / "model.tflite", 15 * GiB)
    manifest["targets"]["t"]["files"][0]["bytes"] = 15 * GiB
    (root / "manifest.json").write_text(json.dumps(manifest))
    for args in (["verify", str(root)], ["embed", str(root), "-o", str(tmp_path / "gen")]):
        res = run_capped(args, cap_gib=CAP_GIB, timeout=120)
        assert res.code == 1, res.out + res.err
        assert not res.traceback, res.err
        assert "model.tflite" in res.err and "sparse" in res.err, res.err
        assert 0 < res.peak_rss_bytes < 1 * GiB and res.seconds < 60
    assert not (tmp_path / "gen").exists() or not list((tmp_path / "gen").iterdir())


@rel(case=21, behaviour="a FIFO where a file is expected (bundle artifact, manifest.json, "
     "reference.npz, lone model, OpenVINO .bin, calibration/eval .npz): refused without blocking "
     "(each run under a timeout), naming the file, no traceback")
def test_fifos_are_refused_without_blocking(tmp_path):
    tfl = tiny_tflite_bytes(64)
    fifos = []

    def fifo(path: Path) -> Path:
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        fifos.append(path)
        return path

    art = fake_bundle(tmp_path / "art", "tflite", {"t/model.tflite": tfl})
    fifo(art / "t" / "model.tflite")
    man = fake_bundle(tmp_path / "man", "tflite", {"t/model.tflite": tfl})
    fifo(man / "manifest.json")
    ref = fake_bundle(tmp_path / "ref", "tflite", {"t/model.tflite": tfl})
    fifo(ref / "reference.npz")
    lone = fifo(tmp_path / "lone.tflite")
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "model.xml").write_text('<?xml version="1.0"?>\n<net name="m" version="11">'
                                  "<layers></layers><edges></edges></net>\n")
    fifo(ir / "model.bin")
    cases = [
        (["verify", str(art)], "model.tflite"),
        (["embed", str(art), "-o", str(tmp_path / "gen")], "model.tflite"),
        (["verify", str(man)], "manifest.json"),
        (["verify", str(ref)], "reference.npz"),
        (["embed", str(lone), "-o", str(tmp_path / "gen")], "lone.tflite"),
        (["bench", str(ir / "model.xml"), "--runs", "1", "--warmup", "0", "--data", "none",
          "--no-memory", "-q"], "model.bin"),
    ]
    for args, name in cases:
        res = run_capped(args, cap_gib=CAP_GIB, timeout=60)  # a blocked open fails the test
        assert res.code in (1, 2), (args, res.out + res.err)
        assert not res.traceback, (args, res.err)
        assert name in res.err, (args, res.err)
        assert any(w in res.err for w in ("FIFO", "not a file", "not a regular file")), res.err
    from edgekit.data import load_npz
    from edgekit.quantize.calibration import _from_npz

    data = fifo(tmp_path / "data.npz")
    with pytest.raises(DataError, match="data.npz is a FIFO"):
        load_npz(data)
    with pytest.raises(DataError, match="data.npz is a FIFO"):
        _from_npz(data, ["x"])
    assert all(p.exists() for p in fifos)  # nothing removed or replaced


def _npz_declaring(path: Path, member: str, shape: tuple[int, ...]) -> Path:
    """A real .npz whose member's .npy header declares ``shape`` over a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{member}.npy", np.lib.format.magic(2, 0) + header.getvalue()[8:] +
                    bytes(64))
    return path


@rel(case=21, behaviour="a reference.npz (and calibration/eval .npz) whose member's .npy header "
     "declares 1 TiB: `verify` refuses it naming the file, the member and the declared bytes "
     "before numpy allocates; exit 1, no traceback, memory far below a 4 GiB cap")
def test_npz_declaring_a_terabyte_is_refused(tmp_path):
    root = fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)})
    import json

    from edgekit.bundle import file_record

    _npz_declaring(root / "reference.npz", "input.x", (2**38,))  # 2**38 float32 = 1 TiB
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["reference"] = file_record(root, "reference.npz")
    (root / "manifest.json").write_text(json.dumps(manifest))
    res = run_capped(["verify", str(root)], cap_gib=CAP_GIB, timeout=120)
    assert res.code == 1, res.out + res.err
    assert not res.traceback, res.err
    assert "reference.npz" in res.err and "'input.x.npy'" in res.err, res.err
    assert str(2**40) in res.err, res.err
    assert 0 < res.peak_rss_bytes < 1 * GiB

    from edgekit.data import load_npz
    from edgekit.quantize.calibration import _from_npz

    evil = _npz_declaring(tmp_path / "calib.npz", "x", (2**38,))
    with pytest.raises(DataError, match=rf"calib.npz: member 'x.npy' declares an array of "
                                        rf"{2**40} bytes"):
        _from_npz(evil, ["x"])
    with pytest.raises(DataError, match=rf"{2**40} bytes"):
        load_npz(evil, input_keys=("x",), target_key="x")
    # a zip entry whose declared uncompressed size is beyond what its compressed bytes can give
    lying = tmp_path / "lying.npz"
    np.savez(lying, x=np.zeros(4, np.float32))
    blob = bytearray(lying.read_bytes())
    with zipfile.ZipFile(lying) as zf:
        info = zf.infolist()[0]
    cd = blob.rfind(b"PK\x01\x02")
    blob[cd + 24:cd + 28] = (2**31).to_bytes(4, "little")  # central directory: file size
    lying.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"lying.npz: member 'x.npy' declares 2147483648 bytes"):
        _from_npz(lying, ["x"])
    assert info.file_size < 1000
