"""OpenVINO builds through the ONNX export where its PyTorch frontend rejects the model: a
Hugging Face GPT-2 (its key / value cache reaches ``aten::cat`` as an OpenVINO-internal list
type) converts from its ONNX file, and the manifest says which route the file took."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.pipeline import compress

pytest.importorskip("openvino")
transformers = pytest.importorskip("transformers")


from hf_tiny import Gpt2 as Logits  # noqa: E402 - after the import skips
from hf_tiny import token_ids as _ids  # noqa: E402


def test_the_pytorch_frontend_fails_on_this_model():
    """The premise: ``openvino.convert_model`` on the module itself fails (if a release fixes
    this, the route below is no longer taken and the next test says so)."""
    import openvino as ov

    with pytest.raises(Exception, match="cat"), torch.no_grad():
        ov.convert_model(Logits().eval(), example_input=(_ids(0),))


def test_openvino_fp32_converts_the_onnx_export(tmp_path):
    model = Logits().eval()
    bundle = compress(model, (_ids(0),), targets=["x86-openvino-fp32"], out_dir=tmp_path / "b",
                      input_names=["ids"], output_names=["logits"], progress=False)
    info = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][
        "x86-openvino-fp32"]["artifact_info"]
    assert info["exporter"].startswith("openvino.convert_model (the ONNX export")
    assert "aten.cat" in info["pytorch_frontend_error"]
    x = _ids(9)
    got = bundle.load("x86-openvino-fp32").run([x.numpy()])[0]
    ref = model(x).detach().numpy()
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def test_openvino_int8_records_the_route_of_its_float_model(tmp_path):
    """NNCF quantizes the IR converted from the ONNX export; the int8 manifest says so."""
    pytest.importorskip("nncf")
    model = Logits().eval()
    data = [_ids(100 + i) for i in range(16)]
    compress(model, (data[0],), targets=["x86-openvino-int8"], out_dir=tmp_path / "b",
             input_names=["ids"], output_names=["logits"], calibration=data, progress=False,
             quantization={"openvino_source": "nncf", "fallback": False,
                           "latency_check": False})
    info = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][
        "x86-openvino-int8"]["artifact_info"]
    assert info["exporter"].startswith("openvino.convert_model (the ONNX export")
    assert "nncf" in info["exporter"]
    assert "aten.cat" in info["pytorch_frontend_error"]
