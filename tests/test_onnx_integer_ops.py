"""ONNX Runtime and OpenVINO int8 files on int8 data between their layers: the fp32 ONNX
rewrites before ONNX Runtime's quantizer (HardSigmoid / HardSwish written out, spatial
ReduceMean as GlobalAveragePool) keep the float function and the ranges' cut where the gates
are flat, and the ops each runtime still runs on float data are read back into the manifest
(``float_ops``), from what the runtime executes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mnv3_block import block, inputs

pytest.importorskip("onnxruntime", reason="the ONNX rewrites need onnxruntime (extra onnx)")


def _fp32_onnx(tmp_path):
    import onnx

    from edgekit.backends import get_backend

    art = get_backend("onnxruntime").export(
        block(), (torch.from_numpy(inputs(1, 0)[0][0]),), tmp_path / "fp32",
        input_names=["x"], output_names=["y"], options={})
    return onnx.load(str(art.path))


def _run(proto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_the_onnx_rewrites_keep_the_float_function(tmp_path):
    from edgekit.backends.onnx_rewrites import rewrite_for_integer_ops

    proto = _fp32_onnx(tmp_path)
    before = {n.op_type for n in proto.graph.node}
    x = inputs(1, 3)[0][0] * 4  # values well past the bends at +-3
    want = _run(proto, x)
    done = rewrite_for_integer_ops(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert "HardSigmoid" in before or "HardSwish" in before
    # every gate and spatial mean written out: two means, three hard sigmoids as exported
    assert "HardSigmoid" not in ops and "HardSwish" not in ops and "ReduceMean" not in ops
    assert done.get("ReduceMean") == 2 and done.get("HardSigmoid", 0) + \
        done.get("HardSwish", 0) == 3
    assert ops.count("GlobalAveragePool") == 2 and ops.count("Clip") >= 3
    np.testing.assert_allclose(_run(proto, x), want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(_run(proto, x), block()(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_hardswish_nodes_and_kept_float_nodes():
    """A HardSwish node (as other exporters write it) and a spatial mean are written out with
    the same values; a node kept in float is left as it is, and so is a mean that reads it
    (it would quantize a float layer's output); a mean over channels is not a pool."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.backends.onnx_rewrites import rewrite_for_integer_ops

    def out(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        [helper.make_node("HardSwish", ["x"], ["a"], name="hs"),
         helper.make_node("HardSigmoid", ["a"], ["b"], name="kept", alpha=0.2, beta=0.5),
         helper.make_node("ReduceMean", ["b", "hw"], ["y1"], name="after_kept"),
         helper.make_node("ReduceMean", ["x", "hw"], ["y2"], name="pool", keepdims=0),
         helper.make_node("ReduceMean", ["a", "c"], ["y3"], name="over_channels")],
        "g", [out("x", [1, 4, 3, 3])],
        [out("y1", [1, 4, 1, 1]), out("y2", [1, 4]), out("y3", [1, 1, 3, 3])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
         numpy_helper.from_array(np.array([1], np.int64), "c")])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))
    x = np.linspace(-5, 5, 36, dtype=np.float32).reshape(1, 4, 3, 3)
    import onnxruntime as ort

    def run(p):
        return ort.InferenceSession(p.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})

    want = run(proto)
    assert rewrite_for_integer_ops(proto, {"kept"}) == {"HardSwish": 1, "ReduceMean": 1}
    assert [n.op_type for n in proto.graph.node] == [
        "Add", "Clip", "Mul", "Mul", "HardSigmoid", "ReduceMean", "GlobalAveragePool",
        "Flatten", "ReduceMean"]
    for got, ref in zip(run(proto), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_written_out_gates_keep_the_range_cut(tmp_path):
    """The tensor a gate reads is still cut to [-3, 3] (squeeze-excitation), a ReLU's input to
    [0, inf) and a hardswish's to [-3, inf), after the rewrite as before it."""
    from edgekit.backends.onnx_active_ranges import active_intervals
    from edgekit.backends.onnx_rewrites import rewrite_for_integer_ops

    proto = _fp32_onnx(tmp_path)
    tensors = [o for n in proto.graph.node if n.op_type == "Conv" for o in n.output]
    before = active_intervals(proto, tensors)
    rewrite_for_integer_ops(proto)
    after = active_intervals(proto, tensors)
    assert after.keys() == before.keys()
    for t, (lo, hi) in after.items():  # the written-out shift is 3 in float32
        assert lo == pytest.approx(before[t][0], abs=1e-6)
        assert hi == pytest.approx(before[t][1], abs=1e-6)
    assert sorted(np.round(v, 5).tolist() for v in after.values()) == [
        [-3.0, 3.0], [-3.0, np.inf], [-3.0, np.inf], [0.0, np.inf]]
    # and the written-out add is read as the clamp it feeds: [0, 6] shifted back
    shifted = [n.output[0] for n in proto.graph.node if n.op_type == "Add" and
               n.name.endswith("/add")]
    assert set(active_intervals(proto, shifted).values()) == {(0.0, 6.0)} and len(shifted) == 3


def _build(tmp_path, name: str, **config):
    import edgekit

    out = tmp_path / name
    edgekit.compress(block(), (torch.from_numpy(inputs(1, 0)[0][0]),),
                     targets=["x86-onnxruntime-int8", "x86-openvino-int8"], out_dir=out,
                     calibration=inputs(32, 1), progress=False,
                     quantization={"fallback": False, "openvino_source": "qdq",
                                   "latency_check": False, **config})
    manifest = json.loads((out / "manifest.json").read_text())
    return out, {t: e["quantization"] for t, e in manifest["targets"].items()}


def _ort_optimized_ops(path, tmp_path) -> list[str]:
    """The op types of ONNX Runtime's optimized graph of ``path`` (saved by the runtime)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def _ov_executed(path) -> list[tuple[str, str]]:
    """(node type, kernel) of each node the OpenVINO CPU plugin executes on an inference: the
    profiler's nodes that are in the compiled graph and run a kernel (its status alone marks
    a node under a microsecond as not run)."""
    import openvino as ov

    from edgekit.backends.float_ops import openvino_node_runs

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
    req = compiled.create_infer_request()
    req.infer({0: inputs(1, 0)[0][0]})
    runs = {op.get_friendly_name() for op in compiled.get_runtime_model().get_ordered_ops()
            if openvino_node_runs(op)}
    return [(p.node_type, p.exec_type) for p in req.profiling_info if p.node_name in runs]


@pytest.mark.slow
def test_onnxruntime_and_openvino_int8_run_gates_and_means_on_int8_data(tmp_path):
    pytest.importorskip("openvino", reason="needs openvino (extra openvino)")
    out, q = _build(tmp_path, "integer")
    ort_q, ov_q = q["x86-onnxruntime-int8"], q["x86-openvino-int8"]
    assert ort_q["float_ops"] == {} and ov_q["float_ops"] == {}
    ort_ops = _ort_optimized_ops(out / "x86-onnxruntime-int8" / "model.onnx", tmp_path)
    assert "HardSigmoid" not in ort_ops and "ReduceMean" not in ort_ops
    assert ort_ops.count("QLinearGlobalAveragePool") == 2
    assert not [k for t, k in _ov_executed(out / "x86-openvino-int8" / "model.xml")
                if t == "HardSigmoid"]

    # integer_ops off: the gates and means stay float ops, as each runtime runs them, and
    # the manifest's counts are those of the runtime's own graph and profiler
    out, q = _build(tmp_path, "plain", integer_ops=False)
    ort_ops = _ort_optimized_ops(out / "x86-onnxruntime-int8" / "model.onnx", tmp_path)
    assert q["x86-onnxruntime-int8"]["float_ops"] == {
        "HardSigmoid": ort_ops.count("HardSigmoid"), "ReduceMean": ort_ops.count("ReduceMean")}
    assert ort_ops.count("HardSigmoid") == 3
    ov_floats = q["x86-openvino-int8"]["float_ops"]
    executed = _ov_executed(out / "x86-openvino-int8" / "model.xml")
    hard = [k for t, k in executed if t == "HardSigmoid"]
    assert len(hard) == 3 and all(k.endswith("f32") for k in hard)  # float kernels
    assert ov_floats.get("Math") == 3
    # read from the compiled graph, not the per-run counters: the same on every reading
    from edgekit.backends.float_ops import openvino_float_ops

    xml = str(out / "x86-openvino-int8" / "model.xml")
    assert [openvino_float_ops(xml) for _ in range(3)] == [ov_floats] * 3
