"""Models whose forward returns a dict, nested tuples or ``None`` entries: built like any
other, outputs named after the keys, the user's model left as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ShapeError
from edgekit.model_outputs import flat_view, output_leaves
from edgekit.pipeline import compress

ORT = "x86-onnxruntime-fp32"


class Detector(nn.Module):
    """Boxes in pixels beside class probabilities, as a dict (and an unused ``None`` entry)."""

    def __init__(self, keys: tuple[str, str] = ("boxes", "probs")) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.keys = keys
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.box = nn.Linear(8, 4)
        self.cls = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        f = self.body(x)
        return {self.keys[0]: self.box(f) * 300.0, "aux": None,
                self.keys[1]: self.cls(f).softmax(-1)}


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        h = self.fc(x)
        return {"logits": h, "hidden": (x, torch.tanh(h)), "past": None}


def test_leaves_are_named_by_their_path_and_none_is_skipped():
    t = torch.zeros(1)
    got = output_leaves({"logits": t, "hidden": (t, [t]), "none": None})
    assert [n for n, _ in got] == ["logits", "hidden_0", "hidden_1_0"]


def test_a_dict_output_builds_with_the_keys_as_output_names(tmp_path):
    model = Detector().eval()
    x = torch.rand(1, 1, 12, 12)
    bundle = compress(model, x, targets=[ORT, "arm64-tflite-fp32"], out_dir=tmp_path / "b",
                      progress=False)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    for target in (ORT, "arm64-tflite-fp32"):
        outs = manifest["targets"][target]["artifact"]["outputs"] \
            if "artifact" in manifest["targets"][target] else None
        session = bundle.load(target)
        assert [o.name for o in session.outputs] == ["boxes", "probs"], (target, outs)
        got = session.run([x.numpy()])
        ref = model(x)
        np.testing.assert_allclose(got[0], ref["boxes"].detach().numpy(), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got[1], ref["probs"].detach().numpy(), rtol=1e-4, atol=1e-6)
    # the user's model is the one it was: its class, its dict output
    assert type(model) is Detector and isinstance(model(x), dict)


def test_nested_outputs_and_given_names(tmp_path):
    model = Nested().eval()
    x = torch.randn(2, 6)
    b = compress(model, x, targets=[ORT], out_dir=tmp_path / "a", progress=False)
    assert [o.name for o in b.load(ORT).outputs] == ["logits", "hidden_0", "hidden_1"]
    b = compress(model, x, targets=[ORT], out_dir=tmp_path / "b", progress=False,
                 output_names=["y", "x_copy", "t"])
    got = b.load(ORT).run([x.numpy()])
    assert [o.name for o in b.load(ORT).outputs] == ["y", "x_copy", "t"]
    np.testing.assert_allclose(got[2], torch.tanh(model.fc(x)).detach().numpy(), atol=1e-5)


def test_keys_that_are_no_tensor_names_give_numbered_outputs(tmp_path):
    model = Detector(keys=("box coords", "class/probs")).eval()
    b = compress(model, torch.rand(1, 1, 12, 12), targets=[ORT], out_dir=tmp_path / "b",
                 progress=False)
    assert [o.name for o in b.load(ORT).outputs] == ["output_0", "output_1"]


def test_a_leaf_that_is_not_a_tensor_is_named_in_the_error(tmp_path):
    class Tagged(nn.Module):
        def forward(self, x):
            return {"y": x * 2, "label": "cat"}

    with pytest.raises(ShapeError) as err:
        compress(Tagged(), torch.rand(1, 3), targets=[ORT], out_dir=tmp_path / "b",
                 progress=False)
    assert "label: str" in str(err.value) and "model(x).logits" in (err.value.hint or "")
    assert not (tmp_path / "b").exists()


def test_the_flat_view_shares_modules_and_names_and_an_int8_build_keeps_them(tmp_path):
    model = Detector().eval()
    view = flat_view(model)
    assert [n for n, _ in view.named_modules()] == [n for n, _ in model.named_modules()]
    assert view.box is model.box and type(view).__name__ == "Detector"
    g = torch.Generator().manual_seed(0)
    cal = [[torch.rand(1, 1, 12, 12, generator=g).numpy()] for _ in range(24)]
    compress(model, torch.from_numpy(cal[0][0]), targets=["x86-onnxruntime-int8"],
             out_dir=tmp_path / "q", calibration=cal, progress=False,
             quantization={"keep_float": ["cls"], "latency_check": False})
    q = json.loads((tmp_path / "q" / "manifest.json").read_text())["targets"][
        "x86-onnxruntime-int8"]["quantization"]
    assert q["float_layers"] == ["cls"]
    assert type(model) is Detector and isinstance(model(torch.rand(1, 1, 12, 12)), dict)


def test_a_hugging_face_model_builds_as_it_is(tmp_path):
    """A transformers model returns a ``ModelOutput``: passed to compress without a wrapper,
    its tensors (``last_hidden_state``, ``pooler_output``) are the outputs, by name, int8
    with the model's own layer names."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.ResNetModel(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    g = torch.Generator().manual_seed(0)
    cal = [[torch.randn(1, 3, 32, 32, generator=g).numpy()] for _ in range(24)]
    x = torch.from_numpy(cal[0][0])
    b = compress(model, x, targets=[ORT, "x86-onnxruntime-int8"], out_dir=tmp_path / "b",
                 calibration=cal, progress=False, quantization={"latency_check": False})
    session = b.load(ORT)
    assert [o.name for o in session.outputs] == ["last_hidden_state", "pooler_output"]
    np.testing.assert_allclose(session.run([x.numpy()])[1],
                               model(x).pooler_output.detach().numpy(), rtol=1e-4, atol=1e-5)
    q = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][
        "x86-onnxruntime-int8"]["quantization"]
    layers = {r.get("layer") for r in q["layers"]}
    assert any(str(m).startswith("embedder.") for m in layers), sorted(map(str, layers))[:5]


def test_a_class_that_refuses_subclasses_gets_a_clear_error(tmp_path):
    class Final(nn.Module):
        def __init_subclass__(cls, **kwargs):
            raise TypeError("Final cannot be subclassed")

        def forward(self, x):
            return {"y": x * 2}

    with pytest.raises(ShapeError) as err:
        compress(Final(), torch.rand(1, 3), targets=[ORT], out_dir=tmp_path / "b",
                 progress=False)
    assert "Final cannot be subclassed" in str(err.value)
    assert "tuple of tensors" in (err.value.hint or "")
    assert not (tmp_path / "b").exists()


def test_explain_reads_a_dict_output_model(tmp_path):
    """``edgekit.explain`` on a bundle built from a dict-output model, with that model: every
    layer mapped, the output heads by their own names."""
    import edgekit

    model = Detector().eval()
    g = torch.Generator().manual_seed(0)
    cal = [[torch.rand(1, 1, 12, 12, generator=g).numpy()] for _ in range(24)]
    compress(model, torch.from_numpy(cal[0][0]), targets=["x86-onnxruntime-int8"],
             out_dir=tmp_path / "b", calibration=cal, progress=False,
             quantization={"latency_check": False})
    table = edgekit.explain(model, bundle=tmp_path / "b", progress=False).table()
    assert "coverage 6/6" in table, table
    assert all(f" {name} " in table for name in ("body.0", "box", "cls")), table
