"""The remote runner for real: a loopback sshd, an emulated aarch64 Python with the real
aarch64 wheels of onnxruntime, ai-edge-litert and openvino, and outputs checked against x86."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from edgekit.bench import arm_emulation
from edgekit.bench.remote import (
    RemoteDevice,
    RemoteError,
    RemoteRuntimeMissing,
    device_lock,
    run_remote,
)

from conftest import tiny_net


@pytest.fixture(scope="module")
def arm_env():
    reason = arm_emulation.setup_unavailable_reason()
    if reason:
        pytest.skip(f"emulated ARM board unavailable: {reason}")
    t0 = time.perf_counter()
    emu = arm_emulation.ensure_arm_emulation()
    print(f"ARM emulation ready in {time.perf_counter() - t0:.1f} s")
    return emu


@pytest.fixture(scope="module")
def board(arm_env, tmp_path_factory):
    with arm_emulation.loopback_sshd(tmp_path_factory.mktemp("sshd"),
                                     path_prefix=arm_env.bin_dir) as ssh:
        yield ssh


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from edgekit.pipeline import compress

    out = tmp_path_factory.mktemp("arm") / "tiny"
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return compress(tiny_net(), (x,),
                    targets=["x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32"],
                    out_dir=out, input_names=["x"], output_names=["logits"], progress=False)


def _device(ssh, **kw) -> RemoteDevice:
    return RemoteDevice(host=ssh.host, port=ssh.port, user=ssh.user, key=str(ssh.key),
                        known_hosts=str(ssh.known_hosts), command_timeout=240, **kw)


def _arm_device(ssh, emu) -> RemoteDevice:
    # The board's python3 is the emulated aarch64 one (as a real board's own python3 would be).
    return _device(ssh, python=str(emu.python))


@pytest.mark.slow
def test_emulated_arm_round_trip_matches_x86(arm_env, board, tiny_bundle, tmp_path):
    import edgekit

    t0 = time.perf_counter()
    report = edgekit.bench(tiny_bundle.root, remote=_arm_device(board, arm_env), runs=5, warmup=1,
                           data="none", memory=False, out_dir=tmp_path, progress=False)
    print(f"remote round trip of 3 runtimes: {time.perf_counter() - t0:.1f} s")
    assert report["status"] == "complete", report["errors"]
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32"}
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r["reason"])
        assert r["location"] == "remote" and r["emulated"] is True
        assert r["remote"]["device"]["machine"] == "aarch64"
        assert r["latency"]["n"] == 5
        assert r["remote_outputs_match_local"], r["fidelity"]
        assert r["fidelity"]["cosine_min"] > 0.99999
    # the ARM outputs also match the PyTorch reference stored in the bundle
    ref = np.load(tiny_bundle.root / "reference.npz")
    local = tiny_bundle.load("x86-onnxruntime-fp32").run([ref["input.x"][0]])[0]
    assert np.allclose(local, ref["output.logits"][0], atol=1e-4)
    # the reports label the timings as emulated
    assert "emulated" in report["emulated_note"]
    md = (tmp_path / "bench.md").read_text()
    assert "EMULATED" in md and "say nothing about ARM speed" in md


@pytest.mark.slow
def test_missing_runtime_names_it_and_how_to_install(board, tiny_bundle, tmp_path):
    # A device whose python3 is the host's own (x86) python without the venv: no runtimes.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").write_text("#!/bin/sh\nexport PYTHONPATH=/nonexistent\n"
                                  "exec /usr/bin/python3 -S \"$@\"\n")
    (bare / "python3").chmod(0o755)
    art = tiny_bundle.artifact("x86-onnxruntime-fp32")
    dev = _device(board, python=str(bare / "python3"))
    with pytest.raises(RemoteRuntimeMissing) as info:
        run_remote(dev, [art.path], [np.zeros((1, 1, 8, 8), np.float32)], runs=2)
    msg = str(info.value)
    assert ("numpy" in msg or "onnxruntime" in msg) and "pip install" in msg
    assert info.value.partial["partial"] is False or "status" in info.value.partial


def test_unreachable_host_is_a_clear_error_not_a_hang(tmp_path):
    import socket

    with socket.socket() as s:  # a closed port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dev = RemoteDevice(host="127.0.0.1", port=port, user="nobody", connect_timeout=3,
                       known_hosts=str(tmp_path / "kh"), lock_dir=str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(RemoteError) as info:
        run_remote(dev, [tmp_path / "m.onnx"], [np.zeros(1, np.float32)])
    assert time.perf_counter() - t0 < 30
    assert "cannot reach nobody@127.0.0.1" in str(info.value) and "hint" in str(info.value)
    assert info.value.partial["partial"] is True


def test_ssh_timeout_marks_partial(tmp_path):
    import socket

    srv = socket.socket()  # accepts but never speaks SSH: the banner exchange times out
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        dev = RemoteDevice(host="127.0.0.1", port=srv.getsockname()[1], connect_timeout=2,
                           known_hosts=str(tmp_path / "kh"), lock_dir=str(tmp_path))
        t0 = time.perf_counter()
        with pytest.raises(RemoteError) as info:
            run_remote(dev, [tmp_path / "m.onnx"], [np.zeros(1, np.float32)])
        assert time.perf_counter() - t0 < 40
        assert "timed out" in str(info.value) or "cannot reach" in str(info.value)
        assert info.value.partial["partial"] is True
    finally:
        srv.close()


@pytest.mark.slow
def test_cli_unreachable_remote_exits_nonzero_with_partial_report(tmp_path, tiny_bundle):
    import socket

    from edgekit.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["bench", str(tiny_bundle.root), "-t", "x86-onnxruntime-fp32", "--remote",
               f"nobody@127.0.0.1:{port}", "--connect-timeout", "2", "--data", "none",
               "--out", str(tmp_path), "-q"])
    assert rc == 1
    import json

    rep = json.loads((tmp_path / "bench.json").read_text())
    assert rep["partial"] is True and rep["status"] == "partial"
    assert "cannot reach" in rep["errors"][0]["error"]


def test_device_lock_serialises_per_device(tmp_path):
    dev = RemoteDevice(host="board.local", port=22, lock_dir=str(tmp_path))
    other = RemoteDevice(host="board.local", port=2222, lock_dir=str(tmp_path))
    events: list[str] = []

    def second() -> None:
        with device_lock(dev):
            events.append("second in")

    with device_lock(dev):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.4)
        events.append("first out")
        with device_lock(other, timeout=1):  # another port is another board: no wait
            events.append("other board")
    t.join(5)
    assert events == ["first out", "other board", "second in"]
    with device_lock(dev), pytest.raises(RemoteError, match="stayed busy"):
        import subprocess
        import sys

        # a different process holding the lock times out cleanly
        code = ("import sys; from edgekit.bench.remote import RemoteDevice, device_lock\n"
                f"d = RemoteDevice(host='board.local', port=22, lock_dir={str(tmp_path)!r})\n"
                "from edgekit.bench.remote import RemoteError\n"
                "try:\n    with device_lock(d, timeout=0.5): pass\n"
                "except RemoteError as e:\n    print(e); sys.exit(7)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 7
        raise RemoteError(proc.stdout.strip())


def test_ssh_commands_are_argument_lists():
    dev = RemoteDevice(host="h", port=2200, user="u", key="/k")
    cmd = dev.ssh_cmd(["python3", "work dir/r.py", "--model", "a;rm -rf /"])
    assert cmd[:3] == ["ssh", "-p", "2200"] and "BatchMode=yes" in cmd
    assert any(c.startswith("ConnectTimeout=") for c in cmd)
    assert cmd[-1] == "python3 'work dir/r.py' --model 'a;rm -rf /'"
    assert RemoteDevice.parse("pi@10.0.0.5:2222").port == 2222
    assert RemoteDevice.parse("board").user is None
    assert shutil.which("ssh") or os.name != "posix"
