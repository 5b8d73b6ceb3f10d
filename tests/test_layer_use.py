"""Layers an artifact cannot hold: dropped (output unused) or folded (input-independent)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekit.quantize.layer_use import layer_use


class _Odd(nn.Module):
    """A pooler whose output is thrown away, and a projection of a learned table (the same
    tensor for every input), beside layers that see the input."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.table = nn.Parameter(torch.randn(4, 16))
        self.table_proj = nn.Linear(16, 16)
        self.body = nn.Linear(16, 16)
        self.pooler = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.table_proj(self.table)
        h = self.body(torch.relu(h))
        self.pooler(h[:, 0])  # computed, never returned
        return h


def _samples(n: int = 8) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(1, 4, 8, generator=g),) for _ in range(n)]


def test_unused_and_constant_layers_are_found_and_the_model_left_as_it_was():
    torch.manual_seed(0)
    model = _Odd().train()
    model.body.weight.requires_grad_(False)
    names = ["embed", "table_proj", "body", "pooler"]
    assert layer_use(model, _samples(2), names) == {"table_proj": "constant", "pooler": "unused"}
    assert model.training and not model.body.weight.requires_grad
    assert model.pooler.weight.requires_grad and model.pooler.weight.grad is None


def test_cannot_tell_gives_nothing():
    torch.manual_seed(0)
    model = _Odd().eval()
    names = ["embed", "table_proj", "body", "pooler"]
    same = _samples(1) * 2
    assert layer_use(model, same, names) == {}  # equal outputs: no input dependence to see
    assert layer_use(model, _samples(1), names) == {}  # one sample
    assert layer_use(nn.Identity(), _samples(2), ["x"]) == {}  # no such layer


@pytest.mark.parametrize("target", ["x86-onnxruntime-int8", "x86-openvino-int8"])
def test_manifest_says_why_a_layer_has_no_precision_in_the_file(tmp_path, target):
    from edgekit.pipeline import compress

    torch.manual_seed(0)
    model = _Odd().eval()
    data = _samples(16)
    compress(model, data[0], targets=[target], out_dir=tmp_path / "b", calibration=data,
             progress=False, quantization={"latency_check": False, "fallback": False})
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][target]
    rows = {r["layer"]: r for r in entry["quantization"]["layers"]}
    assert (rows["pooler"]["precision"], rows["pooler"]["precision_from"]) == ("absent", "model")
    assert "reaches no model output" in rows["pooler"]["reason"]
    assert (rows["table_proj"]["precision"], rows["table_proj"]["precision_from"]) == (
        "folded", "model")
    for name in ("embed", "body"):
        assert (rows[name]["precision"], rows[name]["precision_from"]) == ("int8", "artifact")
