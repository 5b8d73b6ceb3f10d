"""The manifest reads every layer's precision back from the artifact for models whose module
names look like a library's: classes in packages whose paths hold underscores
(``transformers.models.bert.modeling_bert``), layers inside a ``ModuleList`` that LiteRT leaves
out of its tensor names, and convolutions whose batch norm the ONNX exporter folds in (the
fused node carries the norm's name)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekit.backends.tflite_int8 import _tflite_module
from edgekit.pipeline import compress
from edgekit.quantize.executed import layer_precisions

pytest.importorskip("onnxruntime")


def test_litert_names_in_packages_with_underscores():
    name = ("pkg._Wrap/transformers.models.distilbert.modeling_distilbert.DistilBertModel_m/"
            "transformers.models.distilbert.modeling_distilbert.TransformerBlock_0/"
            "torch.nn.modules.linear.Linear_q_lin;1")
    assert _tflite_module(name) == "m.0.q_lin"
    assert _tflite_module("__main__.Net/torch.nn.modules.linear.Linear_head;") == "head"
    assert _tflite_module("a.Net/x._Private_inner/torch.nn.modules.linear.Linear_fc") == \
        "inner.fc"


def test_rows_with_container_names_left_out_in_the_middle():
    layers = ["m.enc.layer.0.q", "m.enc.layer.1.q", "m.enc.layer.1.ffn.fc", "m.head",
              "m.enc.layer.1.attention.output.dense", "m.enc.layer.1.output.dense"]
    rows = [{"node": "a", "module": "m.enc.1.q", "precision": "int8"},
            {"node": "b", "module": "m.enc.0.q", "precision": "fp32"},
            {"node": "c", "module": "m.enc.1.ffn.fc", "precision": "int8"},
            {"node": "d", "module": "m.enc.1.ffn.fc", "precision": "int8"},
            {"node": "e", "module": "m.enc.1.attn", "precision": "fp32"},
            # MobileViT: "1.output.dense" is also "1.attention.output.dense" less a part
            {"node": "f", "module": "m.enc.1.attention.output.dense", "precision": "int8"},
            {"node": "g", "module": "m.enc.1.output.dense", "precision": "fp32"}]
    assert layer_precisions(rows, layers) == {
        "m.enc.layer.0.q": "fp32", "m.enc.layer.1.q": "int8", "m.enc.layer.1.ffn.fc": "int8",
        "m.enc.layer.1.attention.output.dense": "int8", "m.enc.layer.1.output.dense": "fp32"}


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.normalization = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.normalization(self.convolution(x))) + x


# named as a library's class is: transformers.models.resnet.modeling_resnet.ResNetStage
Block.__module__ = "library.models.modeling_blocks"


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([Block(8), Block(8)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = Body()
        self.head = nn.Linear(8, 4)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # a trained-looking norm, not the identity
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("target", ["x86-onnxruntime-int8", "x86-openvino-int8",
                                    "arm64-tflite-int8"])
def test_every_layer_is_read_from_the_artifact(tmp_path, target):
    if "openvino" in target:
        pytest.importorskip("openvino")
    if "tflite" in target:
        pytest.importorskip("litert_torch")
    g = torch.Generator().manual_seed(1)
    cal = [torch.randn(1, 1, 12, 12, generator=g) for _ in range(16)]
    compress(Net().eval(), (cal[0],), targets=[target], out_dir=tmp_path / "b",
             calibration=cal, progress=False,
             # no float transform: edgekit folds no norm, the ONNX exporter does
             quantization={"latency_check": False, "fallback": False, "equalize": False,
                           "bias_correction": False, "smoothquant": False, "adaround": False})
    layers = json.loads((tmp_path / "b" / "manifest.json").read_text()
                        )["targets"][target]["quantization"]["layers"]
    got = {r["layer"]: (r["precision"], r["precision_from"]) for r in layers}
    assert got == {name: ("int8", "artifact") for name in [
        "stem", "body.stages.0.convolution", "body.stages.1.convolution", "head"]}
