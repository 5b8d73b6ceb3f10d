import json
import os
import zipfile

import numpy as np
import pytest

from edgekit._npz import save_npz
from edgekit.bundle import load_bundle, sha256_file, staged_bundle, write_json
from edgekit.errors import BundleError


def _fake_bundle(root, payload=b"model-bytes"):
    (root / "t").mkdir()
    (root / "t" / "model.onnx").write_bytes(payload)
    manifest = {
        "schema_version": 1,
        "name": "fake",
        "targets": {
            "t": {
                "backend": "onnxruntime",
                "precision": "fp32",
                "files": [{"path": "t/model.onnx", "sha256": sha256_file(root / "t" / "model.onnx"),
                           "bytes": len(payload)}],
                "inputs": [{"name": "x", "shape": [1, 2], "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32"}],
            }
        },
    }
    write_json(root / "manifest.json", manifest)


def test_staged_bundle_replaces_only_on_success(tmp_path):
    dest = tmp_path / "out"
    with staged_bundle(dest) as stage:
        _fake_bundle(stage, b"first")
    assert load_bundle(dest).artifact("t").path.read_bytes() == b"first"

    with pytest.raises(RuntimeError):
        with staged_bundle(dest) as stage:
            _fake_bundle(stage, b"second")
            raise RuntimeError("export blew up")
    # The previous good bundle is untouched and no staging folder is left behind.
    assert load_bundle(dest).artifact("t").path.read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["out"]

    with staged_bundle(dest) as stage:
        _fake_bundle(stage, b"third")
    assert load_bundle(dest).artifact("t").path.read_bytes() == b"third"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_interrupt_keeps_previous_bundle(tmp_path):
    dest = tmp_path / "out"
    with staged_bundle(dest) as stage:
        _fake_bundle(stage, b"good")
    with pytest.raises(KeyboardInterrupt):
        with staged_bundle(dest) as stage:
            (stage / "half").write_bytes(b"x")
            raise KeyboardInterrupt
    assert load_bundle(dest).artifact("t").path.read_bytes() == b"good"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_output_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    with pytest.raises(BundleError, match="a file is in the way"):
        with staged_bundle(blocker / "sub" / "out"):
            pass
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(BundleError, match="not writable"):
            with staged_bundle(ro / "out"):
                pass
    finally:
        ro.chmod(0o700)


def test_tampered_file_names_the_file(tmp_path):
    with staged_bundle(tmp_path / "b") as stage:
        _fake_bundle(stage)
    bundle = load_bundle(tmp_path / "b")
    bundle.check_files()
    (tmp_path / "b" / "t" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="checksum mismatch for t/model.onnx"):
        bundle.check_files()
    (tmp_path / "b" / "t" / "model.onnx").unlink()
    with pytest.raises(BundleError, match="t/model.onnx is missing"):
        bundle.check_files()


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda m: m.update(schema_version=99), "schema_version 99"),
        (lambda m: m.pop("targets"), "missing key 'targets'"),
        (lambda m: m["targets"]["t"]["files"][0].update(path="../escape"), "unsafe"),
        (lambda m: m["targets"]["t"]["files"][0].update(path="/etc/passwd"), "unsafe"),
    ],
)
def test_bad_manifests(tmp_path, mutate, needle):
    _fake_bundle(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    mutate(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=needle):
        load_bundle(tmp_path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_unknown_target_in_bundle(tmp_path):
    _fake_bundle(tmp_path)
    with pytest.raises(BundleError.__mro__[1]) as err:  # UnknownNameError is a UsageError
        load_bundle(tmp_path).artifact("tt")
    assert "did you mean 't'" in str(err.value)


def test_npz_is_deterministic_and_readable(tmp_path):
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, 2], np.int64)}
    save_npz(tmp_path / "1.npz", arrays)
    save_npz(tmp_path / "2.npz", dict(reversed(list(arrays.items()))))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    loaded = np.load(tmp_path / "1.npz")
    np.testing.assert_array_equal(loaded["b"], arrays["b"])
    assert zipfile.ZipFile(tmp_path / "1.npz").namelist() == ["a.npy", "b.npy"]
