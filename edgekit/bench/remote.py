"""Benchmark an artifact on a remote device (an ARM board) over SSH.

The artifact's files, :mod:`edgekit.bench.device_runner` (self-contained: numpy + the device's
runtime) and the input arrays are copied with ``scp`` into a fresh folder on the device; the
runner runs there with the device's ``python3``; its JSON result and outputs come back with
``scp``; the folder is removed. Every ``ssh``/``scp`` call takes an argument list (remote
commands are quoted with :func:`shlex.quote`, never interpolated raw), runs with
``BatchMode=yes``, a connect timeout and an overall timeout. A lock file per ``host:port``
(``fcntl.flock``) serialises access so two benchmarks never share a board.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError, UsageError

__all__ = ["RemoteDevice", "RemoteError", "RemoteRuntimeMissing", "device_lock", "run_remote"]

RUNNER = Path(__file__).with_name("device_runner.py")


class RemoteError(EdgekitError):
    """The device could not be reached, timed out, or the runner failed there."""

    def __init__(self, message: str, *, hint: str | None = None,
                 partial: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.partial = partial or {}


class RemoteRuntimeMissing(RemoteError):
    exit_code = 2


@dataclass
class RemoteDevice:
    """``user@host:port`` plus how to log in. ``python`` is the interpreter on the device."""

    host: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    python: str = "python3"
    known_hosts: str | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 600.0
    emulated: bool = False
    lock_dir: str | None = None
    extra_ssh_options: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str, **kw: Any) -> RemoteDevice:
        """``[user@]host[:port]``."""
        user, _, rest = spec.rpartition("@")
        host, sep, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if not host or (sep and not port.isdigit()):
            raise UsageError(f"bad device {spec!r}", hint="write it as [user@]host[:port]")
        return cls(host=host, port=int(port) if port else 22, user=user or None, **kw)

    @property
    def name(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def _common(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            opts += ["-i", str(self.key), "-o", "IdentitiesOnly=yes"]
        return opts + list(self.extra_ssh_options)

    @property
    def _target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_cmd(self, remote_argv: Sequence[str]) -> list[str]:
        # ssh joins its arguments into one string for the remote shell: quote each one.
        return ["ssh", "-p", str(self.port), *self._common(), self._target, "--",
                " ".join(shlex.quote(a) for a in remote_argv)]

    def scp_to(self, local: Sequence[Path], remote_dir: str) -> list[str]:
        return ["scp", "-q", "-P", str(self.port), *self._common(), *(str(p) for p in local),
                f"{self._target}:{remote_dir}/"]

    def scp_from(self, remote_paths: Sequence[str], local_dir: Path) -> list[str]:
        return ["scp", "-q", "-P", str(self.port), *self._common(),
                *(f"{self._target}:{p}" for p in remote_paths), str(local_dir) + "/"]


def _lock_path(device: RemoteDevice) -> Path:
    base = Path(device.lock_dir or os.environ.get("EDGEKIT_LOCK_DIR")
                or Path(tempfile.gettempdir()) / "edgekit-device-locks")
    base.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{device.host}:{device.port}".encode()).hexdigest()[:16]
    return base / f"{device.host.replace('/', '_')}_{device.port}_{key}.lock"


@contextlib.contextmanager
def device_lock(device: RemoteDevice, *, timeout: float | None = None,
                progress: Any = None) -> Iterator[Path]:
    """Hold the exclusive per-device lock (keyed by host:port) for the block."""
    path = _lock_path(device)
    fh = open(path, "a+")
    try:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and progress:
                    progress(f"waiting for device {device.name} (another benchmark holds it)")
                    told = True
                if timeout is not None and time.monotonic() - start > timeout:
                    raise RemoteError(f"device {device.name} stayed busy for {timeout:.0f} s",
                                      hint=f"another benchmark holds the lock {path}") from None
                time.sleep(0.1)
        yield path
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _call(cmd: list[str], timeout: float, what: str, device: RemoteDevice,
          partial: dict[str, Any]) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        partial["partial"] = True
        raise RemoteError(f"{what} on {device.name} timed out after {timeout:.0f} s",
                          hint="check the device is up and reachable; raise the timeout for "
                          "slow devices", partial=partial) from exc
    if proc.returncode == 255 and cmd[0] in ("ssh", "scp"):
        partial["partial"] = True
        msg = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        if "remote_dir" in partial:  # it was reachable: the connection dropped mid-run
            raise RemoteError(
                f"lost the connection to {device.name} during {what}: {msg}",
                hint="the device disconnected mid-benchmark (network, reboot, power); the "
                "results so far are kept and marked partial; its work folder "
                f"{partial['remote_dir']} may be left behind; run again when it is back",
                partial=partial)
        raise RemoteError(f"cannot reach {device.name} ({what}): {msg}",
                          hint="check host, port, user and key (ssh -i KEY -p PORT user@host)",
                          partial=partial)
    return proc


def run_remote(
    device: RemoteDevice,
    model_files: Sequence[Path],
    feeds: Sequence[np.ndarray],
    *,
    runtime: str = "auto",
    threads: int = 2,
    runs: int = 50,
    warmup: int = 5,
    progress: Any = None,
    lock_timeout: float | None = None,
) -> dict[str, Any]:
    """Run the device runner on ``device`` and return its result, with ``outputs`` (numpy).

    ``model_files[0]`` is the file the runtime opens; the rest (e.g. an IR's .bin) go next to
    it. Raises :class:`RemoteError` (with ``partial`` = what is known so far, marked
    ``"partial": True``) when the device is unreachable or times out, and
    :class:`RemoteRuntimeMissing` naming the runtime and how to install it.
    """
    model_files = [Path(p) for p in model_files]
    result: dict[str, Any] = {"device_name": device.name, "emulated": device.emulated,
                              "partial": False}
    say = progress or (lambda msg: None)
    with device_lock(device, timeout=lock_timeout, progress=say), \
            tempfile.TemporaryDirectory(prefix="edgekit-remote-") as tmp_s:
        tmp = Path(tmp_s)
        inputs = tmp / "inputs.npz"
        np.savez(inputs, **{f"input.{i}": np.ascontiguousarray(x) for i, x in enumerate(feeds)})
        t0 = time.perf_counter()
        say(f"{device.name}: connecting")
        proc = _call(device.ssh_cmd(["mktemp", "-d", "-t", "edgekit-bench-XXXXXX"]),
                     device.connect_timeout + 20, "mktemp", device, result)
        if proc.returncode != 0 or "/edgekit-bench-" not in proc.stdout:
            raise RemoteError(f"{device.name}: cannot make a work folder: {proc.stderr.strip()}",
                              partial={**result, "partial": True})
        rdir = proc.stdout.strip().splitlines()[-1]
        result["remote_dir"] = rdir
        try:
            say(f"{device.name}: copying {len(model_files)} file(s) and the runner")
            _call(device.scp_to([*model_files, RUNNER, inputs], rdir), device.command_timeout,
                  "copying files", device, result).check_returncode()
            argv = [device.python, f"{rdir}/device_runner.py", "--model",
                    f"{rdir}/{model_files[0].name}", "--inputs", f"{rdir}/inputs.npz",
                    "--out", f"{rdir}/result.json", "--runtime", runtime,
                    "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup)]
            if device.emulated:
                argv.append("--emulated")
            say(f"{device.name}: running {runtime} ({runs} runs)")
            run = _call(device.ssh_cmd(argv), device.command_timeout, "the runner", device, result)
            got = _call(device.scp_from([f"{rdir}/result.json", f"{rdir}/outputs.npz"]
                                        if run.returncode == 0 else [f"{rdir}/result.json"], tmp),
                        device.connect_timeout + 60, "fetching results", device, result)
            if got.returncode != 0 or not (tmp / "result.json").is_file():
                tail = (run.stderr or run.stdout).strip()[-800:]
                if run.returncode == 127 or "not found" in tail:
                    raise RemoteRuntimeMissing(
                        f"{device.name}: {device.python} is not available ({tail})",
                        hint="install Python 3 on the device or pass --device-python PATH",
                        partial={**result, "partial": True})
                raise RemoteError(f"{device.name}: the runner failed (exit {run.returncode}): "
                                  f"{tail}", partial={**result, "partial": True})
            remote = json.loads((tmp / "result.json").read_text())
        finally:
            with contextlib.suppress(RemoteError, OSError):
                _call(device.ssh_cmd(["rm", "-rf", rdir]), device.connect_timeout + 20,
                      "cleanup", device, {})
        result.update(remote)
        result["emulated"] = bool(device.emulated or remote.get("emulated"))
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        if remote.get("status") == "missing_runtime":
            raise RemoteRuntimeMissing(
                f"{device.name} lacks the {remote['missing']} runtime: {remote.get('error')}",
                hint=f"on the device: {remote.get('install')}", partial=result)
        if remote.get("status") != "ok":
            result["partial"] = True
            raise RemoteError(f"{device.name}: the runner failed: {remote.get('error')}",
                              partial=result)
        with np.load(tmp / "outputs.npz") as data:
            keys = sorted(data.files, key=lambda k: int(k.split(".", 1)[1]))
            result["outputs"] = [data[k] for k in keys]
    return result
