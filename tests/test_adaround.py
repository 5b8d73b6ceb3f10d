"""Learned rounding (AdaRound): weights land on the per-channel int8 grid within one step of
the float weights, the layer and model output errors drop below round to nearest's, the
config keys are checked, and each runtime's int8 artifact holds exactly edgekit's integers."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError, UsageError
from edgekit.quantize.config import QuantConfig
from edgekit.quantize.transforms import apply_transforms
from edgekit.quantize.transforms.adaround import adaround, grid_integers
from edgekit.quantize.transforms.bias_correction import quantize_weight

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from adaround import artifact_integers, compare_integers, edgekit_integers  # noqa: E402

WEIGHTED = (nn.Conv2d, nn.Linear)


class DigitsNet(nn.Module):
    """Conv + BN, strided conv, depthwise conv and a linear head on 1x8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.dw(torch.relu(self.conv2(x))))
        return self.head(x.flatten(1))


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)
    return x.unsqueeze(1)  # (1797, 1, 8, 8): real images, strongly correlated pixels


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = DigitsNet()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking BN statistics
        m.bn1.running_mean.copy_(torch.rand(8, generator=g) * 0.4 - 0.2)
        m.bn1.running_var.copy_(torch.rand(8, generator=g) * 0.3 + 0.05)
        m.bn1.weight.copy_(torch.rand(8, generator=g) * 2 + 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def rounded():
    """(float model, its BN-folded copy, the adarounded copy, record, calibration, held-out)."""
    torch.set_num_threads(1)
    x = _digits()
    cal = [[x[i:i + 1].numpy()] for i in range(64)]
    held = x[1000:1400]
    model = _model()
    folded, _ = apply_transforms(model, cal, equalize=True)  # BN folded (and equalized)
    ada, rec = apply_transforms(model, cal, equalize=True, adaround=True)
    return model, folded, ada, rec, cal, held


def _layers(m: nn.Module) -> dict[str, nn.Module]:
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, WEIGHTED)}


def test_weights_land_on_the_grid_within_one_step_and_keep_the_function(rounded):
    model, folded, ada, rec, _, held = rounded
    assert rec["applied"] == ["equalize", "adaround"]
    assert [r["layer"] for r in rec["adaround_layers"]] == ["conv1", "conv2", "dw", "head"]
    for name, layer in _layers(ada).items():
        w0 = _layers(folded)[name].weight.detach()
        w = layer.weight.detach()
        q, scale = grid_integers(w)
        s = scale.reshape(-1, *([1] * (w.dim() - 1)))
        # on the grid exactly: a runtime recomputing the scale finds these integers
        assert torch.equal(q.float() * s, w), name
        # each channel's largest element stays at +-127 (same scale as the float weights)
        assert torch.equal(q.abs().reshape(len(q), -1).amax(1),
                           torch.full((len(q),), 127, dtype=torch.int8)), name
        assert torch.allclose(scale, w0.abs().reshape(len(w0), -1).amax(1) / 127, rtol=1e-6)
        # every weight moves by less than one grid step (to the level below or above)
        assert float(((w - w0).abs() / s).max()) < 1.0, name
    with torch.no_grad():
        ref, out = model(held), ada(held)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.01, rel  # measured 0.2%: the int8-grid weights keep the float function


def test_learned_rounding_beats_round_to_nearest(rounded):
    model, folded, ada, rec, _, held = rounded
    for r in rec["adaround_layers"]:  # per layer, on the sampled calibration rows
        assert r["rows"] > 0 and r["error_nearest"] > 0
        if r["kept"] == "adaround":
            assert r["error_adaround"] < r["error_nearest"]
            assert r["reduction_pct"] == pytest.approx(
                100 * (1 - r["error_adaround"] / r["error_nearest"]), abs=0.01)
        else:  # the learned rounding did worse on these rows: round to nearest kept
            assert r["error_adaround"] >= r["error_nearest"]
            assert r["changed_pct"] == 0.0 and r["reduction_pct"] == 0.0
    learned = [r for r in rec["adaround_layers"] if r["kept"] == "adaround"]
    assert len(learned) == 4  # measured: 38-73% lower output error on each layer
    assert float(np.median([r["reduction_pct"] for r in learned])) > 30.0
    # the whole model on held-out images: lower output error than round to nearest
    nearest = copy.deepcopy(folded)
    with torch.no_grad():
        for layer in _layers(nearest).values():
            layer.weight.copy_(quantize_weight(layer.weight))
        ref = model(held)
        e_nearest = float((nearest(held) - ref).pow(2).mean())
        e_learned = float((ada(held) - ref).pow(2).mean())
    assert e_learned < 0.5 * e_nearest, (e_learned, e_nearest)  # measured: 0.29x


def test_bias_correction_skips_adarounded_layers_and_keep_float_is_untouched():
    x = _digits()
    cal = [[x[i:i + 1].numpy()] for i in range(16)]
    model = _model()
    folded, _ = apply_transforms(model, cal, equalize=True)
    out, rec = apply_transforms(model, cal, equalize=True, bias_correction=True,
                                adaround=True, adaround_iterations=20, keep_float=["head"])
    assert [r["layer"] for r in rec["adaround_layers"]] == ["conv1", "conv2", "dw"]
    assert rec["adaround_skipped"] == {"head": "kept in float"}
    assert rec["adaround_iterations"] == 20
    # nothing left to correct on the rounded layers; the float head is skipped too
    assert rec["applied"] == ["equalize", "adaround"]
    assert "adaround" in rec["skipped"]["bias_correction"]
    assert torch.equal(out.head.weight, folded.head.weight)
    assert torch.equal(out.conv2.bias, folded.conv2.bias)


def test_a_module_called_twice_is_left_alone():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.shared = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(torch.relu(self.shared(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    m = Twice().eval()
    w = m.shared.weight.detach().clone()
    rec = adaround(m, [[_digits()[:4].numpy()]], iterations=10)
    assert [r["layer"] for r in rec["layers"]] == ["a"]
    assert rec["skipped"] == {"shared": "called 2 times per forward pass"}
    assert torch.equal(m.shared.weight, w)


def test_adaround_config_keys_are_checked():
    assert QuantConfig().adaround is False
    c = QuantConfig.coerce({"adaround": True, "adaround_iterations": 50})
    assert (c.adaround, c.adaround_iterations) == (True, 50)
    assert QuantConfig.from_table({"adaround": True}, "recipe r.toml [quantization]").adaround
    with pytest.raises(ConfigError, match="adaround"):
        QuantConfig.from_table({"adaround": "yes"}, "recipe r.toml [quantization]")
    with pytest.raises(ConfigError, match="adaround_iterations"):
        QuantConfig.from_table({"adaround_iterations": 0}, "profile p.toml [quantization]")
    with pytest.raises(UsageError, match="adaround_iterations must be >= 1"):
        QuantConfig.coerce({"adaround_iterations": 0})
    assert QuantConfig(adaround=True).to_json()["adaround"] is True


def _runtime_available(rt: str) -> None:
    from edgekit.backends import get_backend

    why = get_backend(rt).int8_available()
    if why:
        pytest.skip(why)


@pytest.mark.slow
@pytest.mark.parametrize("rt,reduce_range", [("onnxruntime", "off"), ("onnxruntime", "on"),
                                             ("openvino", "auto"), ("tflite", "auto")])
def test_each_runtime_stores_edgekits_integers(rounded, rt, reduce_range, tmp_path):
    """The int8 weights read back from the artifact (ONNX QDQ initializers, OpenVINO i8
    constants, TFLite int8 buffers) equal edgekit's adarounded integers, every element; on
    ONNX Runtime's 7-bit grid (``reduce_range``) too, AdaRound rounding onto ``-64..64``."""
    from edgekit.backends import get_backend

    _runtime_available(rt)
    model, _, ada, _, cal, _ = rounded
    be = get_backend(rt)
    config = QuantConfig(openvino_source="nncf", adaround=True, equalize=False,
                         bias_correction=False, fallback=False, latency_check=False,
                         reduce_range=reduce_range)
    qmax = getattr(be, "weight_qmax", lambda _c: 127)(config)
    assert qmax == (64 if reduce_range == "on" else 127)
    if qmax != 127:
        ada, rec = apply_transforms(model, cal, equalize=True, adaround=True, weight_qmax=qmax)
        assert rec["adaround_grid"] == "-64..64"
        assert max(int(grid_integers(m.weight, 64)[0].abs().max())
                   for m in _layers(ada).values()) == 64
    art = be.quantize(ada, (torch.rand(1, 1, 8, 8),), tmp_path / rt, input_names=["x"],
                      output_names=["y"], options={}, calibration=cal[:8], config=config)
    ours = edgekit_integers(ada, qmax)
    match = compare_integers(ours, artifact_integers(art.path))
    assert set(match) == {"conv1", "conv2", "dw", "head"}
    assert all(m["found"] and m["differ"] == 0 for m in match.values()), match
    if rt == "openvino":  # NNCF's 7-bit first layer would re-round conv1: turned off
        assert art.info["quantization"]["overflow_fix"] == "disable"


def test_transformer_layers_are_rounded_and_attention_projection_named_as_skipped():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 16), nn.TransformerEncoderLayer(
        16, 2, 32, dropout=0.0, batch_first=True), nn.Linear(16, 3)).eval()
    x = torch.randn(8, 5, 4)
    fast = torch.backends.mha.get_fastpath_enabled()
    rec = adaround(m, [[x.numpy()]], iterations=20)
    # the fused inference kernel is bypassed while sampling, so linear1/linear2 are seen
    assert [r["layer"] for r in rec["layers"]] == ["0", "1.linear1", "1.linear2", "2"]
    assert "attention" in rec["skipped"]["1.self_attn.out_proj"]
    assert torch.backends.mha.get_fastpath_enabled() == fast  # restored
    for name in ("0", "1.linear1", "1.linear2", "2"):
        w = m.get_submodule(name).weight.detach()
        q, s = grid_integers(w)
        assert torch.equal(q.float() * s[:, None], w), name


def test_inputs_with_different_batch_sizes_are_not_stacked_together():
    class TwoTowers(nn.Module):  # one image, four prompts (CLIP-style)
        def __init__(self) -> None:
            super().__init__()
            self.img = nn.Linear(8, 6)
            self.txt = nn.Linear(8, 6)

        def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return self.img(image) @ self.txt(text).T

    torch.manual_seed(0)
    m = TwoTowers().eval()
    cal = [[torch.randn(1, 8).numpy(), torch.randn(4, 8).numpy()] for _ in range(6)]
    rec = adaround(m, cal, iterations=20)
    assert [(r["layer"], r["rows"]) for r in rec["layers"]] == [("img", 6), ("txt", 24)]
    assert rec["samples"] == 6


@pytest.mark.slow
def test_int8_build_applies_and_records_adaround(tmp_path):
    import json

    from edgekit.pipeline import compress

    x = _digits()
    compress(_model(), (x[:1],), targets=["x86-onnxruntime-int8"], out_dir=tmp_path / "b",
             input_names=["x"], output_names=["y"], progress=False,
             calibration=[x[i:i + 1].numpy() for i in range(32)],
             quantization={"adaround": True, "latency_check": False, "fallback": False,
                           "equalize": True})
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    q = man["targets"]["x86-onnxruntime-int8"]["quantization"]
    t = q["transforms"]
    assert q["config"]["adaround"] is True
    assert t["applied"] == ["equalize", "adaround"]
    assert [r["layer"] for r in t["adaround_layers"]] == ["conv1", "conv2", "dw", "head"]
    assert "adaround" in t["skipped"]["bias_correction"]
