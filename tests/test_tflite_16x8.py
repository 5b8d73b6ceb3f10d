"""LiteRT's 16x8 mode (int16 activations, int8 weights): ``activations_16bit = "all"`` and
``"auto"`` on LiteRT, and the int64 biases its convolutions need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError, QuantizationError
from edgekit.quantize import QuantConfig

pytest.importorskip("litert_torch", reason="LiteRT int8 needs litert-torch (extra tflite)")


class Mixed(nn.Module):
    """A conv, a depthwise conv (TFLite's DEPTHWISE_CONV_2D for both: one input channel), a
    residual add, a 1x1 conv into a sigmoid gate, pooling, a linear head and a softmax: the
    ops whose 16x8 kernels and fixed output ranges the build has to get right."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c2 = nn.Conv2d(8, 16, 1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.dw(x)) + x
        x = torch.sigmoid(self.c2(x)) * x.mean(1, keepdim=True)
        x = torch.relu(self.c3(x))
        x = nn.functional.avg_pool2d(x, 2).mean((2, 3))
        return torch.softmax(self.fc(x), -1)


def _data(n: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((1, 1, 16, 16)).astype(np.float32)] for _ in range(n)]


def _builder(model: nn.Module, root):
    """build(name, **config) -> ``model``'s LiteRT int8 artifact in ``root / name``,
    calibrated on 16 random inputs."""
    from edgekit.backends import get_backend

    torch.set_num_threads(1)
    be = get_backend("tflite")
    cal = _data(16, 0)
    ex = (torch.from_numpy(cal[0][0]),)

    def build(name: str, **config):
        return be.quantize(model, ex, root / name, input_names=["x"], output_names=["y"],
                           options={}, calibration=cal, config=QuantConfig(**config))

    return be, build


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


@pytest.fixture(scope="module")
def litert(tmp_path_factory):
    """quantize(**config) -> (artifact, float-I/O session, SQNR dB against PyTorch on unseen
    inputs), for the Mixed model on LiteRT."""
    model = _seeded(Mixed)
    be, build = _builder(model, tmp_path_factory.mktemp("litert16"))
    count = [0]

    def quantize(**config):
        count[0] += 1
        art = build(f"q{count[0]}", **config)
        sess = be.load(art, threads=1, options={"io": "float"})
        num = den = 0.0
        for (x,) in _data(16, 1):
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy().astype(np.float64)
            out = sess.run([x])[0].astype(np.float64)
            num += float((ref ** 2).sum())
            den += float(((out - ref) ** 2).sum())
        return art, sess, 10 * np.log10(num / den)

    return quantize


def _tensor_types(path) -> dict[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return {d["name"]: np.dtype(d["dtype"]).name for d in interp.get_tensor_details()}


def test_all_16bit_runs_every_layer_on_int16_data_with_int64_biases(litert):
    art8, _, sqnr8 = litert()
    art16, sess16, sqnr16 = litert(activations_16bit="all")
    q = art16.info["quantization"]
    # what executes, read back from the file: every compute layer on int16 data
    layers = q["layers"]
    assert layers and {r["precision"] for r in layers} == {"int16"}, layers
    assert {r["precision"] for r in art8.info["quantization"]["layers"]} == {"int8"}
    assert q["activations_16bit"]["int16_layers"] == len(layers)
    assert "16x8" in q["quantizer"]
    # the biases are int64 in the file (litert-torch writes int32, which the 16x8 CONV_2D
    # kernel misreads and DEPTHWISE_CONV_2D refuses)
    biased = sum(n for op, n in q["ops"].items()
                 if op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    assert q["activations_16bit"]["int64_biases"] == biased == 5
    types = _tensor_types(art16.path)
    assert list(types.values()).count("int64") >= biased
    assert sess16.inputs[0].dtype == "float32"  # io="float": int16 I/O converted at the edge
    # the finer activation grid shows in the outputs (weights are int8 in both)
    assert sqnr16 > sqnr8 + 6.0, (sqnr8, sqnr16)
    assert sqnr16 > 50.0


def test_int32_biases_are_what_breaks_16x8_convolutions(litert, tmp_path):
    """The same file with its int64 biases put back to int32, as litert-torch writes them:
    the depthwise convolution refuses to prepare."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as fu

    from edgekit.backends.tflite_16x8 import widen_16x8_biases

    art, _, _ = litert(activations_16bit="all")
    model = fu.read_model(str(art.path))
    narrowed = 0
    for graph in model.subgraphs:
        for t in graph.tensors:
            if t.type == fb.TensorType.INT64 and t.buffer and model.buffers[t.buffer].data \
                    is not None:
                buf = model.buffers[t.buffer]
                vals = np.frombuffer(bytes(bytearray(buf.data)), "<i8").astype("<i4")
                buf.data = np.frombuffer(vals.tobytes(), np.uint8)
                t.type = fb.TensorType.INT32
                narrowed += 1
    assert narrowed == 5
    bad = tmp_path / "int32.tflite"
    fu.write_model(model, str(bad))
    with pytest.raises(RuntimeError, match="INT32 != INT64"):
        Interpreter(model_path=str(bad)).allocate_tensors()
    assert len(widen_16x8_biases(bad)) == 5  # and the rewrite mends it
    Interpreter(model_path=str(bad)).allocate_tensors()


class Faint(nn.Module):
    """Activations of ~1e-4 into a head with ordinary biases: at input scale x weight scale
    (~1e-11) the biases do not fit int32, and litert-torch's converter saturates them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.conv.weight.mul_(1e-4)
            self.conv.bias.zero_()
            self.head.weight.mul_(1e-2)
            self.head.bias.copy_(torch.linspace(-0.1, 0.1, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_biases_the_converter_saturated_are_recomputed_from_the_graph(tmp_path):
    from edgekit.backends.tflite_16x8 import _unsaturated

    model = _seeded(Faint)
    be, build = _builder(model, tmp_path)
    art = build("q", activations_16bit="all", equalize=False, bias_correction=False)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(art.path))
    head = [d for d in interp.get_tensor_details()
            if np.dtype(d["dtype"]) == np.int64 and "Linear_head" in d["name"]]
    assert len(head) == 1
    interp.allocate_tensors()
    values = interp.get_tensor(head[0]["index"])
    scales = head[0]["quantization_parameters"]["scales"]
    assert np.abs(values).max() > 2 ** 31  # beyond int32: recomputed, not saturated
    np.testing.assert_allclose(values * scales, np.linspace(-0.1, 0.1, 10), rtol=1e-5,
                               atol=1e-12)
    sess = be.load(art, threads=1, options={"io": "float"})
    x = _data(1, 1)[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x[0])).numpy()
    np.testing.assert_allclose(sess.run(x)[0], ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    # a saturated bias with no float bias to recompute it from is an error naming the op
    sat = np.array([5, 2 ** 31 - 1], np.int64)
    with pytest.raises(QuantizationError, match=r"FULLY_CONNECTED.*1 bias value\(s\) do not "
                       "fit int32") as e:
        _unsaturated(sat, np.array([1e-11, 1e-11]), [np.array([1.0, 2.0, 3.0])],
                     "FULLY_CONNECTED (bias 'b')")
    assert "activations_16bit = 0" in e.value.hint


class Joined(nn.Module):
    """Two branches concatenated: litert-torch's converter has no int16 concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))


def test_an_op_without_int16_form_is_named_and_auto_keeps_8bit(tmp_path):
    _be, quantize = _builder(_seeded(Joined), tmp_path)

    with pytest.raises(ConfigError, match=r"no int16 tfl\.concatenation \(the op at "
                       r"\S*test_tflite_16x8\.py:\d+\)") as e:
        quantize("all", activations_16bit="all")
    assert "'auto'" in e.value.hint
    assert str(Path.cwd()) not in str(e.value)  # a path from the repository, not this machine
    art = quantize("auto", activations_16bit="auto", extra={"sqnr_16bit_db": 200.0})
    rec = art.info["quantization"]["activations_16bit"]
    assert rec["chosen"] is False and rec["reason"].startswith("the 16x8 build failed: "
                                                               "ConfigError")
    assert {r["precision"] for r in art.info["quantization"]["layers"]} == {"int8"}


def test_auto_16x8_is_kept_only_within_the_latency_limit(litert):
    # 8-bit outputs above the threshold: no 16x8 build at all
    art, _, _ = litert(activations_16bit="auto", extra={"sqnr_16bit_db": 10.0})
    rec = art.info["quantization"]["activations_16bit"]
    assert rec["chosen"] is False and "at or above 10 dB" in rec["reason"]
    assert "int16_ms" not in rec and rec["int16_layers"] == 0
    # under the threshold, the 16x8 file is timed against the 8-bit one: TFLite's int16
    # kernels are slower than XNNPACK's int8, so a 1.10x limit keeps the 8-bit file ...
    art, _, _ = litert(activations_16bit="auto", latency_runs=20,
                       extra={"sqnr_16bit_db": 200.0})
    rec = art.info["quantization"]["activations_16bit"]
    assert rec["int8_ms"] > 0 and rec["int16_ms"] > 0
    assert rec["int16_sqnr_db"] > rec["int8_sqnr_db"]
    assert rec["chosen"] is (rec["ratio"] <= 1.10)
    if not rec["chosen"]:
        assert "over the 1.1x limit" in rec["reason"] and rec["int16_layers"] == 0
    # ... and a limit it meets keeps the 16x8 file, which the manifest reads back
    art, _, sqnr = litert(activations_16bit="auto", latency_runs=20,
                          extra={"sqnr_16bit_db": 200.0, "max_16bit_slowdown": 1000.0})
    rec = art.info["quantization"]["activations_16bit"]
    assert rec["chosen"] is True and rec["int16_layers"] == len(art.info["quantization"]
                                                                ["layers"])
    assert sqnr > 50.0


def test_a_16bit_count_or_layer_list_on_litert_is_a_config_error(litert):
    for value in (2, ("c1",)):
        with pytest.raises(ConfigError, match="LiteRT's 16-bit activations are whole-model") \
                as e:
            litert(activations_16bit=value)
        assert "'all'" in e.value.hint and "'auto'" in e.value.hint


def test_all_16bit_on_onnxruntime_takes_every_compute_input(tmp_path):
    from edgekit.backends import get_backend

    torch.set_num_threads(1)
    be = get_backend("onnxruntime")
    model = _seeded(Mixed)
    cal = _data(16, 0)
    ex = (torch.from_numpy(cal[0][0]),)
    fp32 = be.export(model, ex, tmp_path / "fp32", input_names=["x"], output_names=["y"],
                     options={})
    art = be.quantize(model, ex, tmp_path / "q", input_names=["x"], output_names=["y"],
                      options={}, calibration=cal, fp32=fp32,
                      config=QuantConfig(activations_16bit="all", reduce_range="off"))
    ranges = art.info["quantization"]["ranges"]
    ranked = [r["tensor"] for r in ranges["sensitivity_16bit"]]
    assert len(ranked) >= 4
    assert ranges["activations_16bit"] == sorted(ranked)  # read back from the file
