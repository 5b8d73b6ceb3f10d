"""``int8_scope = "layers"`` (ONNX Runtime, OpenVINO's QDQ source): Q/DQ pairs only on the
inputs of weight and matrix layers. A DeiT's class and distillation tokens start at zero; on
one int8 grid for the whole residual stream they keep a few levels, and the LayerNorm after it
magnifies the rounding (held-out SQNR 2 dB, under the gate). With the adds and norms in float
the tokens keep their values and every linear layer still runs int8."""

from __future__ import annotations

import json

import pytest
import torch

from edgekit.pipeline import compress

pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from hf_tiny import Deit  # noqa: E402 - after the import skips

pytestmark = pytest.mark.slow
TARGET = "x86-onnxruntime-int8"
SETTINGS = {"latency_check": False, "fallback": False}


def _data() -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 3, 32, 32, generator=g),) for _ in range(16)]


def _build(tmp_path, target: str = TARGET, **settings) -> dict:
    data = _data()
    compress(Deit().eval(), data[0], targets=[target], out_dir=tmp_path / "b",
             calibration=data, progress=False, quantization={**SETTINGS, **settings})
    return json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][target]


def _check_layer_inputs_only(tmp_path, entry: dict, target: str = TARGET) -> None:
    q = entry["quantization"]
    assert min(float(o["sqnr_db"]) for o in q["heldout_fidelity"]["outputs"]) > 15
    rows = q["layers"]
    assert rows and all((r["precision"], r["precision_from"]) == ("int8", "artifact")
                        for r in rows), rows
    assert entry["artifact_info"]["quantization"]["int8_scope"]["applied"] == "layers"
    if target != TARGET:
        return
    proto = onnx.load(str(tmp_path / "b" / TARGET / "model.onnx"))
    made = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:  # no add or norm reads a dequantized activation
        if node.op_type in ("Add", "LayerNormalization"):
            src = made.get(node.input[0])
            assert src is None or src.op_type != "DequantizeLinear", node.name


def test_every_op_on_int8_misses_the_gate_and_layer_inputs_only_pass(tmp_path):
    entry = _build(tmp_path)  # the default "auto": both scopes built, as two sources
    q = entry["quantization"]
    sources = q["source_choice"]["sources"]
    assert set(sources) == {"int8_scope=all", "int8_scope=layers"}
    assert not sources["int8_scope=all"]["passed"]
    assert sources["int8_scope=all"]["heldout_sqnr_db"] < 8
    assert q["source_choice"]["kept"] == "int8_scope=layers"
    assert q["accuracy_alternative"] is None
    _check_layer_inputs_only(tmp_path, entry)


def test_with_every_op_asked_for_layer_inputs_only_is_the_first_alternative(tmp_path):
    entry = _build(tmp_path, int8_scope="all")
    q = entry["quantization"]
    # the first build (every op) missed the gate; the alternative built next passed
    assert [a.get("config") for a in q["attempts"]] == [None, {"int8_scope": "layers"}]
    assert q["attempts"][1]["passed"] is True
    assert (q["accuracy_alternative"] or "").startswith("Q/DQ on layer inputs only"), q
    _check_layer_inputs_only(tmp_path, entry)


def test_openvino_builds_the_qdq_source_with_layer_inputs_only_where_both_sources_miss(
        tmp_path):
    target = "x86-openvino-int8"
    entry = _build(tmp_path, target, int8_scope="all")
    q = entry["quantization"]
    assert set(q["source_choice"]["sources"]) == {"nncf", "qdq"}
    assert not any(s["passed"] for s in q["source_choice"]["sources"].values())
    assert q["attempts"][-1]["config"] == {"openvino_source": "qdq", "int8_scope": "layers"}
    assert (q["accuracy_alternative"] or "").startswith(
        "ONNX Runtime QDQ source, Q/DQ on layer inputs only"), q
    _check_layer_inputs_only(tmp_path, entry, target)


def test_openvino_auto_compares_both_scopes_of_the_qdq_source(tmp_path):
    target = "x86-openvino-int8"
    entry = _build(tmp_path, target)
    q = entry["quantization"]
    assert set(q["source_choice"]["sources"]) == {
        "nncf", "qdq/int8_scope=all", "qdq/int8_scope=layers"}
    assert q["source_choice"]["kept"] == "qdq/int8_scope=layers"
    _check_layer_inputs_only(tmp_path, entry, target)


def test_auto_scope_without_a_layer_norm_builds_every_op_once(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3)).eval()
    data = _data()
    compress(model, data[0], targets=[TARGET], out_dir=tmp_path / "b", calibration=data,
             progress=False, quantization=SETTINGS)
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][TARGET]
    scope = entry["artifact_info"]["quantization"]["int8_scope"]
    assert scope["setting"] == "auto" and scope["applied"] == "all"
    assert "no layer-norm module" in scope["why"]
    assert entry["quantization"]["source_choice"] is None  # one source: nothing compared


def test_litert_annotates_only_the_weight_layers_where_every_op_misses(tmp_path):
    """LiteRT: the same DeiT misses with every op annotated (2 dB); with only the weight
    layers annotated, each FULLY_CONNECTED and the patch CONV_2D run int8 and every ADD, norm
    and softmax reads float."""
    target = "arm64-tflite-int8"
    entry = _build(tmp_path, target)  # "auto": every op first on LiteRT
    q = entry["quantization"]
    assert q["attempts"][-1]["config"] == {"int8_scope": "layers"}
    assert (q["accuracy_alternative"] or "").startswith("Q/DQ on layer inputs only"), q
    assert entry["artifact_info"]["quantization"]["int8_scope"]["applied"] == "layers"
    _check_layer_inputs_only(tmp_path, entry, target)
    from edgekit.backends.tflite import _open_interpreter

    interp = _open_interpreter(tmp_path / "b" / target / "model.tflite", 1)
    dtypes = {t["index"]: str(t["dtype"]) for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    fc = [o for o in ops if o["op_name"] in ("FULLY_CONNECTED", "CONV_2D")]
    assert fc and all("int8" in dtypes[o["inputs"][0]] for o in fc)
    adds = [o for o in ops if o["op_name"] == "ADD"]
    assert adds and all("float32" in dtypes[i] for o in adds for i in o["inputs"] if i >= 0)


def test_litert_scope_settings():
    from edgekit.backends.tflite import pt2e_scope
    from edgekit.quantize import QuantConfig

    assert pt2e_scope(QuantConfig(int8_scope="layers"))["applied"] == "layers"
    assert pt2e_scope(QuantConfig(int8_scope="auto"))["applied"] == "all"
    assert pt2e_scope(QuantConfig(int8_scope="layers"), qat=True)["applied"] == "all"
