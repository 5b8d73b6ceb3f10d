import os
import sys

import numpy as np
import pytest
import torch

from edgekit.bundle import load_bundle, sha256_file
from edgekit.errors import (
    BackendMissingError,
    ExportError,
    ShapeError,
    UnknownNameError,
    UsageError,
)
from edgekit.models import get_spec
from edgekit.pipeline import compress

from conftest import tiny_net

ORT = "x86-onnxruntime-fp32"


def test_compress_writes_a_verified_bundle(tmp_path):
    model = tiny_net()
    x = torch.rand(1, 1, 8, 8)
    bundle = compress(model, x, targets=[ORT], out_dir=tmp_path / "b", progress=False)
    m = bundle.manifest
    assert m.schema_version == 1 and m.name == "b"
    assert m.model.inputs == [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    entry = m.targets[ORT]
    assert entry.verification["passed"] is True
    assert entry.verification["outputs"][0]["max_abs"] < 1e-4
    for rec in entry.files:
        assert sha256_file(tmp_path / "b" / rec.path) == rec.sha256
    assert [h.kind for h in m.history] == ["export", "verify"]
    assert m.versions["onnxruntime"] and m.versions["torch"] == torch.__version__
    # Reference pairs: stored inputs give the stored outputs in PyTorch and in the runtime.
    ref = np.load(tmp_path / "b" / "reference.npz")
    np.testing.assert_array_equal(ref["input.input"][0], x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(ref["output.output"][0], model(x).numpy(), rtol=0, atol=0)
    session = load_bundle(tmp_path / "b").load(ORT)
    np.testing.assert_allclose(session.run([x.numpy()])[0], ref["output.output"][0], atol=1e-5)


def test_compress_with_task_verifies_on_held_out_data(tmp_path):
    spec = get_spec("cnn")
    bundle = compress(spec.factory(), spec.example_inputs(1), targets=[ORT],
                      out_dir=tmp_path / "cnn", task=spec.task(), verify_samples=50,
                      input_names=spec.input_names, output_names=spec.output_names,
                      progress=False)
    entry = bundle.manifest.targets[ORT]
    assert bundle.manifest.history[-1].data["batches"] == 51  # example input + 50 held-out
    assert entry.verification["outputs"][0]["top1_agreement"] == 1.0
    assert bundle.manifest.model.task["metric"] == "top1"


def test_failed_build_keeps_previous_bundle(tmp_path, monkeypatch):
    compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=[ORT], out_dir=tmp_path / "b",
             progress=False)
    before = (tmp_path / "b" / "manifest.json").read_bytes()
    from edgekit.backends.onnxruntime import OnnxRuntimeBackend

    def broken_export(self, model, inputs, out_dir, **kw):
        (out_dir / "model.onnx").write_bytes(b"half")
        raise ExportError("simulated converter crash", backend="onnxruntime")

    monkeypatch.setattr(OnnxRuntimeBackend, "export", broken_export)
    with pytest.raises(ExportError, match="simulated"):
        compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=[ORT], out_dir=tmp_path / "b",
                 progress=False)
    assert (tmp_path / "b" / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["b"]
    load_bundle(tmp_path / "b").check_files()


def test_example_inputs_that_do_not_fit(tmp_path):
    with pytest.raises(ShapeError) as err:
        compress(tiny_net(), torch.rand(1, 3, 8, 8), targets=[ORT], out_dir=tmp_path / "b")
    assert "(1, 3, 8, 8) float32" in str(err.value) and "TinyNet" in str(err.value)
    assert err.value.exit_code == 2
    with pytest.raises(ShapeError, match="tensor or a tuple of tensors"):
        compress(tiny_net(), [[1.0]], targets=[ORT], out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_names_must_match_io_count(tmp_path):
    with pytest.raises(UsageError, match="2 input names"):
        compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=[ORT], out_dir=tmp_path / "b",
                 input_names=["a", "b"])


def test_task_that_does_not_fit_model(tmp_path):
    spec = get_spec("cnn")
    any_size = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(2, 10))
    with pytest.raises(ShapeError) as err:
        compress(any_size, torch.rand(1, 1, 16, 16), targets=[ORT], out_dir=tmp_path / "b",
                 task=spec.task(), input_names=["image"])
    assert "input image" in str(err.value) and "(1, 8, 8)" in str(err.value)


def test_int8_target_needs_calibration_data(tmp_path):
    # int8 is supported now (tests/test_quant*.py); without a task or calibration data it
    # cannot be calibrated, and nothing is written.
    with pytest.raises(UsageError, match="calibration"):
        compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=["x86-onnxruntime-int8"],
                 out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_unknown_target(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'x86-openvino-fp32'"):
        compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=["x86-openvno-fp32"],
                 out_dir=tmp_path / "b")


def test_missing_backend_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendMissingError) as err:
        compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=[ORT], out_dir=tmp_path / "b")
    assert 'edgekit[onnxruntime]' in str(err.value)
    assert not (tmp_path / "b").exists()
