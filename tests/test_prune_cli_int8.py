"""``edgekit prune`` on a user's own model to int8 targets: pruning, distillation fine-tuning on
the user's data and int8 quantization in one build."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from test_prune_cli import _user_model

from edgekit.cli import main
from edgekit.prune import count_macs, replay
from edgekit.quantize.calibration import CalibrationRangeWarning


@pytest.mark.slow
def test_cli_prunes_a_users_model_to_int8_targets_in_one_build(tmp_path, monkeypatch, capsys):
    import onnx
    from onnx import TensorProto, numpy_helper

    mod = _user_model(tmp_path, monkeypatch, "userkit_int8")
    unpruned = mod.build()
    x = torch.zeros(1, 3, 8, 8)
    macs0, params0 = count_macs(unpruned, (x,)), sum(p.numel() for p in unpruned.parameters())
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rc = main(["prune", "userkit_int8:build", "--input-shape", "1x3x8x8",
                   "--data", "train.npz", "--val-data", "val.npz", "--macs-reduction", "0.5",
                   "--round-to", "8", "--fine-tune-epochs", "2",
                   "-t", "x86-onnxruntime-int8", "-t", "x86-openvino-int8",
                   "-o", str(out), "--json", "-q"])
    assert rc == 0
    # the calibration data (the user's) is compared with real samples, not random inputs
    assert not [w for w in seen if issubclass(w.category, CalibrationRangeWarning)]
    summary = json.loads(capsys.readouterr().out)
    assert summary["targets"] == ["x86-onnxruntime-int8", "x86-openvino-int8"]
    assert summary["macs"][0] == macs0 and summary["macs"][1] <= macs0 / 2
    assert summary["after_fine_tune"] >= summary["before"] - 5

    manifest = json.loads((out / "manifest.json").read_text())
    stages = [h["stage"] for h in manifest["history"]]
    assert stages.index("prune") < stages.index("quantize")  # pruned, then quantized
    rec = next(h for h in manifest["history"] if h["stage"] == "prune")
    pruned = replay(mod.build(), [rec], (x,))
    assert pruned.conv.out_channels == 8 < unpruned.conv.out_channels
    assert manifest["model"]["parameters"] == sum(p.numel() for p in pruned.parameters())
    assert manifest["model"]["parameters"] < params0

    for name in summary["targets"]:
        entry = manifest["targets"][name]
        assert entry["precision"] == "int8"
        acc = entry["quantization"]["accuracy"]
        assert acc["metric"] == "top1" and acc["int8"] >= summary["before"] - 5

    # the ONNX artifact itself: QDQ with int8 conv weights of the pruned widths
    model = onnx.load(str(out / "x86-onnxruntime-int8" / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_shapes = sorted(tuple(numpy_helper.to_array(t).shape) for t in model.graph.initializer
                         if t.data_type == TensorProto.INT8 and len(t.dims) == 4)
    assert int8_shapes == [(8, 3, 3, 3), (8, 8, 3, 3)]  # conv and conv2, 16 -> 8 channels
    # the OpenVINO IR: quantized (FakeQuantize or int8 weights)
    xml = (out / "x86-openvino-int8" / "model.xml").read_text()
    assert "FakeQuantize" in xml or 'element_type="i8"' in xml
