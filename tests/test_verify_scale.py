"""Parity that scales with each output: the max_abs bound is tolerance x max(1, output scale),
per output, so outputs in the hundreds meet the same relative precision as outputs near 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import TensorSpec
from edgekit.errors import VerificationError
from edgekit.pipeline import compress
from edgekit.verify import verify


class BoxesAndProbs(nn.Module):
    """(boxes in pixels ~300, class probabilities): two outputs of very different scale."""

    def forward(self, x: torch.Tensor):
        return x * 300.0, torch.softmax(x, dim=-1)


class FakeSession:
    backend = "fake"

    def __init__(self, names: list[str], replies: list[list[np.ndarray]]) -> None:
        self.inputs = [TensorSpec("x", (1, 4), "float32")]
        self.outputs = [TensorSpec(n, (1, 4), "float32") for n in names]
        self.info: dict = {}
        self._replies = list(replies)

    def run(self, feeds):
        return self._replies.pop(0)


X = np.array([[0.9, 1.2, 1.5, 1.7]], dtype=np.float32)
BOXES, PROBS = X * 300.0, torch.softmax(torch.from_numpy(X), -1).numpy()
TOL = {"max_abs": 1e-3, "min_cosine": 0.99999}


def test_large_outputs_pass_at_a_small_relative_error():
    # boxes off by 0.05 px at a scale of 510 (relative 1e-4): within 1e-3 x 510
    got = [BOXES + np.float32(0.05), PROBS.copy()]
    rep = verify(BoxesAndProbs(), FakeSession(["boxes", "probs"], [got]), [(X,)], tolerance=TOL)
    boxes = rep.output("boxes")
    assert boxes.scale == pytest.approx(510.0, rel=1e-6)
    assert boxes.abs_bound == pytest.approx(0.51, rel=1e-6)
    assert boxes.max_abs == pytest.approx(0.05, rel=1e-3)
    assert rep.passed, rep.to_json()
    assert rep.to_json()["outputs"][0]["abs_bound"] == pytest.approx(0.51, rel=1e-6)


def test_each_output_is_held_to_its_own_scale():
    # probabilities off by 0.01: the boxes' scale does not loosen them (their bound is 1e-3)
    got = [BOXES.copy(), PROBS + np.array([[0.01, -0.01, 0, 0]], np.float32)]
    rep = verify(BoxesAndProbs(), FakeSession(["boxes", "probs"], [got]), [(X,)], tolerance=TOL)
    assert rep.output("boxes").passed
    probs = rep.output("probs")
    assert not probs.passed and probs.abs_bound == pytest.approx(1e-3)
    assert probs.failures[0].startswith("max abs diff 0.01 > tolerance 0.001")
    assert "output scale" not in probs.failures[0]  # scale <= 1: the plain absolute bound


def test_a_wrong_large_output_still_fails_with_the_scaled_bound_named():
    # boxes off by 5 px (1%): over 1e-3 x 510
    got = [BOXES + np.array([[0, 0, 0, 5]], np.float32), PROBS.copy()]
    rep = verify(BoxesAndProbs(), FakeSession(["boxes", "probs"], [got]), [(X,)], tolerance=TOL)
    with pytest.raises(VerificationError) as err:
        rep.raise_for_failure(context="target t")
    msg = str(err.value)
    assert "output 'boxes': max abs diff 5 > tolerance 0.001 x output scale 510 = 0.51" in msg
    assert "'probs'" not in msg


class Hundreds(nn.Module):
    """Outputs around 500 (regression targets in pixels)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 16 * 16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1)) * 500 + 500


@pytest.mark.slow
def test_outputs_in_the_hundreds_pass_fp32_on_every_runtime(tmp_path):
    torch.set_num_threads(1)
    model = Hundreds().eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = ["x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32"]
    compress(model, (x,), targets=targets, out_dir=tmp_path / "b", progress=False)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    for t in targets:
        out = manifest["targets"][t]["verification"]["outputs"][0]
        assert out["passed"] and out["scale"] > 400, (t, out)
        assert out["abs_bound"] == pytest.approx(1e-3 * out["scale"])
        assert out["max_abs"] <= out["abs_bound"]
        assert out["max_abs"] / out["scale"] < 1e-5  # fp32 parity, relative to the output
