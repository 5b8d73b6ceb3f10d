"""Per-op profiles from each runtime's own profiler (edgekit.bench.profile), on tiny models."""

import json

import numpy as np
import pytest
import torch

import edgekit
from edgekit.bench.candidates import artifact_from_file
from edgekit.bench.profile import profile_artifact, profile_markdown
from edgekit.errors import NotSupportedError

pytest.importorskip("onnxruntime")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 5)).eval()


def _feeds() -> list[np.ndarray]:
    return [np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    d = tmp_path_factory.mktemp("prof")
    fp32 = d / "fp32.onnx"
    torch.onnx.export(_net(), (torch.rand(1, 3, 8, 8),), str(fp32), dynamo=True,
                      input_names=["x"], output_names=["y"], external_data=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.it = iter([{"x": rng.random((1, 3, 8, 8), dtype=np.float32)}
                            for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    int8 = d / "int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return {"fp32": fp32, "int8": int8}


def _check_table(prof):
    ops = prof["ops"]
    assert ops and prof["timed"]
    assert sum(o["pct"] for o in ops) == pytest.approx(100.0, abs=1e-6)
    assert sum(o["total_ms"] for o in ops) == pytest.approx(prof["node_ms"])
    assert [o["total_ms"] for o in ops] == sorted((o["total_ms"] for o in ops), reverse=True)
    assert all(n["ms"] >= 0 for n in prof["nodes"])


def test_onnxruntime_profile_tells_int8_kernels_from_float(models):
    fp = profile_artifact(artifact_from_file(models["fp32"]), _feeds(), threads=1, runs=5,
                          warmup=2)
    q = profile_artifact(artifact_from_file(models["int8"]), _feeds(), threads=1, runs=5,
                         warmup=2)
    for p in (fp, q):
        _check_table(p)
        assert p["runs"] == 5 and p["runtime"].startswith("onnxruntime ")
    ops_fp = {o["op_type"]: o for o in fp["ops"]}
    ops_q = {o["op_type"]: o for o in q["ops"]}
    assert ops_fp["Conv"]["count"] == 1 and ops_fp["Conv"]["precision"] == ["fp32"]
    assert "Conv (CPUExecutionProvider)" in ops_fp["Conv"]["kernel"]
    assert "Conv" not in ops_q and "QLinearConv" not in ops_fp
    assert ops_q["QLinearConv"]["precision"] == ["int8"]
    assert ops_q["QuantizeLinear"]["precision"] == ["fp32->int8"]
    assert fp["int8_share_pct"] == 0.0 and q["int8_share_pct"] > 0.0
    md = profile_markdown([fp, q])
    assert "| op type | count | total ms | % time | precision | kernel |" in md
    assert "| QLinearConv | 1 |" in md and "| Conv | 1 |" in md


def test_openvino_profile_names_the_executed_kernel(models, tmp_path):
    ov = pytest.importorskip("openvino")
    ir = tmp_path / "m.xml"
    om = ov.convert_model(_net(), example_input=torch.rand(1, 3, 8, 8))
    om.outputs[0].get_tensor().set_names({"y"})
    ov.save_model(om, str(ir))
    fp = profile_artifact(artifact_from_file(ir), _feeds(), threads=1, runs=5, warmup=2)
    _check_table(fp)
    conv = next(o for o in fp["ops"] if o["op_type"] == "Convolution")
    assert conv["precision"] == ["fp32"] and all("f32" in k for k in conv["kernel"])
    assert fp["inference_precision"] == "f32"  # asked explicitly, not the bf16 default
    # OpenVINO reading the QDQ model runs some layers in int8 kernels (exec type ..._i8)
    art = artifact_from_file(models["int8"])
    art.backend = "openvino"  # OpenVINO reads .onnx directly
    q = profile_artifact(art, _feeds(), threads=1, runs=5, warmup=2)
    _check_table(q)
    i8 = [o for o in q["ops"] if "int8" in o["precision"]]
    assert i8 and all(any(k.lower().endswith("_i8") or k.lower().endswith("_u8")
                          for k in o["kernel"]) for o in i8)
    assert q["int8_share_pct"] > 0.0


@pytest.mark.slow
def test_litert_profile_says_times_are_not_available(tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    path = tmp_path / "m.tflite"
    litert_torch.convert(_net(), (torch.rand(1, 3, 8, 8),)).export(str(path))
    p = profile_artifact(artifact_from_file(path), _feeds(), threads=1, runs=3, warmup=0)
    assert p["timed"] is False and p["node_ms"] is None and p["nodes"] == []
    assert "no op profiler" in p["note"]
    ops = {o["op_type"]: o for o in p["ops"]}
    assert ops["CONV_2D"]["count"] == 1 and ops["CONV_2D"]["precision"] == ["fp32"]
    assert ops["FULLY_CONNECTED"]["count"] == 1
    md = profile_markdown([p])
    assert "| CONV_2D | 1 | - | - | fp32 |" in md and "no op profiler" in md


def test_unknown_backend_and_bad_runs_are_refused(models):
    art = artifact_from_file(models["fp32"])
    with pytest.raises(NotSupportedError, match="runs must be >= 1"):
        profile_artifact(art, _feeds(), runs=0)
    art.backend = "executorch"
    with pytest.raises(NotSupportedError, match="no per-op profiler for the executorch"):
        profile_artifact(art, _feeds())


def test_bench_profile_writes_tables_beside_the_report(models, tmp_path):
    rep = edgekit.bench([models["fp32"], models["int8"]], runs=5, warmup=1, memory=False,
                        progress=False, out_dir=tmp_path, formats=("json", "md"), profile=True)
    assert rep["files"]["profile"] == ["profile.json", "profile.md"]
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert [p["name"] for p in saved] == ["fp32.onnx", "int8.onnx"]
    assert {o["op_type"] for o in saved[1]["ops"]} >= {"QLinearConv", "QuantizeLinear"}
    md = (tmp_path / "profile.md").read_text()
    assert "## fp32.onnx" in md and "## int8.onnx" in md
    assert "profiles" in json.loads((tmp_path / "bench.json").read_text())
