"""OpenVINO's CPU plugin crashed (SIGSEGV) compiling ONNX Runtime's QDQ model of Phi, taking
the build's process with it. The int8 IR is now compiled in a child process first, so a crash
is an error naming the signal (and the other source is built), and the QDQ model loses the
repeated requantizations around layout ops that the plugin crashed on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.backends._child import run_in_child
from edgekit.errors import ModelRunError

ov = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")


def test_a_child_killed_by_a_signal_is_an_error_naming_it():
    code = "import os, signal, sys\nprint('compiling', file=sys.stderr, flush=True)\n" \
           "os.kill(os.getpid(), signal.SIGSEGV)\n"
    with pytest.raises(ModelRunError) as info:
        run_in_child(code, [], backend="openvino", runtime="OpenVINO",
                     doing="compiling model.xml for the CPU", hint="build the other source")
    assert "OpenVINO killed the process (SIGSEGV) compiling model.xml" in str(info.value)
    assert "compiling" in str(info.value).split(":", 1)[1]  # its last words
    assert info.value.hint == "build the other source" and info.value.backend == "openvino"


def test_a_child_that_lives_returns_its_output():
    done = run_in_child("import sys\nprint(sys.argv[1])\n", ["x.xml"], backend="openvino",
                        runtime="OpenVINO", doing="", hint="")
    assert done is not None and done.returncode == 0 and done.stdout.strip() == "x.xml"


def test_float_ops_from_the_child_equal_those_compiled_here(tmp_path):
    from edgekit.backends.float_ops import openvino_float_ops
    from edgekit.backends.openvino_int8 import float_ops_in_child

    model = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.GELU()).eval()
    om = ov.convert_model(model, example_input=(torch.randn(1, 4),))
    ov.save_model(om, str(tmp_path / "m.xml"))
    here = openvino_float_ops(str(tmp_path / "m.xml"))
    assert here == {"Eltwise": 1, "MVN": 1}  # the norm and the GELU, run in float
    assert float_ops_in_child(tmp_path / "m.xml") == here


def _qdq_graph(second_scale: float) -> object:
    """x -> Q/DQ -> Reshape -> Q/DQ -> MatMul; the second pair on ``second_scale``."""
    from onnx import TensorProto, helper, numpy_helper

    init = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(second_scale, np.float32), "s2"),
            numpy_helper.from_array(np.array(128, np.uint8), "z"),
            numpy_helper.from_array(np.array([2, 8], np.int64), "shape"),
            numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 3))
                                    .astype(np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q0"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq0"),
             helper.make_node("Reshape", ["xd", "shape"], ["r"], name="reshape"),
             helper.make_node("QuantizeLinear", ["r", "s2", "z"], ["rq"], name="q1"),
             helper.make_node("DequantizeLinear", ["rq", "s2", "z"], ["rd"], name="dq1"),
             helper.make_node("MatMul", ["rd", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [2, 3])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(proto: object, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_a_requantization_onto_the_same_grid_after_a_reshape_goes_and_changes_nothing():
    from edgekit.backends.openvino_int8 import drop_repeated_requantization

    x = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    proto = _qdq_graph(0.05)
    before = _run(proto, x)
    assert drop_repeated_requantization(proto) == 1
    assert [n.name for n in proto.graph.node] == ["q0", "dq0", "reshape", "mm"]
    assert proto.graph.node[-1].input[0] == "r"
    np.testing.assert_array_equal(_run(proto, x), before)

    other = _qdq_graph(0.07)  # a different grid: the pair rounds, so it stays
    assert drop_repeated_requantization(other) == 0 and len(other.graph.node) == 6


@pytest.mark.slow
def test_phi_builds_int8_on_openvino_from_the_qdq_source(tmp_path):
    pytest.importorskip("transformers")
    from hf_tiny import Phi, token_ids

    from edgekit.pipeline import compress

    model = Phi().eval()
    data = [(token_ids(i),) for i in range(16)]
    target = "x86-openvino-int8"
    compress(model, data[0], targets=[target], out_dir=tmp_path / "b", calibration=data,
             progress=False, quantization={"latency_check": False, "fallback": False,
                                           "openvino_source": "qdq"})
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][target]
    q = entry["quantization"]
    assert entry["artifact_info"]["quantization"]["requantizations_dropped"] > 0
    assert q["float_ops"] is not None  # compiled (in the child) and profiled
    rows = q["layers"]
    assert rows and all(r["precision_from"] == "artifact" and r["precision"] == "int8"
                        for r in rows), rows
    assert min(float(o["sqnr_db"]) for o in q["heldout_fidelity"]["outputs"]) > 20
