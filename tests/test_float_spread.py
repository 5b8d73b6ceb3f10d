"""Layers kept in float take the weight-free ops that only feed them with them: a model whose
forward writes ``fuse(torch.cat([a, b, a * b]))`` has no int8 ``cat`` or ``mul`` left once
``fuse`` is kept in float, on every runtime."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends._float_spread import spread_float
from edgekit.pipeline import compress

ORT, OV, TFL = "x86-onnxruntime-int8", "x86-openvino-int8", "arm64-tflite-int8"


class CatMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(16, 32), nn.Linear(16, 32)
        self.fuse, self.head = nn.Linear(96, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), 4.0 * self.b(x)  # three tensors of different ranges in one cat
        return self.head(torch.relu(self.fuse(torch.cat([a, b, a * b], dim=1))))


def test_spread_follows_consumers_and_stops_at_weights_and_outputs():
    consumers = {"a": ["mul", "cat"], "b": ["mul", "cat"], "mul": ["cat"], "cat": ["fuse"],
                 "fuse": ["head"], "x2": ["<output>", "fuse"], "t": ["a"]}
    free = {"mul", "cat", "x2", "t"}
    assert spread_float({"fuse"}, consumers, free) == ["cat", "mul"]
    assert spread_float(set(), consumers, free) == []  # nothing kept: nothing moves
    # a node that also feeds an int8 node (or a model output) stays as configured
    assert spread_float({"fuse"}, {**consumers, "mul": ["cat", "head"]}, free) == ["cat"]
    # chains: a transpose feeding only a float layer goes with it
    assert spread_float({"a"}, consumers, free) == ["t"]


def _data(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 16, generator=g) for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("target", [ORT, OV, TFL])
def test_every_layer_kept_in_float_leaves_nothing_in_int8(tmp_path, target):
    torch.set_num_threads(1)
    model = CatMul().eval()
    keep = ["a", "b", "fuse", "head"]
    bundle = compress(model, (torch.randn(1, 16),), targets=[target], out_dir=tmp_path / "b",
                      calibration=_data(24), input_names=["x"], output_names=["y"],
                      progress=False, quantization={"latency_check": False,
                                                    "keep_float": keep, "fallback": False})
    sess = bundle.load(target)
    worst = 0.0
    for x in _data(8):
        with torch.no_grad():
            ref = model(x).numpy()
        got = np.asarray(sess.run([x.numpy()])[0])
        worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
    # before: the cat and mul stayed int8 (one scale for a, 4b and a*b), ~1e-2 off
    assert worst < 1e-4, worst
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][target]
    assert {r["layer"]: r["precision"] for r in entry["quantization"]["layers"]} == \
        dict.fromkeys(keep, "fp32")


@pytest.mark.slow
def test_onnxruntime_leaves_no_qdq_around_the_ops_feeding_a_float_layer(tmp_path):
    import onnx

    torch.set_num_threads(1)
    compress(CatMul().eval(), (torch.randn(1, 16),), targets=[ORT], out_dir=tmp_path / "b",
             calibration=_data(24), input_names=["x"], output_names=["y"], progress=False,
             quantization={"latency_check": False, "keep_float": ["fuse"], "fallback": False})
    proto = onnx.load(str(tmp_path / "b" / ORT / "model.onnx"))
    readers: dict[str, list[str]] = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    ops = [n for n in proto.graph.node if n.op_type in ("Concat", "Mul")]
    assert {n.op_type for n in ops} == {"Concat", "Mul"}
    # their outputs are not rounded (before: the cat's output went through one QDQ pair, on
    # one scale for a, 4b and a*b)
    assert all("QuantizeLinear" not in readers[o] for n in ops for o in n.output), \
        {n.name: [readers[o] for o in n.output] for n in ops}
    # the layers not kept are still int8: their weights are
    gemms = [n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert sum(made_by.get(n.input[1]) == "DequantizeLinear" for n in gemms) == 3
