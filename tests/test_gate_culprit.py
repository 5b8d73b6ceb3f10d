"""The int8 gate uses explain: a variant that misses its gate is read layer by layer in the
runtime's own tensors, the fallback keeps the culprit in float first, and an error names it.

The model is test_explain's ``Broken``: ``conv1``'s channel 3 is ~100x the others, so int8
rounding of ``conv1``'s output drowns its seven ordinary channels. ONNX Runtime shows it at
``conv1``'s output (channel SQNR ~6 dB) while PyTorch-side sensitivity (one layer
fake-quantized at a time) ranks ``conv2`` first. Keeping ``conv1`` and the layer that reads its
output (``conv2``) in float reaches ~49 dB on the held-out data; the sensitivity order's first
two layers (``conv2``, ``fc``) reach ~35 dB. The builds switch off equalization (it rescales
exactly this outlier away) so that the gate has something to catch.
"""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from test_explain import broken_model

from edgekit.backends import get_backend
from edgekit.errors import QuantizationError
from edgekit.explain.culprits import try_first
from edgekit.profiles import load_profile

ORT = "x86-onnxruntime-int8"
# 8-bit weights everywhere: the dB levels above are those of the 8-bit grid (a CPU without
# VNNI would otherwise get 7-bit weights, edgekit.backends.x86_saturation)
NO_TRANSFORMS = {"latency_check": False, "equalize": False, "bias_correction": False,
                 "reduce_range": "off"}


def _strict(name: str, min_sqnr_db: float = 40.0):
    return dataclasses.replace(load_profile(name), gate={
        "min_sqnr_db": min_sqnr_db, "min_top1_agreement": False, "min_centred_cosine": False})


def _compress(tmp_path, profile, folder="b", **quantization):
    from edgekit.pipeline import compress

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    calib = torch.rand(24, 1, 8, 8, generator=gen).numpy()
    x = torch.rand(1, 1, 8, 8, generator=gen)
    root = tmp_path / folder
    compress(broken_model(), x, targets=[profile], out_dir=root, calibration=calib,
             input_names=["x"], output_names=["y"], progress=False,
             quantization={**NO_TRANSFORMS, **quantization})
    return json.loads((root / "manifest.json").read_text())["targets"][profile.name][
        "quantization"]


def _need(backend):
    reason = get_backend(backend).available()
    if reason is not None:
        pytest.skip(reason)


def test_fallback_keeps_the_runtime_culprit_in_float_first(tmp_path):
    _need("onnxruntime")
    q = _compress(tmp_path, _strict(ORT))
    rec = q["culprits"]
    assert rec["source"].startswith("runtime tensors (onnxruntime artifact")
    assert rec["first_jump"] == "conv1"
    top = rec["layers"][0]
    assert top["module"] == "conv1" and top["first_jump"] and top["sqnr_db"] < 12
    assert rec["try_first"] == ["conv1", "conv2"]
    # the layer choices tried, in order: as configured; one layer: the culprit conv1, then
    # the PyTorch order's conv2; two: conv1 + its reader
    keeps = [a["keep_float"] for a in q["attempts"] if "config" not in a]
    assert keeps[-3:] == [["conv1"], ["conv2"], ["conv1", "conv2"]]
    assert q["fallback_layers"] == ["conv1", "conv2"]
    assert q["heldout_fidelity"]["outputs"][0]["sqnr_db"] > 40
    # PyTorch-side sensitivity would have started elsewhere
    sens = sorted((r for r in q["layers"] if "sqnr_db" in r), key=lambda r: r["sqnr_db"])
    assert sens[0]["layer"] == "conv2"


@pytest.mark.slow
@pytest.mark.parametrize("target, backend, passes", [
    # OpenVINO: conv2 in float takes the ReLU before it along (nothing else reads it), so
    # NNCF leaves conv1's output unrounded: the PyTorch order's conv2 alone passes
    ("x86-openvino-int8", "openvino", ["conv2"]),
    ("arm64-tflite-int8", "tflite", ["conv1", "conv2"])])
def test_openvino_and_litert_gates_use_their_own_tensors(tmp_path, target, backend, passes):
    _need(backend)
    q = _compress(tmp_path, _strict(target))
    rec = q["culprits"]
    assert rec["source"].startswith(f"runtime tensors ({backend} artifact")
    assert rec["first_jump"] == "conv1" and rec["layers"][0]["sqnr_db"] < 12
    assert q["fallback_layers"] == passes
    assert q["heldout_fidelity"]["outputs"][0]["sqnr_db"] > 40


def test_sensitivity_order_skips_the_runtime_culprits(tmp_path):
    _need("onnxruntime")
    q = _compress(tmp_path, _strict(ORT, 30.0), fallback_order="sensitivity")
    # the culprits are still read and recorded; the fallback does not start with them
    assert q["culprits"]["try_first"] == ["conv1", "conv2"]
    assert q["fallback_layers"] == ["conv2"]
    assert q["config"]["fallback_order"] == "sensitivity"


def test_with_fallback_off_the_error_names_the_culprit(tmp_path):
    _need("onnxruntime")
    with pytest.raises(QuantizationError) as err:
        _compress(tmp_path, _strict(ORT), fallback=False)
    msg = str(err.value)
    found = re.search(r"The onnxruntime artifact's own tensors depart from PyTorch at: conv1 "
                      r"\(Conv2d: SQNR ([0-9.]+) dB there, ([0-9.]+) dB lost, the first jump\)",
                      msg)
    assert found and float(found[1]) < 12 and float(found[2]) > 40, msg
    assert "keep_float = ['conv1', 'conv2'] under [quantization] in the recipe" in msg
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_explain_failing_falls_back_to_sensitivity_and_is_recorded(tmp_path, monkeypatch):
    _need("onnxruntime")
    import edgekit.explain.culprits as culprits

    def broken(*args, **kwargs):
        raise RuntimeError("capture exploded")

    monkeypatch.setattr(culprits, "gate_culprits", broken)
    q = _compress(tmp_path, _strict(ORT, 30.0))
    rec = q["culprits"]
    assert rec["source"] == "pytorch sensitivity (explain failed on the artifact)"
    assert rec["error"] == "RuntimeError: capture exploded" and rec["try_first"] == []
    # today's order: the most sensitive layer in PyTorch first
    assert q["fallback_layers"] == ["conv2"]
    # at the 40 dB gate that the runtime culprits pass with two float layers (conv1, conv2),
    # the sensitivity order (conv2, then conv2 + fc) does not pass at all
    with pytest.raises(QuantizationError) as err:
        _compress(tmp_path, _strict(ORT, 40.0), folder="strict")
    msg = str(err.value)
    assert "depart from PyTorch" not in msg and "'keep_float': ['conv2', 'fc', 'conv1']" in msg


def test_try_first_adds_the_layers_that_read_and_feed_the_culprit():
    order = ["conv1", "bn1", "relu1", "conv2", "relu2", "pool", "fc"]
    quantizable = ["conv1", "conv2", "fc"]
    assert try_first(["conv1"], order, quantizable) == ["conv1", "conv2"]
    # a parameter-free culprit: the quantizable layer before it, then the one after
    assert try_first(["relu2"], order, quantizable) == ["conv2", "fc"]
    # the last layer: nothing reads it; the layer whose output it reads comes next
    assert try_first(["fc"], order, quantizable) == ["fc", "conv2"]
    assert try_first(["conv2"], order, quantizable) == ["conv2", "fc", "conv1"]
    assert try_first(["relu1", "conv2"], order, quantizable) == ["conv1", "conv2", "fc"]
    assert try_first(["not_a_layer"], order, quantizable) == []
    assert try_first([], order, quantizable) == []


class _Shifted:
    """A 'session' that returns the model's logits, with sample 2's classes swapped and
    sample 4 damped towards zero in one class."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def run(self, feeds):
        with torch.no_grad():
            out = self.model(torch.from_numpy(feeds[0])).numpy().copy()
        k, self.calls = self.calls, self.calls + 1
        if k == 2:
            out = out[:, ::-1].copy()
        if k == 4:
            out[:, 0] *= 0.2
        return [out]


def test_worst_samples_takes_the_top1_flip_first_then_the_lowest_cosine():
    from edgekit.explain.culprits import worst_samples

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([3.0, 0.0, -3.0]))  # class 0 wins clearly
    pool = [[np.full((1, 4), 0.1 * i, np.float32)] for i in range(6)]
    samples, chosen = worst_samples(model, _Shifted(model), pool, k=2)
    assert chosen["indices"] == [2, 4] and chosen["pool"] == 6 and chosen["top1_flips"] == 1
    assert chosen["cosines"][1] < 1.0 and np.array_equal(samples[0][0], pool[2][0])


def test_hint_fits_a_first_jump_at_a_layer_with_nothing_to_quantize():
    from edgekit.explain.culprits import culprit_message

    rows = [{"module": "embed_positions", "kind": "Embedding", "sqnr_db": 4.4,
             "sqnr_lost_db": 30.1, "precision": "fp32", "first_jump": True},
            {"module": "fc", "kind": "Linear", "sqnr_db": 4.1, "sqnr_lost_db": 0.3,
             "precision": "int8", "first_jump": False}]
    rec = {"layers": rows, "try_first": ["fc"]}
    said, hint = culprit_message(rec, "tflite", [], ["fc", "head"])
    assert "embed_positions (Embedding: SQNR 4.4 dB there, 30.1 dB lost, the first jump)" in said
    assert hint.startswith("the first jump is at 'embed_positions' (Embedding), which has no "
                           "weights edgekit quantizes")
    assert "index or position computed in floating point" in hint
    assert "keep_float = ['fc']" in hint and "may not reach the cause" in hint
    # the same record with the jump at a quantized layer: keep it in float
    rows[0]["module"] = "conv1"
    _, hint = culprit_message({"layers": rows, "try_first": ["conv1", "fc"]}, "tflite",
                              ["fc"], ["conv1", "fc"])
    assert hint.startswith("keep the culprit in float: keep_float = ['conv1'] under")
    assert culprit_message({"layers": []}, "tflite", [], ["fc"]) == ("", None)
    # a quantized first jump with an output unrelated to PyTorch's: the kernel, not rounding
    # (wav2vec2's grouped positional convolution on OpenVINO's AMX kernel: -0.49 dB)
    rows[0].update(module="pos_conv", kind="ParametrizedConv1d", sqnr_db=-0.49)
    _, hint = culprit_message({"layers": rows, "try_first": ["pos_conv", "fc"]}, "openvino",
                              [], ["pos_conv", "fc"])
    assert hint.startswith("'pos_conv' (ParametrizedConv1d) departs from PyTorch by more "
                           "than rounding (SQNR -0.49 dB there")
    assert "rounds to zero" in hint and "int8 kernel for it computes something else" in hint
    assert "keep_float = ['pos_conv', 'fc']" in hint
