"""Automatic fallback (the loop that keeps the most sensitive layers in float), with a fake
backend so it runs in a second; and the NaN / constant-output checks."""

import numpy as np
import pytest
import torch

from edgekit.backends import Artifact, TensorSpec
from edgekit.data.tasks import digit_classification
from edgekit.errors import QuantizationError
from edgekit.profiles import load_profile
from edgekit.quantize import QuantConfig, calibration_batches, layer_sensitivity
from edgekit.quantize.build import build_int8, check_outputs_sane
from edgekit.train import fit

from conftest import tiny_net

pytestmark = pytest.mark.slow


class FakeSession:
    backend = "fake"

    def __init__(self, model, good, mode="ok"):
        self.model, self.good, self.mode = model, good, mode
        self.inputs = [TensorSpec("image", (1, 1, 8, 8), "float32")]
        self.outputs = [TensorSpec("logits", (1, 10), "float32")]
        self.info = {"precision": "int8"}

    def run(self, feeds):
        with torch.no_grad():
            out = self.model(torch.from_numpy(feeds[0])).numpy()
        if self.mode == "nan":
            out[:] = np.nan
        if self.mode == "const":
            out = np.ones_like(out)
        return [out if self.good else np.roll(out, 1, axis=1)]


class FakeBackend:
    """int8 'export' that is accurate only once ``needed`` is kept in float."""

    name = "fake"
    qat_graph = False
    options_schema = {}

    def __init__(self, needed):
        self.needed = needed
        self.calls = []
        self.biases = []  # per quantize call: the biases of the model it was given
        self.models = []

    def int8_sources(self, config, model=None):
        return [("fake", {})]

    def int8_alternatives(self, config, model, *, sources_compared=False):
        other = "uint8" if config.activation_type == "int8" else "int8"
        return [(f"{other} activations", {"activation_type": other})]

    def quantize(self, model, inputs, out_dir, *, keep_float, **kw):
        self.calls.append(list(keep_float))
        self.biases.append({n: m.bias.detach().clone() for n, m in model.named_modules()
                            if getattr(m, "bias", None) is not None})
        self.models.append(model)
        (out_dir / "model.bin").write_bytes(b"x")
        return Artifact("fake", out_dir, ["model.bin"], [], [], "int8",
                        {"keep": list(keep_float)})

    def load(self, artifact, *, threads, options):
        return FakeSession(self.model, self.needed in artifact.info["keep"])


@pytest.fixture(scope="module")
def trained():
    task = digit_classification("digits8")
    model = tiny_net()
    fit(model, task, epochs=1, progress=False)
    calib = calibration_batches(task, example_inputs=(torch.zeros(1, 1, 8, 8),),
                                input_names=["image"], limit=32)
    return model, task, calib


def _build(trained, tmp_path, backend, **cfg):
    model, task, calib = trained
    backend.model = model
    return build_int8(backend, load_profile("x86-onnxruntime-int8"), model,
                      (torch.zeros(1, 1, 8, 8),), tmp_path / "t", in_names=["image"],
                      out_names=["logits"], calibration=calib, config=QuantConfig(**cfg),
                      task=task, batch=1, progress=False)


def test_fallback_keeps_most_sensitive_layer_in_float(trained, tmp_path):
    model, task, calib = trained
    most = layer_sensitivity(model, calib)[0]["layer"]
    backend = FakeBackend(needed=most)
    result = _build(trained, tmp_path, backend)
    # the runtime's other realisation (ONNX Runtime: int8 activations) first, all in int8;
    # then the most sensitive layer in float
    assert backend.calls == [[], [], [most]]
    m = result.quantization
    assert m["attempts"][1]["config"] == {"activation_type": "int8"}
    assert m["attempts"][1]["passed"] is False and m["accuracy_alternative"] is None
    assert m["fallback_layers"] == [most] and m["float_layers"] == [most]
    row = {r["layer"]: r for r in m["layers"]}[most]
    assert row["precision"] == "fp32" and row["reason"] == "automatic fallback (accuracy budget)"
    assert m["accuracy"]["drop"] <= 1.0 and len(m["attempts"]) == 3


def test_a_layer_the_fallback_keeps_in_float_carries_no_bias_correction(trained, tmp_path):
    # bias correction moves each int8 layer's bias by its expected rounding error; a layer
    # kept in float has none, so the model its build exports has the user's bias there
    model, task, calib = trained
    most = layer_sensitivity(model, calib)[0]["layer"]
    backend = FakeBackend(needed=most)
    result = _build(trained, tmp_path, backend, bias_correction=True)
    assert backend.calls[-1] == [most]
    user = dict(model.named_modules())[most].bias
    corrected = backend.biases[0][most]
    assert not torch.allclose(corrected, user)  # corrected while int8
    # as the user's once in float (the correction taken back: float32 rounding only)
    assert torch.allclose(backend.biases[-1][most], user, rtol=0, atol=1e-7)
    other = next(n for n in backend.biases[0] if n != most)
    assert torch.equal(backend.biases[-1][other], backend.biases[0][other])
    t = result.quantization["transforms"]
    assert most not in t["bias_corrected"] and other in t["bias_corrected"]


def test_a_layer_kept_in_float_has_no_absorbed_bias(trained, tmp_path):
    # fc1 -> ReLU -> fc2 is equalized, and fc1's always-positive channels move their floor
    # into fc2's bias (exact only where fc1's output stays above it); keeping fc1 in float
    # rebuilds from a model without that move, which computes exactly the user's function
    _, task, calib = trained
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).eval()
    fit(model, task, epochs=1, progress=False)
    with torch.no_grad():
        model[1].bias[:8] += 6.0  # always positive on the data: absorbed
    backend = FakeBackend(needed="1")
    backend.model = model
    build_int8(backend, load_profile("x86-onnxruntime-int8"), model, (torch.zeros(1, 1, 8, 8),),
               tmp_path / "t", in_names=["image"], out_names=["logits"], calibration=calib,
               config=QuantConfig(equalize=True, bias_correction=False), task=task, batch=1,
               progress=False)
    assert backend.calls[0] == [] and "1" in backend.calls[-1]
    x = torch.from_numpy(np.concatenate([b[0] for b in calib])) * 3.0  # beyond calibration
    with torch.no_grad():
        ref, first, last = model(x), backend.models[0](x), backend.models[-1](x)
    assert (first - ref).abs().max() > 1e-3  # the absorbed floor departs off the data
    assert torch.allclose(last, ref, rtol=0, atol=1e-4)


def test_no_fallback_fails_with_table_and_suggestion(trained, tmp_path):
    model, task, calib = trained
    with pytest.raises(QuantizationError) as err:
        _build(trained, tmp_path, FakeBackend(needed="nothing"), fallback=False)
    assert err.value.suggested_float and {r["layer"] for r in err.value.table} == {"conv", "head"}
    assert "sqnr_db" in str(err.value) and not (tmp_path / "t").exists()


def test_nan_and_constant_outputs_are_errors(trained):
    model, task, calib = trained
    with pytest.raises(QuantizationError, match="NaN"):
        check_outputs_sane(FakeSession(model, True, "nan"), calib, "t")
    with pytest.raises(QuantizationError, match="constant"):
        check_outputs_sane(FakeSession(model, True, "const"), calib, "t", model)
    check_outputs_sane(FakeSession(model, True), calib, "t", model)


class EqualizeSensitiveBackend(FakeBackend):
    """int8 'export' that is accurate only from an equalized model (``equalized``) or only
    from one that is not: told apart by the first linear layer's weight, which equalization
    rescales and bias correction leaves alone."""

    def __init__(self, user, equalized):
        super().__init__(needed="")
        self.user, self.equalized = user, equalized

    def quantize(self, model, inputs, out_dir, *, keep_float, **kw):
        art = super().quantize(model, inputs, out_dir, keep_float=keep_float, **kw)
        art.info["model"] = len(self.models) - 1
        return art

    def load(self, artifact, *, threads, options):
        model = self.models[artifact.info["model"]]
        was = not torch.equal(model[1].weight, self.user[1].weight)
        return FakeSession(model, was == self.equalized)


def _linear_pair(task):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).eval()
    fit(model, task, epochs=1, progress=False)
    return model


@pytest.mark.parametrize("equalized", [False, True])
def test_equalize_auto_keeps_the_build_that_passes(trained, tmp_path, equalized):
    _, task, calib = trained
    model = _linear_pair(task)
    backend = EqualizeSensitiveBackend(model, equalized)
    backend.model = model

    class Decisions:  # what a build cache keeps between builds
        where, record = "memory", None

        def load(self):
            return self.record

        def save(self, record):
            self.record = record

    decisions = Decisions()

    def build(folder):
        return build_int8(backend, load_profile("x86-onnxruntime-int8"), model,
                          (torch.zeros(1, 1, 8, 8),), tmp_path / folder, in_names=["image"],
                          out_names=["logits"], calibration=calib,
                          config=QuantConfig(equalize="auto", fallback=False), task=task,
                          batch=1, progress=False, decisions=decisions)

    m = build("t").quantization
    choice = m["equalize_choice"]
    assert backend.calls[:2] == [[], []]  # the equalized build, then the one without
    assert choice["kept"] == ("equalized" if equalized else "not equalized")
    assert choice["equalized"]["passed"] is equalized
    assert choice["not_equalized"]["passed"] is not equalized
    assert choice["why"].startswith("the only one of the two that passes the gate")
    # what was shipped is what the record says: its transforms, its decision
    assert ("equalize" in m["transforms"]["applied"]) is equalized
    assert m["config"]["equalize"] is equalized
    assert m["decisions"]["config"]["equalize"] is equalized
    assert m["accuracy"]["drop"] <= 1.0
    # a rebuild from the recorded decision builds the kept one alone, and it passes
    before = len(backend.calls)
    again = build("again").quantization
    assert len(backend.calls) == before + 1
    assert ("equalize" in again["transforms"]["applied"]) is equalized


def test_equalize_auto_compares_nothing_where_nothing_is_equalized(trained, tmp_path):
    # tiny_net has no conv/linear -> ReLU -> conv/linear chain: one build, no record
    backend = FakeBackend(needed="")
    backend.load = lambda artifact, **kw: FakeSession(backend.model, True)
    result = _build(trained, tmp_path, backend, equalize="auto", fallback=False)
    m = result.quantization
    assert backend.calls == [[]] and m["equalize_choice"] is None
    assert "equalize" not in m["transforms"]["applied"]


def test_equalize_setting_is_checked():
    from edgekit.errors import ConfigError, UsageError

    with pytest.raises(UsageError, match="equalize 'sometimes' is not one of"):
        QuantConfig(equalize="sometimes")
    with pytest.raises(UsageError, match="equalize 1 is not one of"):
        QuantConfig(equalize=1)  # not true: a bool is asked for
    with pytest.raises(ConfigError, match=r"r\.toml \[quantization\].*equalize = 'yes' is "
                                          r"not one of false, true, 'auto'"):
        QuantConfig.from_table({"equalize": "yes"}, "r.toml [quantization]")
    assert QuantConfig.from_table({"equalize": "auto"}, "t").equalize == "auto"
    assert QuantConfig.from_table({"equalize": False}, "t").equalize is False
    assert QuantConfig().equalize == "auto"
