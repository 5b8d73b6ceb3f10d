"""Reliability cases 11 and 12: a signal during a build or a benchmark, and a full or
unwritable disk, leave the previous bundle intact and the measured results marked partial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.bundle import SCHEMA_VERSION, write_json
from edgekit.cli import main
from edgekit.errors import (
    ExportError,
    OutputPathError,
)

from reliability_helpers import (
    needs_onnx,
    onnx_file,
    prepare_previous,
    reap,
    rel,
    stalled_build,
    tiny_mount,
    tree,
    wait_for,
)

__all__ = ["tiny_mount"]  # the fixture, re-exported for pytest


# =========================================================================== case 11


@rel(case=11, behaviour="SIGTERM or SIGINT to `edgekit build` mid-export (real subprocess, real "
     "signal): exit 143/130, the previous bundle byte-identical, the staging folder removed")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_during_build_keeps_previous_bundle(sig, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "t").mkdir()
    (out / "t" / "model.onnx").write_bytes(b"previous")
    write_json(out / "manifest.json", {"schema_version": SCHEMA_VERSION, "name": "previous",
                                       "targets": {"t": {"files": [{"path": "t/model.onnx"}]}}})
    before = tree(out)
    proc = stalled_build(tmp_path)
    try:
        assert list(tmp_path.glob(".out.partial-*")), "expected a staging folder mid-build"
    finally:
        err = reap(proc, getattr(signal, sig))
    assert proc.returncode == (143 if sig == "SIGTERM" else 130), err
    assert f"interrupted ({'SIGTERM' if sig == 'SIGTERM' else 'Ctrl-C'})" in err
    assert "Traceback" not in err
    assert tree(out) == before
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())


@needs_onnx
@rel(case=11, behaviour="SIGTERM to `edgekit bench` mid-timing (real subprocess, real signal): "
     "exit 143, bench.json written and marked interrupted (by SIGTERM) with the samples so far")
def test_sigterm_during_bench_marks_partial_results(tmp_path):
    path = onnx_file(tmp_path / "m")
    out = tmp_path / "rep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "bench", str(path), "--duration", "120",
         "--warmup", "1", "--data", "none", "--no-memory", "--format", "json", "-o", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("timing" in ln for ln in lines) or proc.poll() is not None, 120,
                  "bench to start timing")
        time.sleep(1.0)
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    err = "".join(lines)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err
    rep = json.loads((out / "bench.json").read_text())
    assert rep["interrupted"] is True and rep["interrupted_by"] == "SIGTERM"
    assert rep["status"] == "interrupted" and rep["partial"] is True
    row = rep["results"][0]
    assert row["status"] == "partial" and row["latency"]["n"] >= 1


# =========================================================================== case 12


@needs_onnx
@rel(case=12, behaviour="disk full during export (real 64 KiB tmpfs): OutputPathError 'no space "
     "left on device', exit 2, previous bundle byte-identical, no partial folder left")
def test_disk_full_during_export_real_tmpfs(tmp_path, tiny_mount):
    from edgekit.pipeline import compress

    mnt = tiny_mount("size=64k")
    dest = mnt / "out"
    before = prepare_previous(dest)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()  # ~70 KB
    with pytest.raises(OutputPathError) as info:
        compress(model, (torch.randn(1, 64),), targets=["x86-onnxruntime-fp32"], out_dir=dest,
                 input_names=["x"], output_names=["y"], progress=False)
    msg = str(info.value)
    assert "no space left on device" in msg and "previous bundle" in msg and "free" in msg
    assert tree(dest) == before
    assert sorted(p.name for p in mnt.iterdir()) == ["out"]


@rel(case=12, behaviour="disk full simulated (OSError ENOSPC raised by the exporter, wrapped by "
     "the converter): same OutputPathError, previous bundle intact, nothing left (runs "
     "without root)")
def test_disk_full_simulated_enospc(tmp_path, monkeypatch):
    import errno

    from edgekit.backends.onnxruntime import OnnxRuntimeBackend
    from edgekit.pipeline import compress

    def full_export(self, model, example_inputs, out_dir, **kw):
        (Path(out_dir) / "model.onnx").write_bytes(b"half")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "model.onnx"))
        except OSError as exc:
            raise ExportError("writing failed", backend="onnxruntime") from exc

    monkeypatch.setattr(OnnxRuntimeBackend, "export", full_export)
    dest = tmp_path / "out"
    before = prepare_previous(dest)
    with pytest.raises(OutputPathError, match="no space left on device.*previous bundle"):
        compress(nn.Linear(4, 2), (torch.randn(1, 4),), targets=["x86-onnxruntime-fp32"],
                 out_dir=dest, input_names=["x"], output_names=["y"], progress=False)
    assert tree(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@rel(case=12, behaviour="unwritable output folder (read-only tmpfs as root, chmod 555 "
     "otherwise): `build` exits 2 with 'not writable' before any work")
def test_unwritable_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        point = tmp_path / "ro"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"root, and cannot mount a read-only tmpfs: {proc.stderr.strip()}")
    else:
        point = tmp_path / "ro"
        point.mkdir()
        point.chmod(0o555)
    try:
        rc = main(["build", "cnn", "-t", "x86-onnxruntime-fp32", "-o", str(point / "out"),
                   "--no-train", "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and "is not writable" in err and str(point) in err, err
        assert not (point / "out").exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        else:
            point.chmod(0o755)
