"""Per-tensor activation ranges chosen by error, and 16-bit activations (ONNX Runtime QDQ)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends._ranges import (
    GRIDS,
    TensorStats,
    candidate_ranges,
    choose_range,
    quantize_dequantize,
)
from edgekit.errors import ConfigError, UsageError
from edgekit.quantize import QuantConfig

ORT = "x86-onnxruntime-int8"


class Spiky(nn.Module):
    """conv1's channel 0 fires rarely (0.6% of positions) and large (up to ~130, the other
    channels stay under ~3): an outlier activation that min-max ranges spend the grid on;
    conv2 reads that channel weakly, so clipping it costs little."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv1.weight[0] = 20.0
            self.conv1.bias[0] = -240.0
            self.conv2.weight[:, 0] *= 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(h.permute(0, 2, 3, 1))


def _spiky() -> nn.Module:
    torch.manual_seed(0)
    return Spiky().eval()


def _data(n: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((1, 3, 12, 12)).astype(np.float32)] for _ in range(n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The Spiky model's fp32 ONNX export and a quantize(config) -> (artifact, session)."""
    torch.set_num_threads(1)
    from edgekit.backends import get_backend

    be = get_backend("onnxruntime")
    model = _spiky()
    cal = _data(16, 0)
    ex = (torch.from_numpy(cal[0][0]),)
    root = tmp_path_factory.mktemp("ranges")
    fp32 = be.export(model, ex, root / "fp32", input_names=["x"], output_names=["y"],
                     options={})
    count = [0]

    def quantize(**config):
        count[0] += 1
        art = be.quantize(model, ex, root / f"q{count[0]}", input_names=["x"],
                          output_names=["y"], options={}, calibration=cal,
                          config=QuantConfig(**config), fp32=fp32)
        return art, be.load(art, threads=1, options={})

    return model, quantize


def _sqnr(model: nn.Module, session) -> float:
    num = den = 0.0
    for (x,) in _data(16, 1):
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy().astype(np.float64)
        out = session.run([x])[0].astype(np.float64)
        num += float((ref ** 2).sum())
        den += float(((out - ref) ** 2).sum())
    return 10 * np.log10(num / den)


def _qdq_params(path, tensor):
    """(scale, zero point, zero point's ONNX type) of the QuantizeLinear of ``tensor``."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    zero = inits[q.input[2]]
    return (float(numpy_helper.to_array(inits[q.input[1]])),
            int(numpy_helper.to_array(zero)), zero.data_type)


# -- the range math ---------------------------------------------------------------------------

def test_quantize_dequantize_is_onnxruntimes_grid():
    x = np.array([-1.0, 0.0, 0.5, 2.9, 3.0, 7.0], np.float32)
    # range [-1, 3] on uint8: scale 4/255, zero point round(255/4) = 64; 7 clips to 3
    scale = np.float32(4.0 / 255)
    expected = (np.clip(np.round(x / scale) + 64, 0, 255) - 64) * scale
    np.testing.assert_allclose(quantize_dequantize(x, -1.0, 3.0, GRIDS["uint8"]), expected,
                               rtol=1e-6)
    top = quantize_dequantize(x, -1.0, 3.0, GRIDS["uint8"])[-1]
    assert top == pytest.approx(3.0, abs=float(scale))
    # a range that excludes 0 is widened to hold it (as compute_scale_zp does)
    np.testing.assert_allclose(quantize_dequantize(np.float32([0.0]), 2.0, 4.0, GRIDS["uint8"]),
                               [0.0])


def test_candidates_and_auto_picks_the_lowest_error():
    rng = np.random.default_rng(0)
    stats = TensorStats(axis=1)
    for i in range(8):
        x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
        x[0, 0, 0, 0] = 60.0 if i % 2 else 0.0  # a rare outlier (1 in 2048 values)
        stats.update(x)
    assert stats.low < -3 and stats.high == 60.0
    cands = candidate_ranges(stats, GRIDS["uint8"])
    assert cands["minmax"] == (stats.low, 60.0)
    assert cands["entropy"][1] < 10.0  # entropy clips the outlier
    # MSE keeps it (clipping 1 value in 2048 by ~50 costs more than the finer grid saves)
    assert cands["mse"][1] > 50.0
    choice = choose_range(stats, "auto", GRIDS["uint8"])
    assert choice.errors[choice.method] == min(choice.errors.values())
    assert choice.errors["entropy"] > 10 * choice.errors[choice.method]
    named = choose_range(stats, "percentile", GRIDS["uint8"], percentile=99.9)
    assert named.method == "percentile99.9" and named.high < 60.0


def test_channel_weights_shift_the_choice_toward_clipping_a_weakly_read_channel():
    rng = np.random.default_rng(1)
    stats = TensorStats(axis=1)
    for _ in range(8):
        x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
        x[0, 0] *= 40.0  # channel 0 is 40x wider than the others
        stats.update(x)
    grid = GRIDS["int8"]
    weak = np.array([1e-4, 1.0, 1.0, 1.0])  # the consumer barely reads channel 0
    plain = choose_range(stats, "auto", grid)
    weighted = choose_range(stats, "auto", grid, weak)
    assert weighted.high < 0.5 * plain.high


# -- ONNX Runtime: the overrides reach the artifact -------------------------------------------

def test_a_chosen_range_is_the_scale_in_the_onnx_file(built):
    _model, quantize = built
    art, _ = quantize(range_method="mse", latency_check=False)
    ranges = art.info["quantization"]["ranges"]
    assert ranges["range_method"] == "mse" and ranges["chosen"] == {"mse": ranges["tensors"]}
    # conv2's input: the ReLU of the spiky conv1 (clipped by the MSE range)
    tensor = "relu"
    chosen = ranges["per_tensor"][tensor]
    scale, zero, _ = _qdq_params(art.path, tensor)
    lo, hi = min(chosen["rmin"], 0.0), max(chosen["rmax"], 0.0)
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert zero == round(-lo / ((hi - lo) / 255))
    assert chosen["rmax"] < 50.0  # far under the min-max range (the spikes reach ~130)


def test_auto_beats_min_max_on_a_model_with_an_outlier_activation(built):
    model, quantize = built
    art_mm, sess_mm = quantize(range_method="minmax", latency_check=False)
    art_auto, sess_auto = quantize(range_method="auto", latency_check=False)
    art_rt, sess_rt = quantize(latency_check=False)  # the runtime's own min-max
    base, auto = _sqnr(model, sess_mm), _sqnr(model, sess_auto)
    assert _sqnr(model, sess_rt) == pytest.approx(base, abs=0.05)  # same ranges as ORT's
    assert auto >= base + 8.0, (base, auto)
    ranges = art_auto.info["quantization"]["ranges"]
    assert sum(ranges["chosen"].values()) == ranges["tensors"]
    assert set(ranges["chosen"]) - {"minmax"}  # some tensor took another candidate
    search = ranges["search"]
    assert search["relative_error_chosen"] < search["relative_error_minmax"] / 4
    # checked against ORT's own min-max build on the calibration batches the search left out
    guard = ranges["guard"]
    assert guard["held_out"] and guard["batches"] == 8 and guard["kept"] == "auto"
    assert guard["sqnr_auto_db"] > guard["sqnr_minmax_db"] + 8.0
    assert ranges["applied"] is True
    assert art_rt.info["quantization"]["ranges"] is None


@pytest.mark.slow
def test_litert_pt2e_takes_the_chosen_ranges_as_fixed_observers(tmp_path):
    torch.set_num_threads(1)
    from edgekit.backends import get_backend
    from edgekit.backends._ranges import _scale_zero

    be = get_backend("tflite")
    model, cal = _spiky(), _data(16, 0)
    ex = (torch.from_numpy(cal[0][0]),)
    results = {}
    for method in ("runtime", "auto"):
        art = be.quantize(model, ex, tmp_path / method, input_names=["x"], output_names=["y"],
                          options={}, calibration=cal, config=QuantConfig(range_method=method))
        sess = be.load(art, threads=1, options={"io": "float"})
        results[method] = (art, _sqnr(model, sess))
    art, auto = results["auto"]
    assert auto >= results["runtime"][1] + 8.0, (results["runtime"][1], auto)
    ranges = art.info["quantization"]["ranges"]
    assert sum(ranges["chosen"].values()) == ranges["tensors"] >= 3
    # the clipped range of conv2's input is a tensor scale in the .tflite file
    clipped = [r for r in ranges["per_tensor"].values() if r["method"] != "minmax"]
    assert clipped
    from ai_edge_litert.interpreter import Interpreter

    scales = [d["quantization"][0] for d in Interpreter(model_path=str(art.path))
              .get_tensor_details() if d["dtype"] == np.int8]
    for r in clipped:
        scale, _ = _scale_zero(r["rmin"], r["rmax"], GRIDS["int8"])
        assert any(abs(s - scale) <= 1e-6 * scale for s in scales), (scale, scales)


# -- 16-bit activations ------------------------------------------------------------------------

def test_a_16bit_activation_is_16bit_in_the_artifact(built):
    import onnx

    model, quantize = built
    # 8-bit weights in both builds: with 7-bit ones (reduce_range) the weights' error hides
    # what the finer activation grid gains
    art, sess = quantize(range_method="auto", activations_16bit=["conv2"], latency_check=False,
                         reduce_range="off")
    ranges = art.info["quantization"]["ranges"]
    assert ranges["requested_16bit"] == ["relu"]  # conv2's data input
    assert ranges["activations_16bit"] == ["relu"]  # read back from the file
    scale, zero, ztype = _qdq_params(art.path, "relu")
    assert ztype == onnx.TensorProto.UINT16
    wide = ranges["per_tensor_16bit"]["relu"]
    assert scale == pytest.approx((wide["rmax"] - min(wide["rmin"], 0.0)) / 65535, rel=1e-6)
    assert scale < wide["rmax"] / 255 / 200  # a 16-bit step, not an 8-bit one
    rows = {r["module"]: r["precision"] for r in art.info["quantization"]["layers"]}
    assert rows["conv2"] == "int16" and rows["head"] == "int8"
    # ORT's CPU EP computes the layers around a 16-bit tensor in float, and says so
    assert ranges["cpu_execution"]["float_compute_nodes"]
    art8, sess8 = quantize(range_method="auto", latency_check=False, reduce_range="off")
    assert _sqnr(model, sess) > _sqnr(model, sess8) + 1.0


def test_16bit_by_count_takes_the_most_sensitive_and_auto_records_its_timing(built):
    _model, quantize = built
    art, _ = quantize(activations_16bit=1, latency_check=False)
    ranges = art.info["quantization"]["ranges"]
    ranked = [r["tensor"] for r in ranges["sensitivity_16bit"]]
    assert ranges["activations_16bit"] == ranked[:1]
    sqnrs = [r["sqnr8_db"] for r in ranges["sensitivity_16bit"]]
    assert sqnrs == sorted(sqnrs)
    art, _ = quantize(activations_16bit="auto", latency_check=False, latency_runs=10,
                      extra={"sqnr_16bit_db": 200.0, "max_16bit": 2})
    choice = art.info["quantization"]["ranges"]["activations_16bit_choice"]
    assert choice["candidates"] == ranked[:2]
    assert choice["trials"] and all(t["int8_ms"] > 0 and t["mixed_ms"] > 0
                                    for t in choice["trials"])
    # what the file holds is what the latency choice kept
    assert art.info["quantization"]["ranges"]["activations_16bit"] == sorted(choice["chosen"])
    kept = choice["chosen"]
    assert not kept or choice["trials"][-1]["ratio"] <= choice["max_slowdown"]


def test_16bit_for_an_unknown_layer_names_the_candidates(built):
    _model, quantize = built
    with pytest.raises(UsageError, match=r"activations_16bit names layer\(s\) \['conv9'\]") as e:
        quantize(activations_16bit=["conv9"], latency_check=False)
    assert "conv1, conv2, head" in str(e.value)


# -- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    (-1, "activations_16bit = -1 must be at least 0"),
    (True, "activations_16bit must be a count, a list of layer names, 'all' or 'auto', got True"),
    ("most", "activations_16bit = 'most' is not 'all' or 'auto'"),
    ([3], "activations_16bit must list layer names"),
    (1.5, "activations_16bit must be a count, a list of layer names, 'all' or 'auto', got float"),
])
def test_bad_activations_16bit_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match="recipe r.toml \\[quantization\\]: " + message):
        QuantConfig.from_table({"activations_16bit": value}, "recipe r.toml [quantization]")
    with pytest.raises(UsageError, match=message):
        QuantConfig(activations_16bit=value)


def test_range_method_is_checked_and_recorded():
    with pytest.raises(ConfigError, match="range_method = 'best' is not one of 'runtime', "
                       "'minmax', 'percentile', 'mse', 'entropy', 'auto'"):
        QuantConfig.from_table({"range_method": "best"}, "profile p.toml [quantization]")
    with pytest.raises(UsageError, match="range_method 'best' is not one of"):
        QuantConfig(range_method="best")
    cfg = QuantConfig.from_table({"range_method": "auto", "activations_16bit": ["conv2"]}, "t")
    assert cfg.activations_16bit == ("conv2",)
    assert json.loads(json.dumps(cfg.to_json()))["activations_16bit"] == ["conv2"]
    assert QuantConfig().range_method == "runtime" and QuantConfig().activations_16bit == 0
    with pytest.raises(UsageError, match="extra 'max_16bit_slowdown' must be a positive number"):
        QuantConfig(extra={"max_16bit_slowdown": "x"}).extra_number("max_16bit_slowdown", 1.1)


def _scale_model(path, factor: float) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [factor])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))


def test_auto_falls_back_to_min_max_when_it_loses_on_held_out_batches(tmp_path):
    from edgekit.backends.onnxruntime_int8 import _guard

    ref, chosen = tmp_path / "ref.onnx", tmp_path / "chosen.onnx"
    _scale_model(ref, 1.0)
    _scale_model(chosen, 1.1)  # "auto": 10% off
    batches = [[np.full((1, 4), i + 1.0, np.float32)] for i in range(6)]
    guard = _guard(ref, chosen, lambda out: _scale_model(out, 1.01), ["x"], batches, 4)
    assert guard["kept"] == "minmax" and guard["batches"] == 2 and guard["held_out"]
    assert guard["sqnr_auto_db"] == pytest.approx(20.0, abs=0.01)  # 10 log10(1 / 0.1**2)
    assert guard["sqnr_minmax_db"] == pytest.approx(40.0, abs=0.01)
    # the min-max model replaced the chosen one
    import onnxruntime as ort

    y = ort.InferenceSession(str(chosen)).run(None, {"x": np.ones((1, 4), np.float32)})[0]
    np.testing.assert_allclose(y, 1.01, rtol=1e-6)
    # all batches searched: the check runs on them all, and says it is not held out
    _scale_model(chosen, 1.001)
    guard = _guard(ref, chosen, lambda out: _scale_model(out, 1.01), ["x"], batches, 8)
    assert guard == {"batches": 6, "held_out": False, "sqnr_auto_db": pytest.approx(60.0, abs=0.01),
                     "sqnr_minmax_db": pytest.approx(40.0, abs=0.01), "kept": "auto"}


def test_a_build_that_misses_its_gate_tries_ranges_chosen_by_error(tmp_path):
    """With the fallback off, a build whose calibrator ranges miss the gate is rebuilt with
    per-tensor ranges chosen by error (every layer still int8) before it gives up."""
    from edgekit.errors import QuantizationError
    from edgekit.pipeline import compress

    torch.set_num_threads(1)
    model, cal = _spiky(), _data(24, 0)
    with torch.no_grad():  # spikes ten times higher (~1300): min-max spends the grid on them
        model.conv1.weight[0] *= 10.0
        model.conv1.bias[0] *= 10.0
    # the spike as it is (equalization would spread it): what the calibrator ranges miss;
    # 7-bit weights where this CPU's u8s8 kernels saturate (no VNNI: 8-bit weights collapse
    # the output there, a different failure from the one this test is about)
    base = {"fallback": False, "latency_check": False, "reduce_range": "auto", "equalize": False,
            "bias_correction": False}

    def build(name, **cfg):
        compress(model, (torch.from_numpy(cal[0][0]),), targets=[ORT], out_dir=tmp_path / name,
                 calibration=cal, input_names=["x"], output_names=["y"], progress=False,
                 quantization={**base, **cfg})
        return json.loads((tmp_path / name / "manifest.json").read_text())["targets"][ORT][
            "quantization"]

    # min-max ranges asked for explicitly: no alternative to try, the gate refuses
    with pytest.raises(QuantizationError, match="held-out fidelity against fp32"):
        build("minmax", range_method="minmax")
    # the calibrator's ranges (the default): the same miss, then the alternative passes
    q = build("default")
    first, second = q["attempts"][:2]
    assert first["keep_float"] == [] and "passed" not in first
    assert second == {"config": {"range_method": "auto"}, "keep_float": [], "passed": True,
                      "score": None}
    assert q["accuracy_alternative"].startswith("per-tensor ranges chosen by error")
    assert q["decisions"]["config"]["range_method"] == "auto"
    assert q["float_layers"] == [] and {r["precision"] for r in q["layers"]} == {"int8"}
    gate = q["heldout_fidelity"]["outputs"][0]
    assert gate["top1_agreement"] >= 0.8 and gate["sqnr_db"] >= 8.0


def test_a_range_read_only_by_a_flat_activation_is_cut_where_it_goes_flat():
    """Values below -3 all give hardswish 0: a range that reaches -77 spends most of its grid
    on them. With ``active`` the candidates are cut to [-3, max] (lossless), and the error
    after the hardswish falls."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, 20000), rng.uniform(-80, -3, 4000),
                        rng.uniform(3, 40, 400)]).astype(np.float32).reshape(1, -1)
    st = TensorStats(None)
    st.update(x)

    def hswish(v):
        return v * np.clip(v + 3, 0, 6) / 6

    def err(c):
        q = quantize_dequantize(x, c.low, c.high, GRIDS["int8"])
        return float(np.mean((hswish(q) - hswish(x)) ** 2))

    plain = choose_range(st, "minmax", GRIDS["int8"])
    cut = choose_range(st, "minmax", GRIDS["int8"], active=(-3.0, np.inf))
    step = (plain.high + 3.0) / 255
    # one grid step past the cut: the zero point's rounding cannot lift the grid above -3
    assert plain.low < -70 and cut.low == pytest.approx(-3.0 - step) and cut.high == plain.high
    assert err(cut) < 0.25 * err(plain), (err(cut), err(plain))
    assert choose_range(st, "auto", GRIDS["int8"], active=(-3.0, np.inf)).low >= -3.0 - step - 1e-6


@pytest.mark.parametrize("high", [float(h) for h in np.linspace(4.0, 30.0, 27)])
def test_a_cut_grid_reaches_the_flat_region_whatever_the_zero_point_rounding(high):
    """Cut exactly at -3, the integer zero point can put a grid's lowest value above -3
    (uint8 on [-3, 28.29]: -2.94), where a hardswish gate reads one step above 0 and every
    value below -3 (0 in float) comes out as about -0.035, the same sign everywhere: a bias
    a pool or a wide linear layer after it sums up. The grid of the cut range reaches -3 on
    both grids, and a gate input cut to [-3, 3] reaches 3 (a gate of exactly 1)."""
    from edgekit.backends._ranges import _scale_zero

    scale, zero = _scale_zero(-3.0, 28.29, GRIDS["uint8"])  # the range cut exactly at -3
    assert round(-zero * scale, 2) == -2.94  # the grid stops short of -3
    st = TensorStats(None)
    st.update(np.array([[-40.0, -1.0, 0.5, high]], np.float32))
    gate = TensorStats(None)
    gate.update(np.array([[-200.0, 0.2, 150.0]], np.float32))
    for grid in (GRIDS["uint8"], GRIDS["int8"]):
        c = choose_range(st, "minmax", grid, active=(-3.0, np.inf))
        scale, zero = _scale_zero(c.low, c.high, grid)
        assert (grid.qmin - zero) * scale <= -3.0, (grid.name, c.low, c.high, scale, zero)
        g = choose_range(gate, "minmax", grid, active=(-3.0, 3.0))
        scale, zero = _scale_zero(g.low, g.high, grid)
        assert (grid.qmin - zero) * scale <= -3.0 and (grid.qmax - zero) * scale >= 3.0, \
            (grid.name, g.low, g.high, scale, zero)


class _ConvHardswish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Hardswish()
        self.conv2 = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.conv1.bias.copy_(torch.tensor([-30.0, 0, 0, 0, 0, 0, 0, 0]))

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


def test_litert_cuts_a_hardswish_input_range_at_minus_three(tmp_path):
    """A conv whose output only a Hardswish reads: the chosen range stops at -3 (channel 0
    sits near -30, all of it 0 after the Hardswish), recorded and in the file."""
    torch.set_num_threads(1)
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.backends import get_backend
    from edgekit.backends._ranges import _scale_zero

    model = _ConvHardswish().eval()
    g = torch.Generator().manual_seed(1)
    cal = [[torch.randn(1, 3, 8, 8, generator=g).numpy()] for _ in range(8)]
    be = get_backend("tflite")
    art = be.quantize(model, (torch.from_numpy(cal[0][0]),), tmp_path / "q", input_names=["x"],
                      output_names=["y"], options={}, calibration=cal,
                      config=QuantConfig(range_method="minmax"))
    ranges = art.info["quantization"]["ranges"]
    assert ranges["clipped_to_consumer"] == 1
    assert [r["cut_to_consumer"] for r in ranges["per_tensor"].values()
            if "cut_to_consumer" in r] == [[-3.0, None]]
    with torch.no_grad():
        pre = model.conv1(torch.from_numpy(np.concatenate([c[0] for c in cal])))
    assert float(pre.min()) < -25
    lows = sorted(r["rmin"] for r in ranges["per_tensor"].values())
    low = -3.0 - (float(pre.max()) + 3.0) / 255  # a grid step past the cut
    assert low in [pytest.approx(v, rel=1e-4) for v in lows], lows
    scale, _ = _scale_zero(low, float(pre.max()), GRIDS["int8"])
    scales = [d["quantization"][0] for d in Interpreter(model_path=str(art.path))
              .get_tensor_details() if d["dtype"] == np.int8]
    assert any(abs(s - scale) <= 1e-3 * scale for s in scales), (scale, scales)
    sess = be.load(art, threads=1, options={"io": "float"})
    assert _random_sqnr(model, sess, g, 8) > 25.0


def _random_sqnr(model: nn.Module, session, g: torch.Generator, n: int) -> float:
    """SQNR (dB) of ``session`` against ``model`` on ``n`` fresh 1x3x8x8 normal inputs."""
    num = den = 0.0
    for _ in range(n):
        x = torch.randn(1, 3, 8, 8, generator=g)
        with torch.no_grad():
            ref = model(x).numpy().astype(np.float64)
        out = session.run([x.numpy()])[0].astype(np.float64)
        num, den = num + float((ref ** 2).sum()), den + float(((out - ref) ** 2).sum())
    return float(10 * np.log10(num / den))


class _SqueezeExcite(nn.Module):
    """A squeeze-excitation block as MobileNetV3 ends it (``fc2 -> Hardsigmoid -> mul``), a
    Hardswish, a ReLU6 and a tensor read by two different ops. ``fc2``'s output spreads over
    about [-200, 200] (biases of +-200): Hardsigmoid tells apart only [-3, 3] of it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.gate = nn.Hardsigmoid()
        self.act = nn.Hardswish()
        self.proj = nn.Conv2d(8, 8, 1)
        self.clip = nn.ReLU6()
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.fc2.weight.mul_(0.3)
            self.fc2.bias.copy_(torch.tensor([200.0, -200, 0.5, -0.5, 1.0, -1.0, 0.2, -0.2]))

    def forward(self, x):
        h = self.act(self.conv(x))
        s = self.gate(self.fc2(torch.relu(self.fc1(h.mean((2, 3), keepdim=True)))))
        p = self.proj(h * s)
        return self.head(self.clip(p) + p)


def test_onnx_readers_flat_outside_an_interval_give_it(tmp_path):
    """Per tensor of an exported graph: HardSigmoid's input [-3, 3]; Hardswish's input (as
    exported: x * HardSigmoid(x)) from -3 up; Clip(0, 6) its bounds; a tensor also read by an
    Add (or a graph output) no interval."""
    import onnx

    from edgekit.backends import get_backend
    from edgekit.backends.onnx_active_ranges import active_intervals

    model = _SqueezeExcite().eval()
    art = get_backend("onnxruntime").export(model, (torch.randn(1, 3, 8, 8),), tmp_path,
                                            input_names=["x"], output_names=["y"], options={})
    proto = onnx.load(str(art.path))
    nodes = list(proto.graph.node)
    made = {o: n for n in nodes for o in n.output}
    tensors = [o for n in nodes for o in n.output]
    got = active_intervals(proto, tensors)
    gate_in = next(n.input[0] for n in nodes if n.op_type == "HardSigmoid"
                   and made[n.input[0]].op_type == "Conv"
                   and not any(m.op_type == "Mul" and n.input[0] in m.input for m in nodes))
    assert got[gate_in] == pytest.approx((-3.0, 3.0))
    first_conv = next(n for n in nodes if n.op_type == "Conv").output[0]
    assert got[first_conv][0] == pytest.approx(-3.0) and got[first_conv][1] == np.inf
    proj = [n for n in nodes if n.op_type == "Conv"][-2].output[0]
    assert proj not in got  # read by Clip and Add
    assert "y" not in got
    clip_in = next(n.input[0] for n in nodes if n.op_type == "Clip")
    assert clip_in == proj


def test_onnxruntime_cuts_a_squeeze_excite_gate_range_to_minus_three_three(tmp_path):
    """ONNX Runtime with per-tensor ranges: fc2's output, read only by HardSigmoid, is
    quantized on [-3, 3] (recorded, the file's scale is that grid's) instead of its ~400-wide
    min-max range, and the int8 outputs are closer to fp32 than ONNX Runtime's own min-max
    calibration's."""
    from edgekit.backends import get_backend

    torch.set_num_threads(1)
    model = _SqueezeExcite().eval()
    g = torch.Generator().manual_seed(1)
    cal = [[torch.randn(1, 3, 8, 8, generator=g).numpy()] for _ in range(16)]
    be = get_backend("onnxruntime")
    ex = (torch.from_numpy(cal[0][0]),)
    fp32 = be.export(model, ex, tmp_path / "fp32", input_names=["x"], output_names=["y"],
                     options={})

    def build(name, **config):
        art = be.quantize(model, ex, tmp_path / name, input_names=["x"], output_names=["y"],
                          options={}, calibration=cal, config=QuantConfig(**config), fp32=fp32)
        return art, be.load(art, threads=1, options={})

    plain, plain_sess = build("runtime")
    cut, cut_sess = build("minmax", range_method="minmax")
    ranges = cut.info["quantization"]["ranges"]
    gated = {t: r for t, r in ranges["per_tensor"].items()
             if r.get("cut_to_consumer") == [pytest.approx(-3.0), pytest.approx(3.0)]}
    assert len(gated) == 1, ranges["per_tensor"]
    (tensor, rec), = gated.items()
    step = 6.0 / 255  # the cut range reaches a grid step past each end
    assert rec["rmin"] == pytest.approx(-3.0 - step) and rec["rmax"] == pytest.approx(3.0 + step)
    assert ranges["clipped_to_consumer"] == 1  # the Hardswish's input stays above -3 here
    scale, _, _ = _qdq_params(cut.path, tensor)
    assert scale == pytest.approx((6.0 + 2 * step) / 255, rel=1e-3)
    wide, _, _ = _qdq_params(plain.path, tensor)
    assert wide > 50 * scale  # min-max over about [-200, 200]
    before, after = _random_sqnr(model, plain_sess, g, 16), _random_sqnr(model, cut_sess, g, 16)
    assert after > before + 6.0, (before, after)
