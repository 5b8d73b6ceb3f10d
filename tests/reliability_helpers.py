"""What the reliability tests (tests/test_reliability*.py) share: the ``reliability`` mark,
tiny real model files, hand-written bundles, and the child-process and tmpfs helpers of the
interrupt and disk-full cases."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit._npz import save_npz
from edgekit.bundle import SCHEMA_VERSION, file_record, sha256_file, write_json

rel = pytest.mark.reliability
ROOT = Path(__file__).resolve().parent.parent


def have(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


needs_onnx = pytest.mark.skipif(not (have("onnx") and have("onnxruntime")),
                                reason="needs onnx and onnxruntime (edgekit[onnxruntime])")




def onnx_file(folder: Path, *, external: bool = True, in_shape=(1, 4)) -> Path:
    """A tiny real ONNX model (x @ w, w = 4x3), weights in model.onnx.data when ``external``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [in_shape[0], 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    return path


def set_external(path: Path, **entries: str) -> None:
    """Rewrite the external-data entries (location/offset/length) of every external tensor."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            kv = {e.key: e.value for e in t.external_data}
            kv.update(entries)
            del t.external_data[:]
            for k, v in kv.items():
                t.external_data.add(key=k, value=str(v))
    path.write_bytes(model.SerializeToString())


def fake_bundle(root: Path, backend: str, files: dict[str, bytes], *, name="fake",
                 shape=(1, 4)) -> Path:
    """A bundle written by hand (consistent checksums) around the given artifact bytes."""
    root.mkdir(parents=True)
    for rel_path, data in files.items():
        (root / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (root / rel_path).write_bytes(data)
    concrete = [max(d, 1) for d in shape]
    save_npz(root / "reference.npz", {"input.x": np.ones((1, *concrete), np.float32),
                                      "output.y": np.zeros((1, concrete[0], 3), np.float32)})
    spec_in = [{"name": "x", "shape": list(shape), "dtype": "float32"}]
    spec_out = [{"name": "y", "shape": [shape[0], 3], "dtype": "float32"}]
    write_json(root / "manifest.json", {
        "schema_version": SCHEMA_VERSION, "name": name,
        "model": {"inputs": spec_in, "outputs": spec_out},
        "reference": file_record(root, "reference.npz"),
        "targets": {"t": {"backend": backend, "precision": "fp32",
                          "files": [file_record(root, f) for f in files],
                          "inputs": spec_in, "outputs": spec_out}},
    })
    return root


def bench_cli(*args: str) -> list[str]:
    return ["bench", *args, "--runs", "2", "--warmup", "0", "--data", "none", "--no-memory", "-q"]


def slow_factory(tmp_path: Path) -> None:
    (tmp_path / "slownet.py").write_text(textwrap.dedent("""
        import glob, os, time, torch
        class Slow(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 2)
            def forward(self, x):
                # once the bundle is being staged, say so and stall (the test kills us here)
                if glob.glob(os.path.join(os.environ["SLOW_DIR"], ".out.partial-*")):
                    open(os.environ["SLOW_MARKER"], "w").close()
                    time.sleep(120)
                return self.lin(x)
        def make():
            torch.manual_seed(0)
            return Slow()
    """))


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stalled_build(tmp_path: Path) -> subprocess.Popen:
    """A real `edgekit build` of the slow model into tmp_path/out, stalled mid-export (its
    staging folder exists); the caller signals it and reaps it with :func:`reap`."""
    slow_factory(tmp_path)
    marker = tmp_path / "stalled"
    env = {**os.environ, "SLOW_DIR": str(tmp_path), "SLOW_MARKER": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "build", "slownet:make", "--input-shape", "1x4",
         "-t", "x86-onnxruntime-fp32", "-o", "out", "-q"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as a shell starts it: an ignored SIGINT is inherited across exec, and a library run
        # earlier in this test process may have left SIGINT ignored here
        preexec_fn=_default_sigint)
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the build to stall")
        assert proc.poll() is None, proc.communicate()
    except BaseException:
        reap(proc)
        raise
    return proc


def reap(proc: subprocess.Popen, sig: int | None = None) -> str:
    """Send ``sig`` (if given) and wait for the process; kill it if it lingers. Its stderr."""
    try:
        if sig is not None:
            proc.send_signal(sig)
        return proc.communicate(timeout=60)[1] or ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def tiny_mount(tmp_path):
    """mount(options) -> a fresh tmpfs with those options (root only); unmounted afterwards."""
    mounts: list[Path] = []
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs (not root here)")

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def prepare_previous(dest: Path) -> dict[str, str]:
    dest.mkdir()
    (dest / "manifest.json").write_text('{"schema_version": 1, "targets": {}, "previous": true}\n')
    return tree(dest)
