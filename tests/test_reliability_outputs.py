"""Reliability cases 16 and 17: output folders edgekit did not make, and the bundle swap.

Real folders, real subprocesses, real signals: a user's folder given as ``-o`` is never
deleted without ``--force``; ``/``, home, the current folder and its parents, mount points and
another user's folder are never replaced; a run killed mid-build or between its renames leaves
the previous bundle (or gets it back on the next run); leftovers of dead runs are removed;
bundles get the user's umask.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgekit.archive import pack_bundle, unpack_bundle
from edgekit.bundle import check_out_dir, load_bundle, staged_bundle
from edgekit.errors import BundleError, OutputPathError

from capped import run_capped
from reliability_helpers import (
    fake_bundle,
    onnx_file,
    reap,
    rel,
    stalled_build,
    tiny_mount,
    tree,
    wait_for,
)

__all__ = ["tiny_mount"]  # the fixture, re-exported for pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": str(ROOT)}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A real `edgekit pack` archive of a small bundle (built by hand, consistent checksums)."""
    model = onnx_file(tmp_path / "src-model", external=False).read_bytes()
    src = fake_bundle(tmp_path / "src" / "kws", "onnxruntime", {"t/model.onnx": model})
    return pack_bundle(src, tmp_path / "kws.tar.gz")


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "src").mkdir()
    (path / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    return tree(path)


def _listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# =========================================================================== case 16


@rel(case=16, behaviour="`unpack`/`build -o DIR` at a user's folder (no manifest) or at a bundle "
     "holding an unlisted file: exit 2 before any work, naming DIR, the files in the way and "
     "--force; the files intact, nothing left beside; --force, an empty folder and a previous "
     "bundle are replaced")
def test_user_folder_is_refused_unless_forced(archive, tmp_path):
    proj = tmp_path / "proj"
    before = _user_folder(proj)
    r = run_capped(["unpack", str(archive), "-o", str(proj)], cap_gib=4, cwd=tmp_path, env=ENV)
    assert r.code == 2 and not r.traceback, r.err
    assert f"refusing to replace {proj}" in r.err and "notes.txt" in r.err and "--force" in r.err
    assert tree(proj) == before and not list(tmp_path.glob(".proj.*"))

    # build: refused at the start, before any training or export
    r = run_capped(["build", "cnn", "-t", "x86-onnxruntime-fp32", "-o", "proj"], cap_gib=4,
                   cwd=tmp_path, env=ENV)
    assert r.code == 2 and not r.traceback and "notes.txt" in r.err, r.err
    assert "[edgekit]" not in r.err  # no progress line: no stage started
    assert tree(proj) == before and not list(tmp_path.glob(".proj.*"))

    # a bundle edgekit made, plus one file of the user's inside it
    bundle = tmp_path / "bundle"
    assert unpack_bundle(archive, bundle).root == bundle
    (bundle / "t" / "mine.txt").write_text("keep")
    held = tree(bundle)
    r = run_capped(["unpack", str(archive), "-o", str(bundle)], cap_gib=4, env=ENV)
    assert r.code == 2 and "t/mine.txt" in r.err and "manifest does not list" in r.err, r.err
    assert tree(bundle) == held

    # the ways out: --force, an empty folder, a previous bundle edgekit made
    r = run_capped(["unpack", str(archive), "-o", str(proj), "--force"], cap_gib=4, env=ENV)
    assert r.code == 0, r.err
    assert "notes.txt" not in _listing(proj) and load_bundle(proj).check_files() is None
    (tmp_path / "empty").mkdir()
    r = run_capped(["unpack", str(archive), "-o", str(tmp_path / "empty")], cap_gib=4, env=ENV)
    assert r.code == 0, r.err
    (bundle / "t" / "mine.txt").unlink()
    r = run_capped(["unpack", str(archive), "-o", str(bundle)], cap_gib=4, env=ENV)
    assert r.code == 0, r.err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@rel(case=16, behaviour="`prune -o DIR` and `demo -o OUT` (bundle at OUT/cnn) at a user's "
     "folder: exit 2 before training, naming the folder and --force; the files intact")
@pytest.mark.parametrize("command", ["prune", "demo"])
def test_prune_and_demo_refuse_a_user_folder(command, tmp_path):
    if command == "prune":
        args, proj = ["prune", "cnn", "-t", "x86-onnxruntime-fp32", "--ratio", "0.5",
                      "-o", "proj"], tmp_path / "proj"
    else:
        args, proj = ["demo", "-o", "report", "--runs", "2"], tmp_path / "report" / "cnn"
    before = _user_folder(proj)
    r = run_capped(args, cap_gib=4, cwd=tmp_path, env=ENV)
    assert r.code == 2 and not r.traceback, r.err
    assert f"refusing to replace {proj}" in r.err and "--force" in r.err
    assert "[edgekit]" not in r.err  # refused before training
    assert tree(proj) == before and not list(proj.parent.glob(".*"))


@rel(case=16, behaviour="Python API: unpack_bundle/compress into a user's folder raise "
     "OutputPathError naming it before the model runs; overwrite=True replaces it")
def test_python_api_refuses_unless_overwrite(archive, tmp_path):
    import torch

    from edgekit.pipeline import compress

    class Untouchable(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the model ran before the output folder was checked")

    proj = tmp_path / "proj"
    before = _user_folder(proj)
    with pytest.raises(OutputPathError, match="notes.txt"):
        unpack_bundle(archive, proj)
    with pytest.raises(OutputPathError, match=r"(?s)proj.*overwrite=True"):
        compress(Untouchable(), torch.zeros(1, 4), targets=["x86-onnxruntime-fp32"],
                 out_dir=proj, progress=False)
    assert tree(proj) == before
    assert unpack_bundle(archive, proj, overwrite=True).root == proj
    assert "notes.txt" not in _listing(proj)


@rel(case=16, behaviour="`-o .`, `-o ..`, `-o /`, `-o $HOME` and `-o LINK` (even with --force): "
     "exit 2 before any work naming the folder and why; cwd, its parent, home and / unchanged, "
     "nothing renamed or left")
@pytest.mark.parametrize("where", [".", "..", "/", "home", "link"])
def test_dangerous_out_folders_are_always_refused(where, tmp_path):
    work = tmp_path / "work"
    home = tmp_path / "home"
    _user_folder(work)
    _user_folder(home)
    (tmp_path / "target").mkdir()
    (work / "link").symlink_to(tmp_path / "target")
    out = {"home": str(home), "link": "link"}.get(where, where)
    why = {".": "it is the current folder", "..": "it holds the current folder",
           "/": "it is the root folder", "home": "it is your home folder",
           "link": "it is a link"}[where]
    watched = [work, tmp_path, home, Path("/")]
    listings = {p: _listing(p) for p in watched}
    trees = {p: tree(p) for p in (work, home)}
    r = run_capped(["build", "cnn", "-t", "x86-onnxruntime-fp32", "-o", out, "--force"],
                   cap_gib=4, cwd=work, env={**ENV, "HOME": str(home)})
    assert r.code == 2 and not r.traceback, r.err
    assert "refusing to write a bundle at" in r.err and why in r.err, r.err
    assert "[edgekit]" not in r.err  # refused before training
    assert {p: _listing(p) for p in watched} == listings
    assert {p: tree(p) for p in (work, home)} == trees
    assert (work / "link").is_symlink()


@rel(case=16, behaviour="`-o` at a mount point (a real tmpfs, as root), with --force: exit 2 "
     "'mount point', the mounted files intact")
def test_mount_point_is_refused(archive, tmp_path, tiny_mount):
    point = tiny_mount("size=1m")
    (point / "data.bin").write_bytes(b"mounted")
    r = run_capped(["unpack", str(archive), "-o", str(point), "--force"], cap_gib=4, env=ENV)
    assert r.code == 2 and not r.traceback, r.err
    assert "mount point" in r.err and str(point) in r.err
    assert _listing(point) == ["data.bin"] and os.path.ismount(point)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@rel(case=16, behaviour="`-o` at another user's folder in a sticky folder (chowned, as root), "
     "with --force: exit 2 'belongs to another user', their files intact")
def test_other_users_folder_in_sticky_dir_is_refused(archive, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown a folder to another user")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    theirs = shared / "theirs"
    before = _user_folder(theirs)
    for p in (theirs, theirs / "notes.txt", theirs / "src", theirs / "src" / "main.c"):
        os.chown(p, 54321, 54321)
    r = run_capped(["unpack", str(archive), "-o", str(theirs), "--force"], cap_gib=4, env=ENV)
    assert r.code == 2 and not r.traceback, r.err
    assert "belongs to another user (uid 54321)" in r.err and str(theirs) in r.err
    assert tree(theirs) == before and _listing(shared) == ["theirs"]


@rel(case=16, behaviour="`-o` at a shared sticky folder itself (mode 1777, like /tmp), with "
     "--force: exit 2 'shared sticky folder', everything in it intact")
def test_sticky_folder_itself_is_refused(archive, tmp_path):
    shared = tmp_path / "shared"
    before = _user_folder(shared)
    os.chmod(shared, 0o1777)
    r = run_capped(["unpack", str(archive), "-o", str(shared), "--force"], cap_gib=4, env=ENV)
    assert r.code == 2 and not r.traceback, r.err
    assert "shared sticky folder" in r.err and str(shared) in r.err
    assert tree(shared) == before


# =========================================================================== case 17


@rel(case=17, behaviour="SIGKILL to a real `edgekit build` mid-export: the previous bundle "
     "byte-identical; a live run's staging folder is never removed; the dead run's is removed "
     "by the next run")
def test_sigkill_mid_build_keeps_previous_and_next_run_cleans(archive, tmp_path):
    out = tmp_path / "out"
    unpack_bundle(archive, out)
    before = tree(out)
    proc = stalled_build(tmp_path)
    try:
        staging = list(tmp_path.glob(f".out.partial-{proc.pid}-*"))
        assert len(staging) == 1, list(tmp_path.iterdir())
        check_out_dir(out)  # another run's check: the live run's staging stays
        assert staging[0].is_dir()
    finally:
        reap(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert tree(out) == before and staging[0].is_dir()
    r = run_capped(["unpack", str(archive), "-o", str(out)], cap_gib=4, env=ENV)
    assert r.code == 0, r.err
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())
    assert tree(out) == before


_KILLED_BETWEEN_RENAMES = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import edgekit.bundle as b
    b._rename_exchange = lambda a, c: False   # the two-rename path (no renameat2)
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in str(dst):               # the bundle is moved aside: stall here
            Path(sys.argv[2]).touch()
            time.sleep(120)
    b.os.rename = rename
    with b.staged_bundle(Path(sys.argv[1])) as stage:
        (stage / "manifest.json").write_text("{}")
""")


@rel(case=17, behaviour="SIGKILL between the two renames (a real process, real signal, "
     "renameat2 off): load_bundle names the hidden .old-* folder; the next run, even a failing "
     "`unpack`, restores the previous bundle byte-identical and leaves nothing behind")
def test_sigkill_between_renames_is_recovered(archive, tmp_path):
    out = tmp_path / "out"
    unpack_bundle(archive, out)
    before = tree(out)
    marker = tmp_path / "between"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(out),
                             str(marker)], env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 60, "the first rename")
        assert proc.poll() is None, proc.communicate()
    finally:
        reap(proc, signal.SIGKILL)
    assert not out.exists()
    hidden = list(tmp_path.glob(f".out.old-{proc.pid}-*"))
    assert len(hidden) == 1
    with pytest.raises(BundleError, match=r"killed while replacing it.*\.out\.old-"):
        load_bundle(out)

    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    r = run_capped(["unpack", str(garbage), "-o", str(out)], cap_gib=4, env=ENV)
    assert r.code == 1 and not r.traceback, r.err
    assert "restored the previous bundle" in r.err
    assert tree(out) == before
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())


_OBSERVER = textwrap.dedent("""
    import os, sys
    path, stop = sys.argv[1], sys.argv[2]
    seen = missing = 0
    while not os.path.exists(stop):
        seen += 1
        if not os.path.exists(path):
            missing += 1
    print(seen, missing)
""")


@rel(case=17, behaviour="the bundle swap is one atomic exchange: a concurrent process polling "
     "DIR/manifest.json during 150 rebuilds never finds it missing")
def test_swap_never_leaves_the_path_missing(tmp_path):
    out = tmp_path / "out"
    with staged_bundle(out) as stage:
        (stage / "manifest.json").write_text('{"schema_version": 1, "targets": {}}\n')
    stop = tmp_path / "stop"
    watcher = subprocess.Popen([sys.executable, "-c", _OBSERVER, str(out / "manifest.json"),
                                str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        for i in range(150):
            with staged_bundle(out) as stage:
                (stage / "manifest.json").write_text(
                    f'{{"schema_version": 1, "targets": {{}}, "build": {i}}}\n')
    finally:
        stop.touch()
        seen, missing = map(int, watcher.communicate(timeout=30)[0].split())
    assert seen > 1000 and missing == 0, (seen, missing)
    assert '"build": 149' in (out / "manifest.json").read_text()
    assert _listing(tmp_path) == ["out", "stop"]


@rel(case=17, behaviour="bundles get the user's umask: `unpack` under umask 022 gives folders "
     "0755 and files 0644, under 077 folders 0700 and files 0600")
@pytest.mark.parametrize("mask,dirs,files", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_bundle_modes_follow_the_umask(archive, tmp_path, mask, dirs, files):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["sh", "-c", f'umask {mask:03o} && exec "$0" -m edgekit unpack "$1" -o "$2"',
         sys.executable, str(archive), str(out)],
        env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o7777
             for p in [out, *out.rglob("*")]}
    assert modes == {k: dirs if (tmp_path / k).is_dir() else files for k in modes}, modes
    assert modes["out"] == dirs and modes["out/t"] == dirs and modes["out/manifest.json"] == files


@rel(case=17, behaviour="staging folders of dead processes (bundle `.partial-PID-*`, build cache "
     "`.partial-PID-*`) are removed by the next run; a live process's are kept")
def test_dead_staging_folders_are_removed(archive, tmp_path):
    from edgekit import cache

    dead, live = _dead_pid(), os.getpid()
    out = tmp_path / "out"
    unpack_bundle(archive, out)
    leftovers = {kind: tmp_path / f".out.{kind}-{dead}-x1" for kind in ("partial", "old")}
    kept = tmp_path / f".out.partial-{live}-x2"
    other = tmp_path / f".other.old-{dead}-x3"  # another bundle's: not this run's business
    for p in [*leftovers.values(), kept, other]:
        p.mkdir()
        (p / "junk.bin").write_bytes(b"x" * 1000)
    unpack_bundle(archive, out)  # out exists: the dead run's .old-* is removed, not restored
    assert not any(p.exists() for p in leftovers.values())
    assert kept.is_dir() and other.is_dir()

    store = tmp_path / "cache"
    key = "ab" + "0" * 62
    (store / "ab").mkdir(parents=True)
    stale = store / "ab" / f".{key[:16]}.partial-{dead}-y1"
    busy = store / "ab" / f".{key[:16]}.partial-{live}-y2"
    stale.mkdir()
    busy.mkdir()
    cache.store(key, out, cache_dir=store)
    assert not stale.exists() and busy.is_dir()
    assert (store / "ab" / key / "manifest.json").is_file()
    shutil.rmtree(busy)
