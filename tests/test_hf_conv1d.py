"""Hugging Face's ``Conv1D`` (GPT-2's projections: a linear layer with an ``(in, out)``
weight) counts as a linear layer: it is listed, fake-quantized per output channel for the
sensitivity ranking, and its precision is read back from the artifact."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekit.quantize.sensitivity import _quantized_only, quantizable_layers

transformers = pytest.importorskip("transformers")


from hf_tiny import Gpt2, token_ids  # noqa: E402 - after the import skip


def _conv1d_names(model: nn.Module) -> set[str]:
    from transformers.pytorch_utils import Conv1D

    return {n for n, m in model.named_modules() if isinstance(m, Conv1D)}


def test_conv1d_layers_are_listed_as_linear():
    model = Gpt2().eval()
    kinds = dict(quantizable_layers(model))
    conv1d = _conv1d_names(model)
    assert len(conv1d) == 8 and all(kinds.get(n) == "linear" for n in conv1d)
    assert kinds.get("lm.lm_head") == "linear"


def test_conv1d_weight_is_fake_quantized_per_output_channel():
    model = Gpt2().eval()
    name = "lm.transformer.h.0.mlp.c_fc"
    w = model.get_submodule(name).weight
    before = w.detach().clone()
    with _quantized_only(model, name, {}, per_channel=True):
        q = w.detach().clone()
    assert torch.equal(w.detach(), before)  # restored
    step = before.abs().amax(0) / 127.0  # one scale per output column (dim 1)
    levels = q / step
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert not torch.allclose(q / (before.abs().amax(1, keepdim=True) / 127.0),
                              (q / (before.abs().amax(1, keepdim=True) / 127.0)).round(),
                              atol=1e-3)  # not per input row


def test_onnxruntime_reads_conv1d_precision_from_the_file(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgekit.pipeline import compress

    model = Gpt2().eval()
    data = [token_ids(100 + i) for i in range(16)]
    compress(model, (data[0],), targets=["x86-onnxruntime-int8"], out_dir=tmp_path / "b",
             calibration=data, progress=False,
             quantization={"latency_check": False, "fallback": False})
    q = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][
        "x86-onnxruntime-int8"]["quantization"]
    rows = {r["layer"]: r for r in q["layers"]}
    for name in _conv1d_names(model):
        assert rows[name]["precision"] == "int8", rows[name]
        assert rows[name]["precision_from"] == "artifact", rows[name]
