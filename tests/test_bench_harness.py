"""edgekit bench: metrics on hand-computed values, interleaving, reports, faults, GPU paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import edgekit
from edgekit.bench import pareto_front
from edgekit.bench.devices import DeviceUnavailableError, gpu_unavailable_reason
from edgekit.errors import ShapeError
from edgekit.measure.metrics import compare_outputs, cosine, sqnr_db, top1_agreement
from edgekit.measure.scoring import plain_metric
from edgekit.measure.timing import LatencyStats, collect_interleaved

from conftest import tiny_net

# --------------------------------------------------------------------------- pure functions


def test_fidelity_metrics_hand_computed():
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    out = np.array([[0.9, 0.1], [1.0, 0.5], [3.0, 4.0]])
    assert top1_agreement(ref, out) == pytest.approx(2 / 3)  # rows 0 and 2 agree
    cos = cosine(ref, out)
    assert cos[0] == pytest.approx(0.9 / math.sqrt(0.82))
    assert cos[1] == pytest.approx(1.0 / (2 * math.sqrt(1.25)))
    assert cos[2] == pytest.approx(1.0)
    # signal 1+4+9+16 = 30; noise .01+.01+1+2.25 = 3.27
    assert sqnr_db(ref, out) == pytest.approx(10 * math.log10(30 / 3.27))
    assert sqnr_db(ref, ref) == math.inf
    fid = compare_outputs([ref], [out], ["y"], classifier=True)
    assert fid["top1_agreement"] == pytest.approx(2 / 3)
    assert fid["outputs"][0]["max_abs"] == pytest.approx(1.5)
    assert fid["cosine_min"] == pytest.approx(cos.min())
    assert compare_outputs([ref], [ref], ["y"], classifier=False)["sqnr_db"] == "inf"


def test_plain_accuracy_metrics_hand_computed():
    top1, hib, _ = plain_metric("top1")
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top1([logits], np.array([1, 0, 0, 0])) == pytest.approx(75.0) and hib
    mse, hib, _ = plain_metric("mse")
    assert mse([np.array([[1.0, 2.0]])], np.array([[0.0, 4.0]])) == pytest.approx(2.5)
    assert not hib
    auc, _, _ = plain_metric("auc")
    # scores 0.1 0.4 0.35 0.8 for labels 0 0 1 1: 3 of 4 positive/negative pairs ordered
    assert auc([np.array([0.1, 0.4, 0.35, 0.8])], np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    with pytest.raises(edgekit.EdgekitError, match="unknown metric"):
        plain_metric("f1")


def test_pareto_front():
    pts = {"fp32": (2.0, 90.0), "int8": (1.0, 89.0), "slow_bad": (3.0, 80.0), "tie": (2.0, 90.0)}
    assert pareto_front(pts, True) == {"fp32", "int8", "tie"}
    assert pareto_front({"a": (1.0, 0.5), "b": (2.0, 0.1)}, False) == {"a", "b"}


def test_stats_percentiles_on_known_timings():
    s = LatencyStats.from_seconds([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s.median_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.to_json()["noisy"] is True and s.to_json()["cv"] == pytest.approx(s.cv)


class _Rec:
    def __init__(self, name, log, fail_at=None):
        self.name, self.log, self.fail_at = name, log, fail_at

    def run(self, feeds):
        self.log.append(self.name)
        if self.fail_at is not None and len(self.log) >= self.fail_at:
            raise KeyboardInterrupt
        return feeds


def test_duration_mode_and_interrupt_keep_samples():
    log: list[str] = []
    got = collect_interleaved({"a": _Rec("a", log), "b": _Rec("b", log)}, {"a": [], "b": []},
                              warmup=0, runs=None, duration_s=0.05)
    assert got.rounds >= 1 and not got.interrupted
    assert len(got.samples["a"]) == len(got.samples["b"]) == got.rounds
    assert got.seconds >= 0.05
    log2: list[str] = []
    got = collect_interleaved({"a": _Rec("a", log2, fail_at=9), "b": _Rec("b", log2)},
                              {"a": [], "b": []}, warmup=1, runs=100)
    assert got.interrupted
    # calls: 2 warm-up, then a,b / b,a / a,b / b,a(interrupted at the 9th call)
    assert len(got.samples["a"]) == len(got.samples["b"]) == 3


def test_gpu_paths_unavailable_here_say_why():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    reason = gpu_unavailable_reason("onnxruntime", "cuda")
    assert reason and "CUDAExecutionProvider" in reason
    assert "torch.cuda.is_available() is False" in gpu_unavailable_reason("pytorch", "cuda")
    assert "OpenVINO sees no GPU" in gpu_unavailable_reason("openvino", "gpu")
    assert gpu_unavailable_reason("onnxruntime", "cpu") is None


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edgekit.pipeline import compress

    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return compress(tiny_net(), (x,),
                    targets=["x86-onnxruntime-fp32", "x86-tflite-fp32"],
                    out_dir=tmp_path_factory.mktemp("b") / "tiny", input_names=["x"],
                    output_names=["logits"], progress=False)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        y = tiny_net()(torch.from_numpy(x)).argmax(1).numpy()
    y[:10] = (y[:10] + 1) % 10  # 30 of 40 right: top-1 = 75 %
    path = tmp_path_factory.mktemp("d") / "data.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.slow
def test_bench_bundle_with_user_data_writes_reports(bundle, labelled, tmp_path):
    rep = edgekit.bench(bundle.root, data=labelled, runs=30, warmup=2, out_dir=tmp_path,
                        progress=False, models={"pytorch": tiny_net()})
    assert rep["schema"] == "edgekit.bench" and rep["schema_version"] == 1
    assert rep["status"] == "complete" and rep["baseline"] == "x86-onnxruntime-fp32"
    rows = {r["name"]: r for r in rep["results"]}
    assert set(rows) == {"x86-onnxruntime-fp32", "x86-tflite-fp32", "pytorch"}
    for r in rows.values():
        assert r["accuracy"]["value"] == pytest.approx(75.0) and r["accuracy"]["samples"] == 40
        assert r["latency"]["n"] == 30 and len(r["samples_ms"]) == 30
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0
        assert r["throughput_per_s"] == pytest.approx(1e3 / r["latency"]["mean_ms"])
    for name in ("x86-onnxruntime-fp32", "x86-tflite-fp32"):
        r = rows[name]
        assert r["fidelity"]["top1_agreement"] == 1.0 and r["fidelity"]["cosine_min"] > 0.9999
        assert r["memory"]["peak_rss_mb"] > 0 and r["memory"]["delta_mb"] >= 0
        assert "clear_refs" in r["memory"]["method"]
    assert rows["x86-onnxruntime-fp32"]["vs_baseline"]["speedup"] == 1.0
    assert any(r["pareto"] for r in rows.values())
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["results"][0]["name"] == rep["results"][0]["name"]
    assert "| artifact |" in (tmp_path / "bench.md").read_text()
    for png in ("latency.png", "tradeoff.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cli_single_artifacts_json_on_stdout(bundle, capsys):
    from edgekit.cli import main

    onnx = bundle.root / "x86-onnxruntime-fp32" / "model.onnx"
    tfl = bundle.root / "x86-tflite-fp32" / "model.tflite"
    rc = main(["bench", str(onnx), str(tfl), "--runs", "10", "--warmup", "1", "--no-memory",
               "--json", "--baseline", "model.tflite"])
    out, err = capsys.readouterr()
    assert rc == 0
    rep = json.loads(out)
    assert [r["name"] for r in rep["results"]] == ["model.onnx", "model.tflite"]
    assert rep["baseline"] == "model.tflite"
    assert rep["results"][0]["fidelity"]["reference"].startswith("baseline model.tflite")
    assert "[edgekit bench]" in err  # progress on stderr only


@pytest.mark.slow
def test_data_not_matching_inputs_names_input_and_shapes(bundle, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 1, 16, 16), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(ShapeError, match=r"input 'x' .* expects samples of shape \[1, 8, 8\].*"
                                         r"the data has \[1, 16, 16\]"):
        edgekit.bench(bundle.root, data=bad, runs=2, progress=False)
    from edgekit.cli import main

    assert main(["bench", str(bundle.root), "--data", str(bad), "-q"]) == 2


@pytest.mark.slow
def test_cuda_without_gpu_is_a_clear_error(bundle, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceUnavailableError, match="--device cuda .* nothing can run"):
        edgekit.bench(bundle.root, device="cuda", progress=False)
    from edgekit.cli import main

    assert main(["bench", str(bundle.root), "--device", "cuda", "-q"]) == 2
    err = capsys.readouterr().err
    assert "CUDAExecutionProvider" in err and "LiteRT GPU delegate" in err


class _InterruptingNet(torch.nn.Module):
    def __init__(self, after: int):
        super().__init__()
        self.net, self.calls, self.after = tiny_net(), 0, after

    def forward(self, x):
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return self.net(x)


@pytest.mark.slow
def test_ctrl_c_keeps_results_so_far(bundle, tmp_path):
    # first inference (1) + warm-up (2) + 5 timed rounds, then Ctrl-C
    rep = edgekit.bench(bundle.root, data="none", runs=50, warmup=2, memory=False,
                        models={"pytorch": _InterruptingNet(after=9)}, out_dir=tmp_path,
                        progress=False)
    assert rep["interrupted"] and rep["partial"] and rep["status"] == "interrupted"
    rows = {r["name"]: r for r in rep["results"]}
    assert all(r["status"] == "partial" for r in rows.values())
    assert 4 <= rows["x86-onnxruntime-fp32"]["latency"]["n"] <= 6
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["interrupted"] is True
    assert "INTERRUPTED" in (tmp_path / "bench.md").read_text()


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    """An ONNX Runtime fp32 bundle alone (no LiteRT converter needed to build it)."""
    from edgekit.pipeline import compress

    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return compress(tiny_net(), (x,), targets=["x86-onnxruntime-fp32"],
                    out_dir=tmp_path_factory.mktemp("b") / "tiny-onnx", input_names=["x"],
                    output_names=["logits"], progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_pytorch_reference_on_gpu(onnx_bundle):
    model = tiny_net()
    rep = edgekit.bench(onnx_bundle.root, device="cuda", runs=20, warmup=2, data="none",
                        models={"pytorch": model}, progress=False)
    row = next(r for r in rep["results"] if r["name"] == "pytorch")
    assert row["info"]["device"] == "CUDA" and row["latency"]["n"] == 20
    assert row["info"]["gpu"] == torch.cuda.get_device_name(0)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put
    ort_row = next(r for r in rep["results"] if r["name"] == "x86-onnxruntime-fp32")
    if not _ort_cuda():  # a GPU, but onnxruntime without its CUDA provider: said, not timed
        assert ort_row["status"] == "skipped" and "CUDAExecutionProvider" in ort_row["reason"]
        assert not ort_row.get("latency")


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not _ort_cuda(), reason="onnxruntime has no CUDAExecutionProvider here "
                    "(needs onnxruntime-gpu and an NVIDIA GPU)")
def test_onnxruntime_cuda_provider_really_used(bundle):
    rep = edgekit.bench(bundle.root, device="cuda", runs=20, warmup=2, data="none",
                        progress=False)
    row = next(r for r in rep["results"] if r["name"] == "x86-onnxruntime-fp32")
    assert row["info"]["providers"][0] == "CUDAExecutionProvider"
    tfl = next(r for r in rep["results"] if r["name"] == "x86-tflite-fp32")
    assert tfl["status"] == "skipped" and "LiteRT GPU" in tfl["reason"]
