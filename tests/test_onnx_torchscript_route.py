"""ONNX export falls back to the TorchScript exporter where the dynamo exporter fails: a
Hugging Face T5 encoder's attention reshapes a transposed tensor, which ``torch.export``
records as a ``view`` the ONNX exporter's decomposition cannot replay. The manifest says which
exporter wrote the file and why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.pipeline import compress

pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64,
                                       num_layers=2, num_heads=4)
        self.enc = transformers.T5EncoderModel(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.enc(ids).last_hidden_state


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(seed))


def test_t5_encoder_exports_through_torchscript_and_matches(tmp_path):
    model = Encoder().eval()
    bundle = compress(model, (_ids(0),), targets=["x86-onnxruntime-fp32"], out_dir=tmp_path / "b",
                      input_names=["ids"], output_names=["hidden"], progress=False)
    info = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][
        "x86-onnxruntime-fp32"]["artifact_info"]
    if "dynamo_error" not in info:  # a torch release that exports it: nothing to fall back on
        pytest.skip(f"the dynamo exporter exports this model now ({info['exporter']})")
    assert info["exporter"].startswith("torch.onnx.export(dynamo=False)")
    assert "view" in info["dynamo_error"]
    x = _ids(9)
    got = bundle.load("x86-onnxruntime-fp32").run([x.numpy()])[0]
    ref = model(x).detach().numpy()
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    # the TorchScript exporter's scoped node names give each node its PyTorch module
    import onnx

    from edgekit.backends.onnxruntime_int8 import onnx_node_modules

    proto = onnx.load(str(tmp_path / "b" / "x86-onnxruntime-fp32" / "model.onnx"))
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    mapped = set(onnx_node_modules(proto).values())
    assert linears <= mapped, sorted(linears - mapped)


def test_a_model_neither_exporter_takes_names_both_failures(tmp_path):
    """Both exporters fail: the dynamo exporter's error, with the TorchScript one's added."""
    from edgekit.errors import ExportError

    class Erfinv(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.erfinv(x.clamp(-0.9, 0.9))

    with pytest.raises(ExportError) as caught:
        compress(Erfinv().eval(), (torch.randn(1, 16),), targets=["x86-onnxruntime-fp32"],
                 out_dir=tmp_path / "b", progress=False)
    e = caught.value
    assert e.op and "erfinv" in e.op  # the dynamo exporter's diagnosis stands
    assert "TorchScript exporter failed too" in str(e) and "erfinv" in str(e)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*.onnx"))


def test_no_torchscript_fallback_for_control_flow_on_tensor_values(tmp_path):
    """A branch on a tensor's value: a trace would keep the example's branch and be wrong for
    other inputs, so the dynamo exporter's refusal stands."""
    from edgekit.errors import ExportError

    class Branch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x - 1

    with pytest.raises(ExportError) as caught:
        compress(Branch().eval(), (torch.ones(1, 4),), targets=["x86-onnxruntime-fp32"],
                 out_dir=tmp_path / "b", progress=False)
    assert "TorchScript" not in str(caught.value)
