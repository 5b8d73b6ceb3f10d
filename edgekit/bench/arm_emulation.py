"""An emulated aarch64 "board" on this x86 machine, for testing the remote runner for real.

Built once into a cache folder (``$EDGEKIT_ARM_CACHE``, default ``~/.cache/edgekit/arm``):

* ``qemu-aarch64-static`` taken out of Debian's ``qemu-user-static`` package;
* an arm64 sysroot: ``dpkg -x`` of the arm64 dependency closure of ``python3.11 libstdc++6
  libgomp1`` (``dpkg --add-architecture arm64 && apt-get update`` needs root), with a fake ARM
  ``/proc/cpuinfo`` and ``midr_el1`` inside it (onnxruntime's CPU detection crashes on the
  host's x86 cpuinfo that qemu passes through);
* the real aarch64 wheels of numpy, onnxruntime, ai-edge-litert and openvino, installed with
  the host's pip ``--target`` (no emulation involved);
* ``bin/python3``: a wrapper that runs the emulated Python with those wheels and sets
  ``EDGEKIT_EMULATED=qemu-aarch64`` so the device runner labels its timings as emulated.

:func:`loopback_sshd` starts a real OpenSSH server on 127.0.0.1 (Debian ``openssh-server``)
that stands in for a remote board. Emulated timings say nothing about ARM speed: use this for
correctness (the runtimes import, the artifact loads, the outputs match x86).

Command line: ``python -m edgekit.bench.arm_emulation [--cache DIR]`` (what
``scripts/setup_arm_emulation.sh`` runs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ArmEmulation", "LoopbackSSH", "cache_dir", "ensure_arm_emulation", "loopback_sshd",
           "setup_unavailable_reason"]

PACKAGES = ("python3.11", "libstdc++6", "libgomp1")
SKIP_DEPS = {"dpkg", "tar", "install-info", "openssl", "python3", "debconf", "perl-base",
             "readline-common", "media-types", "tzdata", "debianutils", "base-files",
             "sensible-utils", "mime-support", "netbase", "libc-bin", "perl", "libperl5.36",
             "perl-modules-5.36", "mailcap"}
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert", "openvino")
PLATFORMS = ("manylinux_2_35_aarch64", "manylinux_2_28_aarch64", "manylinux_2_27_aarch64",
             "manylinux_2_17_aarch64", "manylinux2014_aarch64")
STAMP = ".complete-v1"

_CPU_BLOCK = """processor\t: {i}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""


def cache_dir() -> Path:
    env = os.environ.get("EDGEKIT_ARM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgekit" / "arm"


@dataclass(frozen=True)
class ArmEmulation:
    root: Path

    @property
    def qemu(self) -> Path:
        return self.root / "qemu-aarch64-static"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def bin_dir(self) -> Path:
        """Folder whose ``python3`` is the emulated Python (put it first in a remote PATH)."""
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin_dir / "python3"


def _log(msg: str) -> None:
    print(f"[edgekit arm] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def setup_unavailable_reason() -> str | None:
    """Why the emulated board cannot be built here (None when it can, or already is)."""
    if (cache_dir() / STAMP).is_file() and Path("/usr/sbin/sshd").is_file():
        return None
    if sys.platform != "linux":
        return "ARM emulation needs Linux (qemu-user)"
    if os.uname().machine != "x86_64":
        return f"ARM emulation setup is written for x86_64 hosts, not {os.uname().machine}"
    if os.geteuid() != 0:
        return "building the arm64 sysroot needs root (dpkg --add-architecture arm64)"
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        return "apt-get/dpkg not available (Debian/Ubuntu needed)"
    return None


def _apt_download(names: list[str], dest: Path) -> None:
    """``apt-get download``; ``name:arm64`` entries that have no arm64 build (Architecture:
    all packages) are fetched without the suffix."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", "download", *names], cwd=dest, capture_output=True,
                          text=True)
    if proc.returncode == 0:
        return
    bad = set()
    for line in proc.stderr.splitlines():
        if "has no candidate" in line and "package " in line:
            bad.add(line.split("package ", 1)[1].split()[0])
    if not bad or not bad <= set(names):
        raise RuntimeError(f"apt-get download failed: {proc.stderr.strip()[-1500:]}")
    rest = [n.split(":")[0] if n in bad else n for n in names]
    _run(["apt-get", "download", *rest], cwd=dest)


def _install_sshd() -> None:
    if Path("/usr/sbin/sshd").is_file():
        return
    _log("installing openssh-server (apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "install", "-y", "--no-install-recommends", "openssh-server"], env=env)


def ensure_arm_emulation(root: Path | None = None, *, sshd: bool = True) -> ArmEmulation:
    """Build the emulated aarch64 Python once (cached); return its paths."""
    root = Path(root) if root else cache_dir()
    emu = ArmEmulation(root)
    if sshd:
        _install_sshd()
    if (root / STAMP).is_file():
        return emu
    reason = setup_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-arm-", dir=root) as tmp_s:
        tmp = Path(tmp_s)
        arches = _run(["dpkg", "--print-foreign-architectures"]).stdout.split()
        if "arm64" not in arches or not _apt_has_arm64():
            _log("dpkg --add-architecture arm64 && apt-get update")
            _run(["dpkg", "--add-architecture", "arm64"])
            _run(["apt-get", "update"])
        if not emu.qemu.is_file():
            _log("qemu-aarch64-static from qemu-user-static")
            _apt_download(["qemu-user-static"], tmp / "qemu")
            deb = next((tmp / "qemu").glob("qemu-user-static_*.deb"))
            data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                                  capture_output=True).stdout
            out = subprocess.run(["tar", "-xO", "./usr/bin/qemu-aarch64-static"], input=data,
                                 check=True, capture_output=True).stdout
            emu.qemu.write_bytes(out)
            emu.qemu.chmod(0o755)
        _log("arm64 sysroot (python3.11, libstdc++6, libgomp1)")
        deps = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                     "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                     *[f"{p}:arm64" for p in PACKAGES]]).stdout
        names = set()
        for line in deps.splitlines():
            name = line.strip().removeprefix("Depends:").removeprefix("PreDepends:").strip()
            if not name or name.startswith("<") or " " in name:
                continue
            base = name.split(":")[0]
            if base in SKIP_DEPS:
                continue
            names.add(f"{base}:arm64")
        _apt_download(sorted(names), tmp / "debs")
        sysroot = emu.sysroot
        if sysroot.exists():
            shutil.rmtree(sysroot)
        sysroot.mkdir()
        for deb in sorted((tmp / "debs").glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(sysroot)])
        (sysroot / "proc").mkdir(exist_ok=True)
        (sysroot / "proc" / "cpuinfo").write_text(
            "".join(_CPU_BLOCK.format(i=i) for i in range(os.cpu_count() or 2)))
        for i in range(os.cpu_count() or 2):
            regs = sysroot / f"sys/devices/system/cpu/cpu{i}/regs/identification"
            regs.mkdir(parents=True, exist_ok=True)
            (regs / "midr_el1").write_text("0x00000000413fd0c1\n")
        if not (sysroot / "usr/bin/python3.11").is_file():
            raise RuntimeError(f"sysroot {sysroot} has no usr/bin/python3.11")
        _log(f"aarch64 wheels ({', '.join(WHEELS)}) via pip --target (~280 MB)")
        if emu.site.exists():
            shutil.rmtree(emu.site)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--target", str(emu.site), "--only-binary=:all:", "--python-version", "3.11",
               "--implementation", "cp", "--abi", "cp311"]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        cmd += list(WHEELS)
        constraints = Path(__file__).resolve().parents[2] / "constraints.txt"
        if constraints.is_file():
            cmd += ["-c", str(constraints)]
        _run(cmd)
        emu.bin_dir.mkdir(exist_ok=True)
        emu.python.write_text(_wrapper(emu))
        emu.python.chmod(0o755)
    (root / STAMP).write_text(f"built in {time.perf_counter() - t0:.1f} s\n")
    _log(f"ready in {time.perf_counter() - t0:.1f} s: {emu.python}")
    return emu


def _apt_has_arm64() -> bool:
    out = subprocess.run(["apt-cache", "policy", "libc6:arm64"], capture_output=True, text=True)
    return "Candidate:" in out.stdout and "Candidate: (none)" not in out.stdout


def _wrapper(emu: ArmEmulation) -> str:
    return f"""#!/bin/sh
# Emulated aarch64 Python (qemu-user) with the aarch64 wheels; written by edgekit.
export QEMU_LD_PREFIX='{emu.sysroot}'
export QEMU_CPU=neoverse-n1
export PYTHONPATH='{emu.site}'
export PYTHONNOUSERSITE=1
export EDGEKIT_EMULATED=qemu-aarch64
exec '{emu.qemu}' -L '{emu.sysroot}' '{emu.sysroot}/usr/bin/python3.11' "$@"
"""


# --------------------------------------------------------------------------- loopback sshd


@dataclass
class LoopbackSSH:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def loopback_sshd(workdir: Path, *, path_prefix: Path | None = None) -> Iterator[LoopbackSSH]:
    """A real sshd on 127.0.0.1:<free port> accepting one fresh client key, for the current
    user. ``path_prefix`` goes first in the PATH of remote commands (e.g. the folder holding
    the emulated ``python3``)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).is_file():
        raise RuntimeError("sshd not installed (apt-get install openssh-server)")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    for key in (host_key, client_key):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    auth = workdir / "authorized_keys"
    line = client_key.with_suffix(".pub").read_text().strip()
    if path_prefix is not None:
        line = f'environment="PATH={Path(path_prefix).absolute()}:/usr/bin:/bin" {line}'
    auth.write_text(line + "\n")
    auth.chmod(0o600)
    port = _free_port()
    config = workdir / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {auth}", f"PidFile {workdir / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "PermitRootLogin prohibit-password", "PermitUserEnvironment yes",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
    ]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    log = open(workdir / "sshd.log", "wb")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(workdir / 'sshd.log').read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not start listening within 10 s")
            time.sleep(0.05)
        import getpass

        yield LoopbackSSH("127.0.0.1", port, getpass.getuser(), client_key,
                          workdir / "known_hosts", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Build the emulated aarch64 Python (cached).")
    p.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {cache_dir()})")
    p.add_argument("--no-sshd", action="store_true", help="do not apt-get install openssh-server")
    args = p.parse_args(argv)
    try:
        emu = ensure_arm_emulation(args.cache, sshd=not args.no_sshd)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"edgekit arm: error: {exc} {detail[-2000:]}", file=sys.stderr)
        return 1
    print(emu.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
