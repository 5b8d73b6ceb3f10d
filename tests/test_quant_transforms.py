"""Float-domain int8 transforms: BN folding + cross-layer equalization (+ bias absorption),
SmoothQuant and empirical bias correction; their config keys and their place in the int8 build."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError, UsageError
from edgekit.models import build, get_spec
from edgekit.quantize.config import QuantConfig
from edgekit.quantize.transforms import ChannelClamp, apply_transforms
from edgekit.quantize.transforms.bias_correction import quantize_weight


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BN statistics (a fresh BN is the identity and hides folding bugs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) * 3 + 0.05)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _batches(spec, n: int = 3, batch: int = 4, seed: int = 0) -> list[list[np.ndarray]]:
    torch.manual_seed(seed)
    out = []
    for _ in range(n):
        xs = spec.example_inputs(batch)
        out.append([(torch.rand_like(x) if x.is_floating_point() else x).numpy() for x in xs])
    return out


def _run(model: nn.Module, batch: list[np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        y = model(*(torch.from_numpy(a) for a in batch))
    return y if isinstance(y, torch.Tensor) else y[0]


@pytest.mark.parametrize("name", ["mobilenet_v2", "ds_cnn", "resnet8", "cnn"])
def test_equalize_keeps_float_outputs_on_zoo_models(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    model = _random_bn(build(name))
    cal = _batches(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, rec = apply_transforms(model, cal, equalize=True)
    assert rec["applied"] == ["equalize"] and rec["equalized_pairs"]
    held_out = _batches(spec, n=2, seed=1)
    for b in cal:  # the data bias absorption was measured on: exact
        assert _rel(_run(model, b), _run(out, b)) < 1e-5
    for b in held_out:
        assert _rel(_run(model, b), _run(out, b)) < 1e-4
    # the original model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if name in ("mobilenet_v2", "ds_cnn", "resnet8"):
        assert rec["bn_folded"] and not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())


def test_equalize_balances_a_conv_depthwise_conv_chain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():  # channel ranges over three orders of magnitude
        model[0].weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))
        model[2].weight.mul_(torch.logspace(1, -2, 8).reshape(8, 1, 1, 1))
    x = torch.rand(2, 3, 6, 6)
    spread = model[0].weight.detach().abs().reshape(8, -1).amax(1)
    out, rec = apply_transforms(model, [[x.numpy()]], equalize=True)
    assert rec["equalized_pairs"] == ["0 -> relu -> 2", "2 -> relu -> 4"]
    with torch.no_grad():
        assert _rel(model(x), out(x)) < 1e-5
    r0 = out[0].weight.detach().abs().reshape(8, -1).amax(1)
    r2_in = out[2].weight.detach().abs().reshape(8, -1).amax(1)
    r2_out, r4_in = r2_in, out[4].weight.detach().abs().amax(dim=(0, 2, 3))
    # converged: each pair's two ranges agree per channel (AIMET's fixed point)
    assert torch.allclose(r0, r2_in, rtol=1e-2) and torch.allclose(r2_out, r4_in, rtol=1e-2)
    assert float(r0.max() / r0.min()) < float(spread.max() / spread.min()) / 10


def test_relu6_modes_clamp_exactly_or_skip():
    torch.manual_seed(0)
    spec = get_spec("mobilenet_v2")
    model = _random_bn(build("mobilenet_v2"))
    cal = _batches(spec, n=2)
    clamp, rec_c = apply_transforms(model, cal, equalize=True, relu6="clamp")
    skip, rec_s = apply_transforms(model, cal, equalize=True, relu6="skip")
    assert rec_c["clamped_relu6"] and not rec_s["clamped_relu6"]
    assert len(rec_s["equalized_pairs"]) < len(rec_c["equalized_pairs"])
    assert all("relu6" not in p for p in rec_s["equalized_pairs"])
    clamps = [m for m in clamp.modules() if isinstance(m, ChannelClamp)]
    assert clamps and any(float(c.upper.std()) > 0 for c in clamps)  # per-channel bounds
    for b in cal:
        assert _rel(_run(model, b), _run(clamp, b)) < 1e-5
        assert _rel(_run(model, b), _run(skip, b)) < 1e-5


def test_untraceable_model_is_left_alone_with_the_reason():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = torch.relu(self.a(x))
            return self.b(x)

    model = Branchy().eval()
    x = torch.rand(3, 4)
    out, rec = apply_transforms(model, [[x.numpy()]], equalize=True, smoothquant=True)
    assert rec["applied"] == []
    assert "torch.fx could not trace" in rec["skipped"]["equalize"]
    assert "torch.fx could not trace" in rec["skipped"]["smoothquant"]
    with torch.no_grad():
        assert torch.equal(model(x), out(x))


def test_all_switches_off_returns_the_model_itself():
    model = nn.Linear(3, 2)
    out, rec = apply_transforms(model, [], equalize=False)
    assert out is model and rec["applied"] == []


class _PreNormBlock(nn.Module):
    """A pre-norm attention block written out: LayerNorm -> q/k/v Linears; an MLP."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 32), nn.Linear(32, d)

    def forward(self, x):
        h = self.ln(x)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 4.0, -1) @ self.v(h)
        x = x + a
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


def _outlier_ln(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight[:2] = 30.0  # two outlier channels, as in real transformers


def test_smoothquant_keeps_outputs_and_moves_outliers_into_weights():
    torch.manual_seed(0)
    model = _PreNormBlock().eval()
    _outlier_ln(model)
    x = torch.randn(4, 10, 16)
    with torch.no_grad():
        h = model.ln(x)
    out, rec = apply_transforms(model, [[x.numpy()]], smoothquant=True)
    assert rec["smoothquant_norms"] == ["ln", "ln2"] and rec["smoothquant_alpha"] == 0.5
    with torch.no_grad():
        assert _rel(model(x), out(x)) < 1e-5
        h2 = out.ln(x)
    ratio = lambda t: float(t.abs().amax((0, 1)).max() / t.abs().amax((0, 1)).median())  # noqa: E731
    assert ratio(h2) < ratio(h) / 3  # the LayerNorm output's outlier channels are tamed


def test_smoothquant_on_attention_blocks_and_the_zoo_transformer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                       norm_first=True)

    class Enc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer
            self.ln = nn.LayerNorm(16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            x = self.layer(x)
            h = self.ln(x)
            return x + self.attn(h, h, h, need_weights=False)[0]

    model = Enc().eval()
    _outlier_ln(model)
    x = torch.randn(2, 7, 16)
    out, rec = apply_transforms(model, [[x.numpy()]], smoothquant=True)
    assert rec["smoothquant_norms"] == ["layer.norm1", "layer.norm2", "ln"]
    with torch.no_grad():
        assert _rel(model(x), out(x)) < 1e-5
    spec = get_spec("transformer")
    zoo = build("transformer").eval()
    cal = _batches(spec, n=2)
    out, rec = apply_transforms(zoo, cal, smoothquant=True)
    assert rec["smoothquant_norms"] == ["norm"]  # post-norm layers: their norms feed residuals
    for b in cal:
        assert _rel(_run(zoo, b), _run(out, b)) < 1e-5


def _weight_quantized(model: nn.Module) -> nn.Module:
    import copy

    q = copy.deepcopy(model)
    with torch.no_grad():
        for m in q.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(quantize_weight(m.weight))
    return q


def test_bias_correction_reduces_the_simulated_int8_error():
    torch.manual_seed(0)
    spec = get_spec("ds_cnn")
    model = _random_bn(build("ds_cnn"))
    cal = _batches(spec, n=4, batch=8)
    held_out = _batches(spec, n=2, batch=8, seed=5)
    base, _ = apply_transforms(model, cal, equalize=True)  # BN folded, no correction
    corrected, rec = apply_transforms(model, cal, equalize=True, bias_correction=True)
    assert len(rec["bias_corrected"]) == sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    err_base = err_corr = 0.0
    for b in held_out:
        ref = _run(model, b)
        err_base += float(((_run(_weight_quantized(base), b) - ref) ** 2).mean())
        err_corr += float(((_run(_weight_quantized(corrected), b) - ref) ** 2).mean())
    assert err_corr < 0.8 * err_base
    # the float function moved, by design, but only by the expected rounding error
    assert 0 < _rel(_run(model, held_out[0]), _run(corrected, held_out[0])) < 0.2


def test_bias_correction_skips_layers_kept_in_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(16, 8) + 0.5
    out, rec = apply_transforms(model, [[x.numpy()]], bias_correction=True, keep_float=["2"])
    assert rec["bias_corrected"] == ["0"]
    assert torch.equal(out[2].bias, model[2].bias) and not torch.equal(out[0].bias, model[0].bias)


def test_quantization_table_keys_are_validated():
    cfg = QuantConfig.from_table({"equalize": True, "bias_correction": True,
                                  "smoothquant": True, "smoothquant_alpha": 0.7,
                                  "equalize_relu6": "skip"}, where="r.toml [quantization]")
    assert (cfg.equalize, cfg.bias_correction, cfg.smoothquant) == (True, True, True)
    assert cfg.smoothquant_alpha == 0.7 and cfg.equalize_relu6 == "skip"
    with pytest.raises(ConfigError, match="equalize_relu6"):
        QuantConfig.from_table({"equalize_relu6": "relu"}, where="r.toml [quantization]")
    with pytest.raises(ConfigError, match="smoothquant_alpha"):
        QuantConfig.from_table({"smoothquant_alpha": 1.5}, where="r.toml [quantization]")
    with pytest.raises(ConfigError, match="equalize"):
        QuantConfig.from_table({"equalize": "yes"}, where="r.toml [quantization]")
    with pytest.raises(UsageError, match="smoothquant_alpha"):
        QuantConfig.coerce({"smoothquant_alpha": -0.1})


@pytest.mark.slow
def test_int8_build_applies_and_records_the_transforms(tmp_path):
    from edgekit.pipeline import compress

    torch.manual_seed(0)
    spec = get_spec("ds_cnn")
    model = _random_bn(build("ds_cnn"))
    cal = _batches(spec, n=4, batch=1)
    bundle_dir = tmp_path / "b"
    compress(model, spec.example_inputs(1), targets=["x86-onnxruntime-int8"], out_dir=bundle_dir,
             input_names=list(spec.input_names), output_names=list(spec.output_names),
             progress=False, calibration=[b[0] for b in cal],
             quantization={"equalize": True, "bias_correction": True, "latency_check": False})
    man = json.loads((bundle_dir / "manifest.json").read_text())
    q = man["targets"]["x86-onnxruntime-int8"]["quantization"]
    t = q["transforms"]
    assert t["applied"] == ["equalize", "bias_correction"]
    assert t["bn_folded"] and t["equalized_pairs"] and t["bias_corrected"]
    assert q["config"]["equalize"] is True and q["config"]["smoothquant"] is False


@pytest.mark.slow
def test_equalize_auto_builds_both_and_ships_the_one_it_records(tmp_path):
    """``equalize = "auto"`` on ONNX Runtime: both builds measured on the held-out batches,
    the rule applied to those numbers, and the shipped file is the kept build (its held-out
    SQNR, its transforms, its weights)."""
    import onnx
    from onnx import numpy_helper

    from edgekit.pipeline import compress
    from edgekit.quantize.build import EQUALIZE_MARGIN_DB

    torch.manual_seed(0)
    spec = get_spec("ds_cnn")
    model = _random_bn(build("ds_cnn"))
    cal = _batches(spec, n=8, batch=1)
    compress(model, spec.example_inputs(1), targets=["x86-onnxruntime-int8"],
             out_dir=tmp_path / "b", input_names=list(spec.input_names),
             output_names=list(spec.output_names), progress=False,
             calibration=[b[0] for b in cal],
             quantization={"equalize": "auto", "latency_check": False, "fallback": False,
                           "reduce_range": "on"})
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    q = man["targets"]["x86-onnxruntime-int8"]["quantization"]
    choice = q["equalize_choice"]
    with_eq = choice["equalized"]["heldout_sqnr_db"]
    without = choice["not_equalized"]["heldout_sqnr_db"]
    assert choice["equalized"]["passed"] and choice["not_equalized"]["passed"]
    kept = "not equalized" if without > with_eq + EQUALIZE_MARGIN_DB else "equalized"
    assert choice["kept"] == kept and f"{with_eq:.2f} with" in choice["why"]
    shipped = q["heldout_fidelity"]["outputs"][0]["sqnr_db"]
    assert round(shipped, 2) == (with_eq if kept == "equalized" else without)
    assert ("equalize" in q["transforms"]["applied"]) is (kept == "equalized")
    assert q["config"]["equalize"] is (kept == "equalized")
    # the file's first conv weights are the kept model's, on the int8 grid
    transformed, _ = apply_transforms(model, cal[:6], equalize=kept == "equalized",
                                      bias_correction=True, weight_qmax=64)
    first = next(m for m in transformed.modules() if isinstance(m, nn.Conv2d)).weight
    proto = onnx.load(str(tmp_path / "b" / "x86-onnxruntime-int8" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    deq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].ndim == 4)
    w = inits[deq.input[0]].astype(np.float64) * inits[deq.input[1]].reshape(-1, 1, 1, 1)
    assert np.allclose(w, quantize_weight(first.detach(), 64).double().numpy(), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("reduce_range, qmax", [("off", 127), ("on", 64)])
def test_onnxruntime_int8_weights_are_on_the_grid_bias_correction_assumes(tmp_path, reduce_range,
                                                                          qmax):
    """Bias correction targets ``quantize_weight``'s grid, 8-bit or 7-bit (``reduce_range``):
    the QDQ artifact's int8 weights, dequantized, must equal it for every conv/linear of the
    transformed model."""
    import onnx
    from onnx import numpy_helper

    from edgekit.pipeline import compress

    torch.manual_seed(0)
    spec = get_spec("ds_cnn")
    model = _random_bn(build("ds_cnn"))
    cal = _batches(spec, n=4, batch=1)
    quant = {"equalize": True, "bias_correction": True, "latency_check": False,
             "fallback": False, "reduce_range": reduce_range}
    compress(model, spec.example_inputs(1), targets=["x86-onnxruntime-int8"],
             out_dir=tmp_path / "b", input_names=list(spec.input_names),
             output_names=list(spec.output_names), progress=False,
             calibration=[b[0] for b in cal], quantization=quant)
    proto = onnx.load(str(tmp_path / "b" / "x86-onnxruntime-int8" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    onnx_weights = []
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits \
                and inits[n.input[0]].dtype == np.int8:
            q, scale = inits[n.input[0]].astype(np.float64), inits[n.input[1]].astype(np.float64)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[axis] = -1
            onnx_weights.append(q * scale.reshape(shape))
    transformed, _ = apply_transforms(model, cal, equalize=True, bias_correction=True,
                                      weight_qmax=qmax)
    layers = [m for m in transformed.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(onnx_weights) == len(layers)
    assert max(int(np.abs(inits[n]).max()) for n in inits if inits[n].dtype == np.int8) == qmax
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    record = manifest["targets"]["x86-onnxruntime-int8"]["quantization"]["transforms"]
    assert record["bias_correction_grid"] == f"-{qmax}..{qmax}"
    for m in layers:
        ours = quantize_weight(m.weight.detach(), qmax).double().numpy()
        assert any(w.shape == ours.shape and np.allclose(w, ours, rtol=1e-5, atol=1e-7)
                   or w.shape == ours.T.shape and np.allclose(w, ours.T, rtol=1e-5, atol=1e-7)
                   for w in onnx_weights), m
