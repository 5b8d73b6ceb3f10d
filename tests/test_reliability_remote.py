"""Reliability case 13: a remote device that disconnects mid-benchmark, and remote commands
built as argument lists (never a shell string)."""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from reliability_helpers import ROOT, needs_onnx, onnx_file, rel

# =========================================================================== case 13


@pytest.fixture
def loopback_ssh(tmp_path):
    from edgekit.bench.arm_emulation import loopback_sshd

    if not shutil.which("ssh") or not (shutil.which("sshd") or Path("/usr/sbin/sshd").is_file()):
        pytest.skip("needs ssh and sshd (apt-get install openssh-server openssh-client)")
    bin_dir = tmp_path / "board-bin"
    bin_dir.mkdir()
    try:
        with loopback_sshd(tmp_path / "sshd", path_prefix=bin_dir) as ssh:
            yield ssh, bin_dir
    except RuntimeError as exc:
        pytest.skip(f"cannot start a loopback sshd: {exc}")


@needs_onnx
@rel(case=13, behaviour="a remote device that disconnects mid-benchmark (loopback sshd, the "
     "session killed while the runner runs): RemoteError 'lost the connection', results marked "
     "partial, exit 1, no hang")
def test_remote_disconnect_mid_benchmark(loopback_ssh, tmp_path, capsys):
    from edgekit.bench.remote import RemoteDevice, RemoteError, run_remote

    ssh, bin_dir = loopback_ssh
    started = tmp_path / "runner-started"
    # the board's python3: says it started, then its SSH session drops (sshd child killed)
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        touch {started}
        pid=$$
        while [ "$pid" -gt 1 ]; do
            pid=$(awk '{{print $4}}' /proc/$pid/stat)
            case "$(cat /proc/$pid/comm)" in sshd*) kill -9 "$pid"; exit 0;; esac
        done
        sleep 60
    """))
    (bin_dir / "python3").chmod(0o755)
    dev = RemoteDevice(host=ssh.host, port=ssh.port, user=ssh.user, key=str(ssh.key),
                       known_hosts=str(ssh.known_hosts), command_timeout=60,
                       python=str(bin_dir / "python3"), lock_dir=str(tmp_path / "locks"))
    path = onnx_file(tmp_path / "m")
    t0 = time.perf_counter()
    with pytest.raises(RemoteError) as info:
        run_remote(dev, [path, path.parent / "model.onnx.data"], [np.zeros((1, 4), np.float32)],
                   runs=2)
    assert time.perf_counter() - t0 < 60
    assert started.exists(), "the runner never started: the disconnect was not mid-run"
    msg = str(info.value)
    assert "lost the connection" in msg and "during the runner" in msg and "partial" in msg
    assert info.value.partial["partial"] is True
    # through bench(): the report is written and marked partial (the CLI then exits 1)
    from edgekit.bench.harness import bench

    out = tmp_path / "rep"
    rep = bench(path, remote=dev, runs=2, data="none", memory=False, out_dir=out,
                formats=("json",), progress=False)
    assert rep["partial"] is True and rep["status"] == "partial"
    assert "lost the connection" in rep["errors"][0]["error"]
    assert json.loads((out / "bench.json").read_text())["partial"] is True


@rel(case=13, behaviour="remote commands are argument lists, each quoted for the remote shell "
     "(no interpolated strings): a hostile file name stays one argument")
def test_remote_commands_are_argument_lists():
    from edgekit.bench.remote import RemoteDevice

    dev = RemoteDevice(host="h", port=22, user="u")
    cmd = dev.ssh_cmd(["python3", "x; rm -rf ~", "$(reboot)"])
    assert isinstance(cmd, list) and cmd[-1] == "python3 'x; rm -rf ~' '$(reboot)'"
    src = (ROOT / "edgekit" / "bench" / "remote.py").read_text()
    assert "shell=True" not in src and "os.system" not in src
