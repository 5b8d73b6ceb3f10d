"""`edgekit explain`: per-layer diff of each runtime's own tensors against PyTorch.

The broken model: ``conv1``'s channel 3 has 40x weights and a bias of 80, so its output holds
one channel about 100x larger than the other seven; ``conv2`` nearly ignores that channel
(weights x0.01). int8 activations quantize ``conv1``'s output per tensor: the outlier sets the
range and the seven ordinary channels round to a few levels. The layer that breaks is
``conv1`` itself, at its own output tensor (not ``conv2``, which merely consumes the damage):
that tensor's SQNR stays high (the outlier dominates its energy) while its median channel's
falls to single-digit dB, and every runtime's tensor there shows it.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import Artifact, get_backend
from edgekit.cli import main
from edgekit.errors import BundleError, ShapeError, UnknownNameError, UsageError
from edgekit.explain import culprit_layers, explain
from edgekit.explain.layers import LayerNumbers, first_jump
from edgekit.explain.mapping import align
from edgekit.explain.tensors import RuntimeTensor, base_tensor_name, module_from_location
from edgekit.measure.metrics import channel_sqnr_db, relative_error, sqnr_db

INT8 = ["x86-onnxruntime-int8", "x86-openvino-int8", "arm64-tflite-int8"]
FP32 = ["x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32"]
RUNTIMES = {"onnxruntime", "openvino", "tflite"}


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.conv1.weight[3] *= 40.0
            self.conv1.bias[3] = 80.0
            self.conv2.weight[:, 3] *= 1e-2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.relu(self.conv2(self.conv1(x))))))


def broken_model() -> nn.Module:
    torch.manual_seed(0)
    return Broken().eval()


def _need(backends):
    missing = [b for b in backends if get_backend(b).available() is not None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="module")
def broken_bundle(tmp_path_factory):
    _need(RUNTIMES)
    from edgekit.pipeline import compress

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    calib = torch.rand(16, 1, 8, 8, generator=gen).numpy()
    root = tmp_path_factory.mktemp("explain") / "broken"
    x = torch.rand(1, 1, 8, 8, generator=gen)
    compress(broken_model(), x, targets=INT8 + FP32, out_dir=root, calibration=calib,
             input_names=["x"], output_names=["y"], progress=False,
             # explain compares with the model as given: equalization rescales channels
             quantization={"latency_check": False, "equalize": False,
                           "bias_correction": False})
    return root


@pytest.fixture(scope="module")
def broken_report(broken_bundle):
    return explain(broken_model(), bundle=broken_bundle, progress=False)


@pytest.mark.slow
def test_the_outlier_is_in_conv1s_output():
    # the premise of the test model, measured in PyTorch
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = broken_model().conv1(x).detach().numpy()
    peak = np.abs(out).max(axis=(0, 2, 3))
    assert peak.argmax() == 3 and peak[3] > 50 * np.delete(peak, 3).max()


@pytest.mark.slow
@pytest.mark.parametrize("target", INT8)
def test_int8_names_the_broken_layer_first(broken_report, target):
    t = broken_report.target(target)
    assert t.status == "ok"
    assert t.jump is not None and t.jump.module == "conv1"
    assert t.culprit_names()[0] == "conv1"
    row = t.rows[0]
    assert row.module == "conv1" and row.precision == "int8"
    # the tensor looks fine as a whole; its ordinary channels are drowned
    assert row.sqnr_db > 35 and row.channel_sqnr_db < 12
    assert row.sqnr_db - row.channel_sqnr_db > 25
    assert "outlier channels" in t.suggestion["symptom"]
    assert "keep_float': ['conv1']" in t.suggestion["action"]
    cov = t.coverage
    # OpenVINO's CPU plugin on a Xeon with AMX and VNNI runs the max-pool fused with the
    # convolution before it, leaving no tensor of its own to read (an AVX2 EPYC kept it)
    fusable = {"pool"} if target == "x86-openvino-int8" else set()
    assert cov["total"] == 6 and set(cov["unmapped"]) <= fusable
    assert cov["mapped"] == 6 - len(cov["unmapped"])
    # the end-to-end output is damaged too (int8 vs fp32 below)
    assert t.output["rel_error"] > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("target", FP32)
def test_fp32_artifacts_match_every_layer(broken_report, target):
    t = broken_report.target(target)
    assert t.jump is None
    assert t.coverage["fraction"] == 1.0
    for row in t.rows:
        assert row.mapped and row.rel_error < 1e-5, (row.module, row.rel_error)
        assert row.precision == "fp32"
    assert t.output["rel_error"] < 1e-5


@pytest.mark.slow
def test_fusions_and_layouts_are_reported(broken_report):
    # LiteRT fuses conv2 + relu into one op and keeps activations NHWC
    tfl = broken_report.target("arm64-tflite-int8")
    rows = {r.module: r for r in tfl.rows}
    assert rows["conv2"].how == "fused into relu"
    assert rows["conv1"].transform == "NHWC->NCHW"
    assert rows["flat"].how == "same tensor as pool"
    # the artifact's output tensor is renamed (serving_default_output_0): found as the output
    assert rows["fc"].how == "model output" and rows["fc"].tensor.startswith("serving_default")
    assert tfl.coverage["fused"] == ["conv2"]
    # ONNX Runtime's QDQ model: the value compared is the dequantized one the next op reads
    ort = {r.module: r for r in broken_report.target("x86-onnxruntime-int8").rows}
    assert ort["conv1"].op == "DequantizeLinear"
    table = broken_report.table()
    assert all(t in table for t in INT8 + FP32)
    conv1_line = next(line for line in table.splitlines() if line.startswith("0  conv1"))
    assert conv1_line.count("* int8") == 3  # the first jump, on every int8 target


@pytest.mark.slow
def test_bare_form_and_culprit_layers(broken_bundle):
    x = torch.rand(2, 1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    samples = [(x[0],), (x[1],)]
    path = broken_bundle / "x86-onnxruntime-int8" / "model.onnx"
    assert culprit_layers(broken_model(), path, samples, top=1) == ["conv1"]
    report = explain(broken_model(), path, samples, progress=False)
    assert report.samples == 2 and report.targets[0].jump.module == "conv1"


@pytest.mark.slow
def test_cli_writes_json_markdown_png(broken_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", str(broken_bundle), "--model", "test_explain:broken_model",
               "-t", INT8[0], "-t", FP32[0], "--json", str(out / "e.json"),
               "--markdown", str(out / "e.md"), "--plot", str(out / "e.png"), "-q"])
    assert rc == 0
    data = json.loads((out / "e.json").read_text())
    assert list(data["targets"]) == [INT8[0], FP32[0]]
    assert data["targets"][INT8[0]]["first_jump"] == "conv1"
    assert data["targets"][INT8[0]]["coverage"]["mapped"] == 6
    assert data["targets"][FP32[0]]["first_jump"] is None
    layers = data["targets"][FP32[0]]["layers"]
    assert [r["module"] for r in layers] == ["conv1", "conv2", "relu", "pool", "flat", "fc"]
    md = (out / "e.md").read_text()
    assert "- first jump: conv1" in md and "| conv1 |" in md
    png = (out / "e.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    stdout = capsys.readouterr().out
    assert "first jump: conv1" in stdout


@pytest.mark.slow
def test_a_different_model_is_refused(broken_bundle):
    other = broken_model()
    with torch.no_grad():
        other.fc.bias += 1.0
    with pytest.raises(UsageError, match="does not reproduce"):
        explain(other, bundle=broken_bundle, targets=[FP32[0]], progress=False)


# ------------------------------------------------------------------ a zoo bundle, fast
@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    _need(["onnxruntime"])
    from edgekit.api import build_zoo_model

    root = tmp_path_factory.mktemp("explain") / "cnn"
    build_zoo_model("cnn", targets=["x86-onnxruntime-fp32"], out_dir=root, train=False,
                    progress=False)
    return root


def test_zoo_bundle_rebuilds_its_model(zoo_bundle):
    import edgekit

    assert "explain" in edgekit.__all__ and "culprit_layers" in edgekit.__all__
    report = edgekit.explain(bundle=zoo_bundle, progress=False)  # the public, callable name
    t = report.target("x86-onnxruntime-fp32")
    assert t.coverage["fraction"] >= 0.95, t.coverage
    assert t.jump is None
    assert max(r.rel_error for r in t.rows if r.mapped) < 1e-5


def test_missing_bundle(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "is not an edgekit bundle: manifest.json is missing" in err
    with pytest.raises(BundleError):
        explain(bundle=tmp_path / "nope", progress=False)


def test_bad_target_name(zoo_bundle, capsys):
    with pytest.raises(UnknownNameError, match="x86-onnxruntime-fp32"):
        explain(bundle=zoo_bundle, targets=["x86-onnxruntime-fp3"], progress=False)
    assert main(["explain", str(zoo_bundle), "-t", "nope-target"]) == 2
    assert "unknown target in bundle" in capsys.readouterr().err


def test_data_with_wrong_shape(zoo_bundle, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((3, 1, 9, 9), np.float32))
    with pytest.raises(ShapeError, match=r"key 'image' holds samples of shape \[1, 9, 9\].*"
                       r"\[1, 1, 8, 8\]"):
        explain(bundle=zoo_bundle, data=bad, progress=False)
    assert main(["explain", str(zoo_bundle), "--data", str(bad)]) == 2
    assert "[N, 1, 8, 8]" in capsys.readouterr().err
    wrong_key = tmp_path / "k.npz"
    np.savez(wrong_key, x=np.zeros((3, 1, 8, 8), np.float32))
    assert main(["explain", str(zoo_bundle), "--data", str(wrong_key)]) == 2
    assert "has no key 'image'; keys present: 'x'" in capsys.readouterr().err


def test_data_file_drives_the_samples(zoo_bundle, tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, image=np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32))
    report = explain(bundle=zoo_bundle, data=good, progress=False)
    assert report.samples == 16  # capped
    assert report.inputs == str(good)
    report = explain(bundle=zoo_bundle, data=good, samples=3, progress=False)
    assert report.samples == 3


def test_executorch_is_reported_unsupported():
    from edgekit.explain.target import explain_target

    art = Artifact("executorch", root=__import__("pathlib").Path("."), files=["m.pte"],
                   inputs=[], outputs=[])
    r = explain_target("x86-executorch-int8", art, {}, [], [], [], {}, threads=1,
                        min_sqnr_db=20, jump_db=6, progress=False)
    assert r.status == "unsupported" and "intermediate tensors" in r.reason
    assert r.to_json() == {"target": "x86-executorch-int8", "backend": "executorch",
                           "precision": "fp32", "status": "unsupported", "reason": r.reason}


# ------------------------------------------------------------------ pieces
def test_names_from_metadata():
    mods = {"features.0", "features.1.conv", "fc"}
    loc = ("pkg.Net/torch.nn.modules.container.Sequential_features/"
           "torch.nn.modules.conv.Conv2d_0;3")
    assert module_from_location(loc.split(";")[0], mods) == "features.0"
    assert module_from_location("pkg.Net/x.Block_features.1/torch.nn.Conv2d_conv", mods) \
        == "features.1.conv"
    assert module_from_location("pkg.Net/torch.nn.ReLU_act", mods) is None
    assert base_tensor_name("conv2d_DequantizeLinear_Output") == "conv2d"
    assert base_tensor_name("node_conv2d_1/WithoutBiases") == "conv2d_1"
    assert base_tensor_name("relu_QuantizeLinear") == "relu"


def test_align_undoes_nhwc_and_reshape():
    v = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # NHWC, C = 5
    t = RuntimeTensor("t", "CONV_2D", 0, None, "", "fp32", [v], layout="NHWC")
    how, vals = align(t, (2, 5, 3, 4))
    assert how == "NHWC->NCHW" and np.array_equal(vals[0], v.transpose(0, 3, 1, 2))
    flat = RuntimeTensor("f", "MEAN", 1, None, "", "fp32", [np.ones((1, 16))])
    assert align(flat, (1, 16, 1, 1))[0] == "reshape"
    assert align(flat, (1, 8, 2)) is None
    # a Conv1d that LiteRT runs as CONV_2D over (N, 1, L, C)
    c1 = np.arange(1 * 1 * 20 * 32, dtype=np.float32).reshape(1, 1, 20, 32)
    conv1d = RuntimeTensor("c", "CONV_2D", 2, None, "", "fp32", [c1], layout="NHWC")
    how, vals = align(conv1d, (1, 32, 20))
    assert how == "NHWC->NCL" and np.array_equal(vals[0], c1[0, 0].T[None])


def test_a_bias_added_in_the_next_op_is_taken_off_the_reference():
    """LiteRT folds a Linear's bias into the Linear after it: the first Linear's tensor is its
    output without the bias; compared as such, not as a broken layer."""
    from edgekit.explain.layers import layer_numbers
    from edgekit.explain.mapping import map_layers
    from edgekit.explain.torch_capture import LayerCapture

    rng = np.random.default_rng(0)
    bias = rng.standard_normal(16)
    out = rng.standard_normal((2, 16)) + bias
    proj = LayerCapture("proj", "Linear", 0, [out], params=272, bias=bias, bias_axis=1)
    t = RuntimeTensor("fc", "FULLY_CONNECTED", 0, "proj", "metadata", "fp32", [out - bias])
    m = map_layers([proj], [t])[0]
    assert (m.adjust, m.how) == ("no_bias", "metadata, bias added in the next op")
    assert layer_numbers(proj, 0, m, proj, "fp32").rel_error < 1e-12
    # the whole output: as is
    t2 = RuntimeTensor("fc", "FULLY_CONNECTED", 0, "proj", "metadata", "fp32", [out])
    assert map_layers([proj], [t2])[0].adjust is None


def test_shape_rule_claims_only_values_that_agree():
    """A same-shaped value computed beside the layer (the ``a * b`` term a fusion layer reads)
    is not the layer's output; a rectified copy of it is, after a ReLU."""
    from edgekit.explain.mapping import map_layers
    from edgekit.explain.torch_capture import LayerCapture

    rng = np.random.default_rng(0)
    proj, fuse, head = (rng.standard_normal((1, n)) for n in (256, 256, 2))
    layers = [LayerCapture("proj", "Linear", 0, [proj], params=9),
              LayerCapture("fuse", "Linear", 1, [fuse], params=9),
              LayerCapture("head", "Linear", 2, [head], params=9)]
    mul = RuntimeTensor("mul", "Mul", 1, None, "", "fp32", [rng.standard_normal((1, 256))])
    relu = RuntimeTensor("relu", "Gemm", 2, None, "", "fp32", [np.maximum(fuse, 0)])
    ends = [RuntimeTensor("p", "Gemm", 0, "proj", "metadata", "fp32", [proj]),
            RuntimeTensor("h", "Gemm", 3, "head", "metadata", "fp32", [head])]
    m = {x.module: x for x in map_layers(layers, [ends[0], mul, ends[1]])}
    assert m["fuse"].tensor is None
    # the runtime fused the model's F.relu into fuse's op: compared after a ReLU, and said so
    m = {x.module: x for x in map_layers(layers, [ends[0], mul, relu, ends[1]])}
    assert (m["fuse"].tensor, m["fuse"].adjust) == (relu, "relu")
    assert m["fuse"].how == "shape, functional ReLU fused in"
    from edgekit.explain.layers import layer_numbers

    row = layer_numbers(layers[1], 1, m["fuse"], layers[1], "fp32")
    assert row.rel_error < 1e-12
    near = RuntimeTensor("fc", "Gemm", 2, None, "", "int8", [fuse + 0.3 * proj])
    m = {x.module: x for x in map_layers(layers, [ends[0], mul, near, ends[1]])}
    assert (m["fuse"].how, m["fuse"].tensor) == ("shape", near)


def test_first_jump_rule():
    def row(name, sq, ch=None):
        r = LayerNumbers(name, "Conv2d", 0, tensor=name, how="metadata")
        r.sqnr_db, r.channel_sqnr_db = sq, ch
        return r

    # gradual decline: no jump; a 6 dB drop that stays above 20 dB: no jump
    assert first_jump([row("a", 40), row("b", 34), row("c", 29)]) is None
    # below 20 dB and >= 6 dB under the previous layer
    rows = [row("a", 40), row("b", 38, 9.0), row("c", 8)]
    assert first_jump(rows).module == "b"
    # fp32-level numbers never jump
    assert first_jump([row("a", math.inf), row("b", 130.0, 131.0)]) is None
    # the first layer is compared with the 60 dB cap
    assert first_jump([row("a", 10), row("b", 3)]).module == "a"


def test_new_metrics():
    ref = np.array([[3.0, 4.0]])
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref, ref * 1.01) == pytest.approx(0.01)
    assert relative_error(ref, ref * 1.01) == pytest.approx(10 ** (-sqnr_db(ref, ref * 1.01) / 20))
    assert relative_error(np.zeros(2), np.ones(2)) == math.inf
    x = np.ones((2, 3, 4))
    y = x.copy()
    y[:, 1] += 0.1
    ch = channel_sqnr_db(x, y)
    assert ch[0] == math.inf and ch[2] == math.inf and ch[1] == pytest.approx(20.0)


def test_mapping_rules_on_a_folded_chain():
    from edgekit.explain.mapping import map_layers
    from edgekit.explain.torch_capture import LayerCapture

    rng = np.random.default_rng(0)
    conv, bn = rng.random((1, 4, 2, 2)), rng.random((1, 4, 2, 2))
    relu = np.maximum(bn, 0)
    layers = [LayerCapture("conv", "Conv2d", 0, [conv], params=20),
              LayerCapture("bn", "BatchNorm2d", 1, [bn], params=8),
              LayerCapture("relu", "ReLU", 2, [relu]),
              LayerCapture("flat", "Flatten", 3, [relu.reshape(1, 16)]),
              LayerCapture("drop", "Dropout", 4, [rng.random((1, 16))])]
    folded = RuntimeTensor("Multiply_7", "Convolution", 0, None, "", "fp32", [bn])
    act = RuntimeTensor("r", "Relu", 1, "relu", "metadata", "fp32", [relu])
    m = {x.module: x for x in map_layers(layers, [folded, act])}
    assert (m["bn"].how, m["bn"].tensor) == ("shape", folded)
    assert (m["conv"].how, m["conv"].compare_to) == ("fused into bn", "bn")
    assert (m["relu"].how, m["relu"].tensor) == ("metadata", act)
    assert m["flat"].how == "same tensor as relu" and m["flat"].values[0].shape == (1, 16)
    assert m["drop"].tensor is None  # its values differ from flat's: no tensor claimed for it


def test_which_model_a_bundle_can_give():
    from types import SimpleNamespace

    from edgekit.explain import model_from_bundle

    def fake(recipe):
        return SimpleNamespace(root="b", manifest=SimpleNamespace(recipe=recipe))

    with pytest.raises(UsageError, match="trained weights, which a bundle does not hold"):
        model_from_bundle(fake({"model": "cnn", "train": True, "epochs": 3, "seed": 0}))
    with pytest.raises(UsageError, match="does not record which model"):
        model_from_bundle(fake(None))
    a = model_from_bundle(fake({"model": "cnn", "train": False, "seed": 5}))
    b = model_from_bundle(fake({"model": "cnn", "train": False, "seed": 5}))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
    m = model_from_bundle(fake({"model": "test_explain:broken_model"}))
    assert isinstance(m, Broken)
    with pytest.raises(UsageError, match="either bundle=... or an artifact"):
        explain(progress=False)


# ------------------------------------------------------------------ like-for-like references
class EqualizedBroken(nn.Module):
    """``Broken``'s outlier (``conv1``'s channel 3) behind an equalizable pair: the int8 build's
    default cross-layer equalization rescales ``conv0``'s channels (their ranges differ 80x)
    against ``conv1``'s inputs, and the max-pool keeps ``conv1`` -> ``conv2`` out of any pair, so
    the outlier survives the transforms."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.conv0.weight[0] *= 8.0
            self.conv0.weight[1] *= 0.1
            self.conv1.weight[3] *= 40.0
            self.conv1.bias[3] = 80.0
            self.conv2.weight[:, 3] *= 1e-2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(self.relu0(self.conv0(x))))
        return self.fc(self.flat(self.gap(self.relu(self.conv2(x)))))


def equalized_model() -> nn.Module:
    torch.manual_seed(0)
    return EqualizedBroken().eval()


def _equalized(root, **quantization):
    _need(["onnxruntime"])
    from edgekit.pipeline import compress

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    compress(equalized_model(), torch.rand(1, 1, 8, 8, generator=gen), targets=[INT8[0]],
             out_dir=root, calibration=torch.rand(16, 1, 8, 8, generator=gen).numpy(),
             input_names=["x"], output_names=["y"], progress=False,
             # the default transforms, equalization on (not "auto", which may keep the
             # build without it): what explain must re-apply
             quantization={"latency_check": False, "equalize": True, **quantization})
    return root


@pytest.fixture(scope="module")
def equalized_bundle(tmp_path_factory):
    return _equalized(tmp_path_factory.mktemp("explain") / "equalized")


@pytest.fixture(scope="module")
def equalized_bundle_8bit(tmp_path_factory):
    """8-bit weights on every CPU (one without VNNI otherwise gets 7-bit ones): the local
    and end-to-end dB levels the test below compares are the 8-bit grid's."""
    return _equalized(tmp_path_factory.mktemp("explain") / "equalized8", reduce_range="off")


@pytest.mark.slow
def test_default_transforms_are_reapplied_to_the_reference(equalized_bundle, monkeypatch):
    manifest = json.loads((equalized_bundle / "manifest.json").read_text())
    done = manifest["targets"][INT8[0]]["quantization"]["transforms"]
    assert done["equalized_pairs"] == ["conv0 -> relu -> conv1"]
    assert "bias_correction" in done["applied"]
    t = explain(equalized_model(), bundle=equalized_bundle, progress=False).target(INT8[0])
    assert t.reference["reapplied"] == ["equalize"]
    assert "bias_correction" in t.reference["not_reapplied"]
    assert t.to_json()["reference"] == t.reference
    # the broken layer is still named first; the equalized layers match their reference
    assert t.jump.module == "conv1" and t.culprit_names()[0] == "conv1"
    rows = {r.module: r for r in t.rows}
    assert rows["conv0"].effective_sqnr_db > 30 and rows["relu0"].effective_sqnr_db > 30
    assert rows["conv1"].effective_sqnr_db < 12
    # compared with the untransformed model, conv0's rescaled channels look like a break
    import edgekit.explain.api as api

    monkeypatch.setattr(api, "transformed_reference", lambda model, *a: (model, None))
    naive = explain(equalized_model(), bundle=equalized_bundle, progress=False).target(INT8[0])
    assert naive.reference is None
    assert naive.jump.module in ("conv0", "relu0")
    assert {r.module: r for r in naive.rows}["conv0"].effective_sqnr_db < 0


@pytest.mark.slow
def test_local_error_feeds_each_layer_pytorchs_inputs(equalized_bundle_8bit, tmp_path):
    report = explain(equalized_model(), bundle=equalized_bundle_8bit, progress=False)
    t = report.target(INT8[0])
    rows = {r.module: r for r in t.rows}
    # conv1 breaks on its own: fed PyTorch's exact input, its output is as bad as end to end
    assert rows["conv1"].local_sqnr_db < 12
    assert rows["conv1"].local_sqnr_db == pytest.approx(rows["conv1"].effective_sqnr_db, abs=1)
    # conv2 + relu inherit most of their error: alone they do clearly better
    assert rows["relu"].local_sqnr_db > rows["relu"].effective_sqnr_db + 3
    # the average pool runs in int8 (integer_ops: a GlobalAveragePool ONNX Runtime quantizes):
    # its own error is one rounding of its output, far less than what it inherits
    assert rows["gap"].local_sqnr_db > 45 and rows["gap"].effective_sqnr_db < 40
    assert rows["gap"].local_sqnr_db > rows["gap"].effective_sqnr_db + 10
    # layers measured at another layer's tensor have no local number
    assert rows["conv0"].how.startswith("fused") and rows["conv0"].local_sqnr_db is None
    layers = {r["module"]: r for r in t.to_json()["layers"]}
    assert layers["conv0"]["local_sqnr_db"] == "n/a"
    assert layers["conv1"]["local_sqnr_db"] == pytest.approx(rows["conv1"].local_sqnr_db)
    md = report.to_markdown()
    assert "| local SQNR dB |" in md and "| fused into relu0 | int8 |" in md


@pytest.mark.slow
def test_measure_suggestion_rebuilds_with_the_culprit_in_float(equalized_bundle, tmp_path,
                                                               capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(5)).numpy())
    rc = main(["explain", str(equalized_bundle), "--model", "test_explain:equalized_model",
               "--data", str(data), "--measure-suggestion", "--json", str(tmp_path / "e.json"),
               "-q"])
    assert rc == 0
    m = json.loads((tmp_path / "e.json").read_text())["targets"][INT8[0]]["suggestion_measured"]
    assert m["culprit"] == "conv1" and m["calibration"] == "the 16 explain input(s)"
    keeps = [v["keep_float"] for v in m["variants"]]
    assert keeps == [[], ["conv1"], ["conv1", "conv2"]]
    recorded, alone, with_reader = m["variants"]
    assert recorded["gain_db"] == 0.0
    # conv1's output is rounded again where conv2 reads it: only both in float fix it
    assert with_reader["gain_db"] > 10 and with_reader["sqnr_db"] > 40
    assert alone["gain_db"] < with_reader["gain_db"] - 10
    out = capsys.readouterr().out
    assert "keep_float [conv1, conv2]:" in out and "measured (rebuilt, calibrated on" in out


# ------------------------------------------------------------------ mapping coverage
def test_a_folded_batchnorm_identity_is_fused_with_its_conv():
    from edgekit.explain.mapping import map_layers
    from edgekit.explain.torch_capture import LayerCapture

    conv = np.random.default_rng(0).normal(size=(1, 4, 2, 2))
    act = np.clip(conv, 0, 6)
    layers = [LayerCapture("c", "Conv2d", 0, [conv], params=20),
              LayerCapture("bn", "Identity", 1, [conv.copy()]),
              LayerCapture("act", "ReLU6", 2, [act])]
    t = RuntimeTensor("r", "Clamp", 0, "act", "metadata", "int8", [act])
    m = {x.module: x for x in map_layers(layers, [t])}
    assert (m["bn"].how, m["bn"].compare_to) == ("fused into act", "act")
    assert (m["c"].how, m["c"].compare_to) == ("fused into act", "act")
    # an Identity that changes nothing after a parameter-free module is not claimed
    layers[0] = LayerCapture("c", "Dropout", 0, [conv])
    assert {x.module: x for x in map_layers(layers, [t])}["bn"].tensor is None


def test_openvino_fused_encoder_layer_ops_name_their_leaves():
    from types import SimpleNamespace

    from edgekit.explain.capture_openvino import _encoder_layers

    def op(kind, name):
        p = "__module.layers.0/aten::_transformer_encoder_layer_fwd/"
        return SimpleNamespace(get_type_name=lambda: kind, get_friendly_name=lambda: p + name)

    ops = [op("MatMul", "MatMul_3"), op("Add", "Add_4"), op("MVN", "MVN"),
           op("MatMul", "MatMul_4"), op("Add", "Add_6"), op("Relu", "Relu"),
           op("MatMul", "MatMul_5"), op("Add", "Add_7"), op("Add", "Add_8"), op("MVN", "MVN_1")]
    leaves = {f"layers.0.{n}": i for i, n in enumerate(
        ["dropout1", "norm1", "linear1", "dropout", "linear2", "dropout2", "norm2"])}
    got = {k.rpartition("/")[2]: v for k, v in _encoder_layers(ops, leaves).items()}
    assert got == {"MVN": "layers.0.norm1", "MVN_1": "layers.0.norm2", "Add_6": "layers.0.linear1",
                   "Relu": "layers.0.dropout", "Add_7": "layers.0.linear2"}
    # a block whose leaves are not PyTorch modules maps nothing
    assert _encoder_layers(ops, {"other": 0}) == {}


@pytest.mark.slow
def test_openvino_maps_a_fused_transformer_encoder(tmp_path):
    _need(["openvino"])
    from edgekit.api import build_zoo_model

    build_zoo_model("transformer", targets=["x86-openvino-fp32"], out_dir=tmp_path / "t",
                    train=False, progress=False)
    t = explain(bundle=tmp_path / "t", progress=False).target("x86-openvino-fp32")
    rows = {r.module: r for r in t.rows}
    for name in ("embed", "layers.0.norm1", "layers.0.linear1", "layers.0.dropout",
                 "layers.0.linear2", "layers.1.norm2"):
        assert rows[name].mapped and rows[name].rel_error < 1e-5, name
    # the attention output is never a tensor of its own (its bias is folded into the residual)
    assert t.coverage["unmapped"] == ["layers.0.self_attn", "layers.0.dropout1",
                                      "layers.1.self_attn", "layers.1.dropout1"]


def test_modules_whose_children_are_never_called_are_layers():
    from edgekit.explain.torch_capture import called_leaves, capture_torch

    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(layer, nn.Linear(16, 4)).eval()
    x = np.random.default_rng(0).random((1, 5, 16), dtype=np.float32)
    layers, _ = capture_torch(model, [[x]])
    names = [c.name for c in layers]
    # MultiheadAttention computes with out_proj's weights: the attention is the layer
    assert "0.self_attn" in names and "0.self_attn.out_proj" not in names
    assert names[-1] == "1" and layers[-1].shape == (1, 5, 4)
    assert called_leaves(["", "a", "a.b", "c"]) == {"a.b", "c"}
    assert called_leaves([""]) == {""}


def test_locations_under_an_uncalled_module_list():
    from edgekit.explain.tensors import module_path_from_location

    mods = {"layers.0.self_attn", "layers.0.linear1", "layers.1.linear1", "head"}
    enc = "pkg.Net/torch.nn.modules.transformer.TransformerEncoderLayer_0"
    assert module_path_from_location(f"{enc}/torch.nn.Linear_linear1", mods) \
        == "layers.0.linear1"
    assert module_path_from_location(enc, mods) == "layers.0"  # the block itself
    assert module_from_location(enc, mods) is None
    assert module_path_from_location("pkg.Net/x.Block_7/torch.nn.Linear_linear1", mods) is None


def test_a_relu_made_by_the_block_and_a_fused_gemm_relu():
    """ONNX Runtime int8: linear1's Gemm carries the block's functional ReLU (the output is
    reshaped and named ``relu``, tied to the block, not a layer). The Dropout after it takes
    that value; linear1 has no value of its own and is measured fused into it, never at the
    Gemm's output (the same value, post-ReLU)."""
    from edgekit.explain.mapping import map_layers
    from edgekit.explain.torch_capture import LayerCapture

    rng = np.random.default_rng(0)
    norm, lin = rng.standard_normal((1, 4, 8)), rng.standard_normal((1, 4, 6))
    relu = np.maximum(lin, 0)
    out = rng.standard_normal((1, 4, 8))
    layers = [LayerCapture("blk.norm", "LayerNorm", 0, [norm]),
              LayerCapture("blk.linear1", "Linear", 1, [lin], params=54),
              LayerCapture("blk.dropout", "Dropout", 2, [relu]),
              LayerCapture("blk.linear2", "Linear", 3, [out], params=56)]

    def t(name, op, order, module, value, value_of=None):
        r = RuntimeTensor(name, op, order, module, "tensor name" if module else "", "int8",
                          [value])
        r.value_of = value_of
        return r

    tensors = [t("layer_norm", "DequantizeLinear", 0, "blk.norm", norm),
               t("gemm_out", "Gemm", 1, None, relu.reshape(4, 6)),
               t("gemm_out_DequantizeLinear_Output", "DequantizeLinear", 2, None,
                 relu.reshape(4, 6), "gemm_out"),
               t("relu", "Reshape", 3, "blk", relu, "gemm_out"),
               t("relu_DequantizeLinear_Output", "DequantizeLinear", 4, "blk", relu,
                 "gemm_out"),
               t("linear_3", "Add", 5, "blk.linear2", out)]
    m = {x.module: x for x in map_layers(layers, tensors)}
    assert (m["blk.dropout"].how, m["blk.dropout"].tensor.name) == (
        "shape", "relu_DequantizeLinear_Output")
    assert (m["blk.linear1"].how, m["blk.linear1"].compare_to) == (
        "fused into blk.dropout", "blk.dropout")


@pytest.mark.slow
def test_transformer_encoder_maps_fully_on_litert_and_onnxruntime(tmp_path):
    _need(["onnxruntime", "tflite"])
    from edgekit.api import build_zoo_model

    targets = ["x86-onnxruntime-fp32", "x86-tflite-fp32"]
    build_zoo_model("transformer", targets=targets, out_dir=tmp_path / "t", train=False,
                    progress=False)
    report = explain(bundle=tmp_path / "t", progress=False)
    for name in targets:
        t = report.target(name)
        assert t.coverage["unmapped"] == [], name
        rows = {r.module: r for r in t.rows}
        # ModuleList children (layers.0...) map through the locations that skip `layers`
        for module in ("layers.0.self_attn", "layers.0.dropout", "layers.1.linear2"):
            assert rows[module].mapped and rows[module].rel_error < 1e-5, (name, module)


def test_reference_takes_absorbed_biases_from_the_record():
    from edgekit.explain.reference import transformed_reference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    before = model[2].bias.detach().clone()
    samples = [[np.random.default_rng(k).random((1, 4), dtype=np.float32)] for k in range(2)]
    assert transformed_reference(model, None, samples) == (model, None)
    assert transformed_reference(model, {"applied": [], "bn_folded": []}, samples)[1] is None
    record = {"applied": ["equalize", "bias_correction"], "bn_folded": [],
              "bias_absorbed": ["0 -> 2"],
              "absorbed_biases": {"0": [0.5] * 8, "2": [-1.0, 0.0, 1.0]}}
    ref, note = transformed_reference(model, record, samples)
    assert ref is not model and note["reapplied"] == ["equalize"]
    assert note["absorbed_biases_from_record"] == ["0", "2"]
    assert "bias_correction" in note["not_reapplied"]
    assert ref[2].bias.tolist() == [-1.0, 0.0, 1.0] and ref[0].bias.tolist() == [0.5] * 8
    assert torch.equal(model[2].bias, before)  # the user's model is untouched
    # no amounts recorded: absorption is not re-estimated from the explain inputs
    del record["absorbed_biases"]
    _, note = transformed_reference(model, record, samples)
    assert "bias_absorption" in note["not_reapplied"]


def test_a_conv_holding_the_batchnorm_after_it_gives_it_its_tensor():
    """Conv + BatchNorm + Hardswish: the runtime's conv op holds the BatchNorm folded in and
    the activation is an op of its own; the conv's tensor is the BatchNorm's, not the conv's
    (compared with the conv's own output it would read as a broken layer)."""
    from edgekit.explain.mapping import map_layers
    from edgekit.explain.torch_capture import LayerCapture

    rng = np.random.default_rng(0)
    conv = rng.normal(size=(2, 4, 3, 3))
    bn = conv * 5.0 - 3.0
    act = bn * np.clip(bn + 3, 0, 6) / 6
    layers = [LayerCapture("c", "Conv2d", 0, [conv[:1], conv[1:]], params=20),
              LayerCapture("bn", "BatchNorm2d", 1, [bn[:1], bn[1:]], params=8),
              LayerCapture("hs", "Hardswish", 2, [act[:1], act[1:]])]
    t = RuntimeTensor("c", "CONV_2D", 0, "c", "metadata", "int8", [bn[:1], bn[1:]])
    h = RuntimeTensor("h", "HARD_SWISH", 1, "hs", "metadata", "int8", [act[:1], act[1:]])
    m = {x.module: x for x in map_layers(layers, [t, h])}
    assert (m["bn"].tensor, m["bn"].compare_to) == (t, "bn")
    assert m["bn"].how == "metadata, BatchNorm folded into c"
    assert (m["c"].how, m["c"].compare_to) == ("fused into bn", "bn")
    assert (m["hs"].tensor, m["hs"].compare_to) == (h, "hs")
    # a conv whose tensor is its own output (the BatchNorm runs later, fused elsewhere) keeps it
    t2 = RuntimeTensor("c", "CONV_2D", 0, "c", "metadata", "int8", [conv[:1], conv[1:]])
    m = {x.module: x for x in map_layers(layers, [t2, h])}
    assert (m["c"].tensor, m["c"].compare_to) == (t2, "c")


class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_a_range_set_by_a_tail_of_calibration_inputs_is_named_a_coarse_grid(tmp_path):
    """Calibrated on inputs of which 2 in 16 are 200x larger, explained on ordinary ones:
    conv1's int8 tensor takes a few of its 256 levels there; the suggestion says so (not
    "rounding noise over the whole range") and points at 16-bit activations or float."""
    _need({"onnxruntime"})
    from edgekit.pipeline import compress

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    calib = torch.rand(16, 1, 8, 8, generator=gen)
    calib[:2] *= 200.0
    model = _TwoConvs().eval()
    compress(model, calib[2:3], targets=[INT8[0]], out_dir=tmp_path / "b",
             calibration=calib.numpy(), input_names=["x"], output_names=["y"], progress=False,
             quantization={"latency_check": False, "fallback": False, "equalize": False,
                           "bias_correction": False})
    x = torch.rand(4, 1, 1, 8, 8, generator=gen)
    report = explain(model, tmp_path / "b" / INT8[0] / "model.onnx", [(s,) for s in x],
                     progress=False)
    t = report.targets[0]
    conv1 = next(r for r in t.rows if r.module == "conv1")
    assert conv1.precision == "int8" and conv1.levels is not None and conv1.levels <= 16
    assert t.jump is not None and t.jump.module == "conv1"
    assert t.suggestion["symptom"].startswith(f"coarse grid: on these inputs the tensor takes "
                                              f"{conv1.levels} of its 256 levels")
    assert "activations_16bit" in t.suggestion["action"]
    assert "keep_float': ['conv1']" in t.suggestion["action"]
    assert report.to_json()["targets"][t.target]["layers"][0]["levels"] == conv1.levels


class _TrimLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-1]


def test_a_weight_normed_layer_is_the_layer_not_its_parametrization():
    # wav2vec2's positional convolution: its weight is computed by a parametrization module
    # called inside its forward; the convolution is still the layer its culprits name
    from edgekit.explain.culprits import try_first
    from edgekit.explain.torch_capture import capture_torch

    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 8, 4, padding=2), dim=2)
    model = nn.Sequential(conv, _TrimLast(), nn.GELU(), nn.Conv1d(8, 8, 1)).eval()
    x = np.random.default_rng(0).random((1, 4, 10), dtype=np.float32)
    layers, _ = capture_torch(model, [[x]])
    names = [c.name for c in layers]
    assert names == ["0", "1", "2", "3"], names
    assert layers[0].kind == "ParametrizedConv1d" and layers[0].shape == (1, 8, 11)
    # a jump at the trim, which has nothing to quantize: the convolution feeding it first
    assert try_first(["1"], names, ["0", "3"]) == ["0", "3"]
