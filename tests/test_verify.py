"""verify(): per-output parity numbers, tolerances and the failure message."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import TensorSpec, get_backend
from edgekit.errors import UsageError, VerificationError
from edgekit.verify import Tolerance, VerifyReport, verify


class Passthrough(nn.Module):
    """Returns its input (and, with two outputs, the input twice)."""

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: torch.Tensor):
        return x.clone() if self.outputs == 1 else (x.clone(), x * 2)


class FakeSession:
    """A session that returns prepared arrays, one list per call."""

    backend = "fake"

    def __init__(self, names: list[str], replies: list[list[np.ndarray]]) -> None:
        self.inputs = [TensorSpec("x", (1,), "float32")]
        self.outputs = [TensorSpec(n, (1,), "float32") for n in names]
        self.info = {"precision": "f32"}
        self._replies = list(replies)
        self.calls = 0

    def run(self, feeds):
        self.calls += 1
        return self._replies.pop(0)


def test_numbers_on_hand_computed_arrays():
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    got = np.array([[3.0, 4.5]], dtype=np.float32)
    rep = verify(Passthrough(), FakeSession(["y"], [[got]]), [(x,)],
                 tolerance={"max_abs": 1.0, "min_cosine": 0.99})
    y = rep.output("y")
    assert y.max_abs == pytest.approx(0.5)
    assert y.max_rel == pytest.approx(0.5 / 4.0)
    # cos = (3*3 + 4*4.5) / (|(3,4)| * |(3,4.5)|) = 27 / (5 * sqrt(29.25))
    assert y.cosine == pytest.approx(27 / (5 * math.sqrt(29.25)))
    assert y.top1_agreement is None
    assert rep.passed and y.passed and y.failures == []
    rep.raise_for_failure()  # no error


def test_top1_agreement_and_worst_sample_cosine():
    ref1 = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.float32)   # argmax 2, 0
    ref2 = np.array([[0, 5, 1], [2, 0, 0]], dtype=np.float32)   # argmax 1, 0
    got1 = np.array([[1, 2, 3], [1, 2, 3]], dtype=np.float32)   # argmax 2, 2 -> 1 of 2
    got2 = np.array([[0, 5, 1], [0, 0, 2]], dtype=np.float32)   # argmax 1, 2 -> 1 of 2
    sess = FakeSession(["logits"], [[got1], [got2]])
    rep = verify(Passthrough(), sess, [(ref1,), (ref2,)], tolerance=Tolerance(None, None, 0.75),
                 classifier_outputs=["logits"])
    out = rep.output("logits")
    assert sess.calls == 2 and rep.num_samples == 2
    assert out.top1_agreement == pytest.approx(0.5)
    assert out.max_abs == pytest.approx(2.0)
    # per-sample cosines: sample 1: (1+4+9 + 3+4+3) / (sqrt(28)*sqrt(28)) = 24/28
    #                     sample 2: (0+25+1 + 0+0+0) / (sqrt(30)*sqrt(30)) = 26/30
    assert out.cosine == pytest.approx(24 / 28)
    assert out.mean_cosine == pytest.approx((24 / 28 + 26 / 30) / 2)
    assert not rep.passed
    assert out.failures == ["top-1 agreement 0.5000 (2/4) < tolerance 0.7500"]


def test_top1_as_a_rate_allows_the_flips_a_small_sample_gives():
    from edgekit.verify import flips_allowed

    # binomial upper tail at 1%: P(X >= 2 | 4 rows, 3%) = 0.5%, P(X >= 1) = 11.5%
    assert flips_allowed(4, 0.97) == 1 and flips_allowed(201, 0.97) == 12
    assert flips_allowed(4, 1.0) == 0 and flips_allowed(32, 0.97) == 4
    ref = np.array([[1, 2, 3], [3, 2, 1], [0, 5, 1], [2, 0, 0]], dtype=np.float32)
    one_flip = ref.copy()
    one_flip[0] = [3, 2, 1]
    two_flips = one_flip.copy()
    two_flips[1] = [1, 2, 3]
    tol = Tolerance(None, None, 0.97)
    for got, passed in ((one_flip, True), (two_flips, False)):
        rows = [(r[None],) for r in ref]
        sess = FakeSession(["logits"], [[g[None]] for g in got])
        rep = verify(Passthrough(), sess, rows, tolerance=tol, classifier_outputs=["logits"],
                     top1_as_rate=True)
        assert rep.passed is passed, rep.output("logits").failures
    assert rep.output("logits").failures == [
        "top-1 agreement 0.5000 (2/4): 2 disagreement(s), more than the 1 an agreement rate "
        "of 0.9700 gives on 4 rows with probability over 1%"]
    # as a plain threshold (a build's own verification), one flip in four fails
    sess = FakeSession(["logits"], [[g[None]] for g in one_flip])
    assert not verify(Passthrough(), sess, [(r[None],) for r in ref], tolerance=tol,
                      classifier_outputs=["logits"]).passed


def test_wrong_session_fails_naming_the_output():
    x = np.ones((1, 4), dtype=np.float32)
    good, bad = x.copy(), 2 * x + np.array([0, 0, 0, 0.5], dtype=np.float32)
    # second output is x*2 in the reference; the session gets it wrong by 0.5
    sess = FakeSession(["features", "scores"], [[good, bad]])
    rep = verify(Passthrough(outputs=2), sess, [(x,)],
                 tolerance={"max_abs": 1e-4, "min_cosine": 0.9999})
    assert rep.output("features").passed
    assert not rep.output("scores").passed
    assert rep.output("scores").max_abs == pytest.approx(0.5)
    with pytest.raises(VerificationError) as err:
        rep.raise_for_failure()
    msg = str(err.value)
    assert "'scores'" in msg and "'features'" not in msg
    assert "max abs diff 0.5 > tolerance 0.0001" in msg
    assert "cosine" in msg and "< tolerance 0.999900" in msg
    assert "1 of 2 output(s)" in msg


def test_shape_mismatch_and_nan_fail():
    x = np.ones((1, 3), dtype=np.float32)
    rep = verify(Passthrough(), FakeSession(["y"], [[np.ones((1, 4), np.float32)]]), [(x,)])
    assert not rep.passed
    assert "shape [1, 4] differs from the reference's [1, 3]" in rep.output("y").failures[0]

    nan = np.array([[1.0, np.nan, 1.0]], dtype=np.float32)
    rep = verify(Passthrough(), FakeSession(["y"], [[nan]]), [(x,)])
    assert not rep.passed and math.isnan(rep.output("y").max_abs)
    text = json.dumps(rep.to_json(), allow_nan=False)  # JSON stays strict
    assert '"max_abs": "nan"' in text


def test_zero_outputs_have_cosine_one():
    x = np.zeros((1, 3), dtype=np.float32)
    rep = verify(Passthrough(), FakeSession(["y"], [[x.copy()]]), [(x,)])
    assert rep.output("y").cosine == 1.0 and rep.output("y").max_abs == 0.0 and rep.passed


def test_reference_runs_in_eval_mode_and_mode_is_restored():
    class Drop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.9)

        def forward(self, x):
            return self.drop(x)

    model = Drop().train()
    x = np.ones((1, 1000), dtype=np.float32)
    rep = verify(model, FakeSession(["y"], [[x.copy()]]), [(x,)], tolerance={"max_abs": 0.0})
    assert rep.passed  # dropout in train mode would zero ~90% of the reference
    assert model.training and model.drop.training


def test_tolerance_and_argument_errors():
    assert Tolerance.coerce({"max_abs": 1e-3}) == Tolerance(max_abs=1e-3)
    assert Tolerance.coerce(None) == Tolerance()
    with pytest.raises(UsageError, match="max_diff"):
        Tolerance.coerce({"max_diff": 1})
    x = np.ones((1, 2), dtype=np.float32)
    with pytest.raises(UsageError, match="'probs' is not one of the outputs"):
        verify(Passthrough(), FakeSession(["y"], [[x]]), [(x,)], classifier_outputs=["probs"])
    with pytest.raises(UsageError, match="at least one sample"):
        verify(Passthrough(), FakeSession(["y"], []), [])


def test_to_json_round_trips():
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    rep = verify(Passthrough(), FakeSession(["y"], [[x + 1e-6]]), [(x,)],
                 classifier_outputs=[0])
    data = json.loads(json.dumps(rep.to_json(), allow_nan=False))
    assert data["passed"] is True and data["backend"] == "fake"
    assert data["tolerance"] == {"max_abs": 1e-4, "min_cosine": 0.999, "min_top1_agreement": 0.99}
    (y,) = data["outputs"]
    assert y["name"] == "y" and y["top1_agreement"] == 1.0 and y["max_abs"] < 2e-6
    assert data["session"] == {"precision": "f32"}


class SmallClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))

    def forward(self, x):
        return self.net(x)


def test_verify_real_onnxruntime_session(tmp_path):
    torch.manual_seed(0)
    model = SmallClassifier().eval()
    x = torch.randn(1, 1, 8, 8)
    be = get_backend("onnxruntime")
    art = be.export(model, (x,), tmp_path, input_names=["image"], output_names=["logits"],
                    options={})
    sess = be.load(art, threads=1, options={})
    rng = np.random.default_rng(0)
    samples = [(x.numpy(),)] + [(rng.standard_normal((1, 1, 8, 8)).astype(np.float32),)
                                for _ in range(50)]
    rep = verify(model, sess, samples, tolerance={"max_abs": 1e-4},
                 classifier_outputs=["logits"])
    assert isinstance(rep, VerifyReport) and rep.passed
    out = rep.output("logits")
    assert out.max_abs < 1e-5 and out.cosine > 0.99999 and out.top1_agreement == 1.0
    assert rep.session_info["providers"] == ["CPUExecutionProvider"]

    # a perturbed model is caught, naming the output
    with torch.no_grad():
        model.net[3].bias += 0.01
    rep = verify(model, sess, samples, tolerance={"max_abs": 1e-4})
    assert not rep.passed
    assert rep.output("logits").max_abs == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(VerificationError, match="output 'logits': max abs diff 0.01"):
        rep.raise_for_failure()
