"""int8 builds end to end: PTQ on each runtime, really-int8 files, fallback, accuracy gate."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from edgekit.errors import DataError, QuantizationError
from edgekit.models import get_spec
from edgekit.pipeline import compress
from edgekit.profiles import load_profile
from edgekit.train import fit

ORT, OV, TFL = "x86-onnxruntime-int8", "x86-openvino-int8", "arm64-tflite-int8"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cnn():
    spec = get_spec("cnn")
    model = spec.factory()
    task = spec.task()
    fit(model, task, epochs=3, progress=False)
    return spec, model, task


def _build(cnn, out, targets, **kw):
    spec, model, task = cnn
    return compress(model, spec.example_inputs(1), targets=targets, out_dir=out,
                    input_names=list(spec.input_names), output_names=list(spec.output_names),
                    progress=False, **kw)


def _fp32_size(cnn):
    spec, model, _ = cnn
    return sum(p.numel() for p in model.parameters()) * 4


def test_ptq_all_runtimes_really_int8_and_within_budget(cnn, tmp_path):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    spec, model, task = cnn
    # latency check off: it may move a layer to float for speed (tests/test_quant_latency.py)
    bundle = _build(cnn, tmp_path / "b", [ORT, OV, TFL], task=task,
                    quantization={"latency_check": False})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    fp32 = _fp32_size(cnn)
    for name in (ORT, OV, TFL):
        entry = manifest["targets"][name]
        q = entry["quantization"]
        assert entry["precision"] == "int8"
        assert entry["runtime"]["precision"].startswith("int8")
        assert q["accuracy"]["drop"] <= 1.0, (name, q["accuracy"])
        assert q["accuracy"]["fp32"] > 80
        assert {row["layer"]: row["precision"] for row in q["layers"]} == {
            "conv": "int8", "fc": "int8", "head": "int8"}
        # about 4x smaller than the fp32 weights (graph overhead and biases stay); OpenVINO's
        # weights are in model.bin (model.xml is the graph, ~20 kB here)
        size = (tmp_path / "b" / OV / "model.bin").stat().st_size if name == OV else \
            q["size_bytes"]
        assert size < fp32 / 2.5, (name, size, fp32)
        session = bundle.load(name)
        (out,) = session.run([spec.example_inputs(1)[0].numpy()])
        assert out.shape == (1, 10) and np.isfinite(out).all()
    # the files themselves hold int8 weights
    proto = onnx.load(str(tmp_path / "b" / ORT / "model.onnx"))
    types = {i.name: i.data_type for i in proto.graph.initializer}
    assert sum(t == onnx.TensorProto.INT8 for t in types.values()) >= 3
    assert not any(t == onnx.TensorProto.FLOAT and i.dims and np.prod(i.dims) > 256
                   for i in proto.graph.initializer for t in [i.data_type])
    assert {n.op_type for n in proto.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    interp = Interpreter(model_path=str(tmp_path / "b" / TFL / "model.tflite"))
    weights = [t for t in interp.get_tensor_details() if len(t["shape"]) >= 2
               and np.prod(t["shape"]) >= 288 and "serving" not in t["name"]]
    assert weights and all(np.dtype(t["dtype"]) == np.int8 for t in weights
                           if np.prod(t["shape"]) >= 288 and t["shape"][0] in (32, 64, 10)), \
        [(t["name"], t["dtype"]) for t in weights]
    xml = (tmp_path / "b" / OV / "model.xml").read_text()
    assert 'element_type="i8"' in xml and "FakeQuantize" in xml or 'element_type="u8"' in xml


def test_keep_float_moves_named_layers_to_float_in_manifest(cnn, tmp_path):
    _build(cnn, tmp_path / "b", [ORT, TFL, OV], calibration=cnn[2].val,
           quantization={"keep_float": ["head"], "method": "percentile", "samples": 64,
                         "latency_check": False})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    for name in (ORT, OV, TFL):
        q = manifest["targets"][name]["quantization"]
        layers = {row["layer"]: row for row in q["layers"]}
        assert layers["head"]["precision"] == "fp32" and layers["conv"]["precision"] == "int8"
        assert layers["head"]["reason"] == "kept in float by the user"
        assert q["float_layers"] == ["head"]
    ort_layers = manifest["targets"][ORT]["artifact_info"]["quantization"]["layers"]
    assert {r["module"]: r["precision"] for r in ort_layers}["head"] == "fp32"
    ov_layers = manifest["targets"][OV]["artifact_info"]["quantization"]["layers"]
    assert {r["module"]: r["precision"] for r in ov_layers}["head"] == "fp32"
    assert {r["module"]: r["precision"] for r in ov_layers}["conv"] == "int8"


def test_keep_float_naming_no_layer_is_refused_before_any_build(cnn, tmp_path):
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="keep_float names 'haed', not a module") as e:
        _build(cnn, tmp_path / "b", [ORT], calibration=cnn[2].val,
               quantization={"keep_float": ["haed"], "samples": 8})
    assert "did you mean 'head'" in (e.value.hint or "")
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_gate_fails_build_over_budget_with_table_and_no_bundle(cnn, tmp_path):
    _, _, task = cnn
    strict = dataclasses.replace(load_profile(ORT), name="strict-int8", max_accuracy_drop=-50.0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("previous bundle")
    with pytest.raises(QuantizationError) as err:
        _build(cnn, tmp_path / "b", [strict], task=task, quantization={"max_fallback": 1},
               overwrite=True)
    msg = str(err.value)
    assert "over the budget of -50.0" in msg and "sqnr_db" in msg
    assert "conv" in msg and "head" in msg and "keep_float" in msg
    assert err.value.suggested_float and err.value.table
    # even with overwrite allowed, the old folder is untouched, no new bundle marked as good
    assert (tmp_path / "b" / "old.txt").read_text() == "previous bundle"
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_calibration_from_npz_and_tflite_int8_io(cnn, tmp_path):
    spec, model, task = cnn
    np.savez(tmp_path / "calib.npz", image=task.train.inputs[0][:64].numpy())
    _build(cnn, tmp_path / "b", [TFL], calibration=tmp_path / "calib.npz",
           quantization={"io": "int8", "samples": 32})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    entry = manifest["targets"][TFL]
    assert entry["quantization"]["calibration_samples"] == 32
    assert entry["artifact_info"]["io"] == "int8"
    assert "accuracy" not in entry["quantization"]  # no task: tolerance checks only
    with pytest.raises(DataError, match="empty"):
        _build(cnn, tmp_path / "c", [TFL], calibration=[])


def test_qat_ends_in_the_same_int8_artifacts(cnn, tmp_path):
    from edgekit.quantize.qat import qat_finetune

    spec, model, task = cnn
    qat_model = qat_finetune(model, task, spec.example_inputs(1), epochs=1, teacher=model)
    assert set(qat_model.edgekit_qat_updated) >= {"conv.weight", "fc.weight", "head.weight"}
    bundle = compress(qat_model, spec.example_inputs(1), targets=[TFL], out_dir=tmp_path / "b",
                      input_names=list(spec.input_names), output_names=list(spec.output_names),
                      task=task, progress=False)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    for name in (TFL,):
        q = manifest["targets"][name]["quantization"]
        assert q["mode"] == "qat" and q["accuracy"]["drop"] <= 1.0
    assert manifest["targets"][TFL]["artifact_info"]["quantization"]["qat"] is True
    assert bundle.load(TFL).run([spec.example_inputs(1)[0].numpy()])[0].shape == (1, 10)


def test_qat_keeps_the_calibrated_start_when_fine_tuning_makes_it_worse(cnn):
    from edgekit.quantize.qat import qat_finetune
    from edgekit.train import evaluate

    spec, model, task = cnn
    # A learning rate this large wrecks the weights in the first steps: no epoch can beat the
    # fake-quantized starting point on the validation split, so QAT must hand back the start.
    qat_model = qat_finetune(model, task, spec.example_inputs(1), epochs=1, lr=5.0)
    hist = qat_model.edgekit_qat_history
    assert hist["best_epoch"] == -1 and hist["val"][0] < hist["start_val"]
    assert evaluate(qat_model.edgekit_qat_prepared, task.val, task) == pytest.approx(
        hist["start_val"])
    for name, p in model.state_dict().items():
        assert torch.equal(qat_model.state_dict()[name], p), name


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_qat_freezes_batch_norm_statistics(freeze_bn):
    from edgekit.quantize.qat import qat_finetune

    spec = get_spec("ds_cnn")
    task = spec.task()
    torch.manual_seed(0)
    model = spec.factory().eval()  # untrained: any epoch of training beats the start
    qat_model = qat_finetune(model, task, spec.example_inputs(1), epochs=1, lr=1e-2,
                             freeze_bn=freeze_bn, fold_bn=False)
    assert qat_model.edgekit_qat_history["best_epoch"] == 0
    stats = [k for k in model.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert stats
    before, after = model.state_dict(), qat_model.state_dict()
    same = [torch.equal(before[k], after[k]) for k in stats]
    assert all(same) if freeze_bn else not any(same)
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert changed  # the weights did train


def test_qat_folds_batch_norm_so_the_tflite_artifact_matches_ptq(tmp_path):
    from edgekit.quantize.qat import _fold_batch_norm, qat_finetune

    spec = get_spec("ds_cnn")
    task = spec.task()
    torch.manual_seed(0)
    model = spec.factory().eval()
    fit(model, task, epochs=1, progress=False)
    qat_model = qat_finetune(model, task, spec.example_inputs(1), epochs=1)
    assert qat_model.edgekit_qat_bn_folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in qat_model.modules())
    folded, did = _fold_batch_norm(model)  # folding alone keeps the float function
    x = spec.example_inputs(8)
    with torch.no_grad():
        assert did and torch.allclose(folded(*x), model(*x), atol=1e-5)
    sizes = {}
    for tag, m in (("ptq", model), ("qat", qat_model)):
        compress(m, spec.example_inputs(1), targets=[TFL], out_dir=tmp_path / tag,
                 input_names=list(spec.input_names), output_names=list(spec.output_names),
                 calibration=task.train, progress=False,
                 quantization={"samples": 32, "latency_check": False})
        sizes[tag] = (tmp_path / tag / TFL / "model.tflite").stat().st_size
    # the learned-range graph converts to as many int8 ops as PTQ: no unfolded batch norm left
    assert sizes["qat"] <= sizes["ptq"] * 1.05, sizes


def test_sources_whose_outputs_equal_fp32_compare_as_infinite_sqnr(tmp_path):
    """A model whose output is exactly fp32's in int8 (here all zeros: a zero-initialised
    head, as some library classifiers start) has an infinite held-out SQNR, which the gate's
    numbers write as ``"inf"``: OpenVINO's two sources compare it as a number."""
    pytest.importorskip("nncf")
    from torch import nn

    class ZeroHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)
            nn.init.zeros_(self.b.weight)
            nn.init.zeros_(self.b.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    g = torch.Generator().manual_seed(1)
    data = [torch.randn(1, 8, generator=g) for _ in range(16)]
    compress(ZeroHead().eval(), (data[0],), targets=["x86-openvino-int8"],
             out_dir=tmp_path / "b", calibration=data, progress=False,
             quantization={"latency_check": False, "fallback": False})
    q = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][
        "x86-openvino-int8"]["quantization"]
    sources = q["source_choice"]["sources"]
    assert {s["heldout_sqnr_db"] for s in sources.values()} == {"inf"}
    assert q["source_choice"]["kept"] in sources and q["source_choice"]["why"]
