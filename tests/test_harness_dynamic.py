"""`edgekit bench` on artifacts with dynamic dimensions and unnamed outputs: timed at a real
shape, and never a number for a run that did no work."""

import numpy as np
import pytest
import torch

import edgekit
from edgekit.bench.candidates import artifact_from_file
from edgekit.bench.local_run import parse_shape
from edgekit.errors import ModelRunError, ShapeError, UsageError

ov = pytest.importorskip("openvino")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return _Net().eval()


def _ir(path, shape, *, output_name=None):
    """An IR saved by openvino itself (convert_model + save_model) with ``shape`` (-1 =
    dynamic) and, unless ``output_name``, an output without any tensor name."""
    om = ov.convert_model(_net(), example_input=torch.rand(1, 3, 8, 8),
                          input=[ov.PartialShape(list(shape))])
    if output_name:
        om.outputs[0].get_tensor().set_names({output_name})
    ov.save_model(om, str(path))
    return path


@pytest.fixture(scope="module")
def irs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ir")
    return {"batch": _ir(d / "batch.xml", [-1, 3, 8, 8]),
            "batch_named": _ir(d / "batch_named.xml", [-1, 3, 8, 8], output_name="logits"),
            "hw": _ir(d / "hw.xml", [-1, 3, -1, -1], output_name="logits")}


def test_unnamed_output_and_dynamic_batch_run_at_batch_one(irs):
    art = artifact_from_file(irs["batch"])
    assert art.outputs[0].name == "output_0" and art.inputs[0].shape == (-1, 3, 8, 8)
    rep = edgekit.bench(irs["batch"], runs=5, warmup=1, memory=False, progress=False)
    row = rep["results"][0]
    assert row["status"] == "ok" and rep["status"] == "complete"
    assert row["latency"]["n"] == 5
    # the feeds and outputs timed were a real batch of one
    from edgekit.backends import get_backend

    s = get_backend("openvino").load(art, threads=1, options={})
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    out = s.run([x])[0]
    want = _net()(torch.from_numpy(x)).detach().numpy()
    assert out.shape == (1, 5) and np.allclose(out, want, atol=1e-4)
    # a second batch size on the same session resizes the request's input
    x3 = np.random.default_rng(1).random((3, 3, 8, 8), dtype=np.float32)
    assert np.allclose(s.run([x3])[0], _net()(torch.from_numpy(x3)).detach().numpy(),
                       atol=1e-4)


def test_dynamic_spatial_dims_need_an_input_shape(irs):
    with pytest.raises(UsageError, match=r"input 'x' of hw.xml has dynamic dimensions "
                                         r"\[-1, 3, -1, -1\].*") as err:
        edgekit.bench(irs["hw"], runs=3, warmup=0, memory=False, progress=False)
    assert "--input-shape" in (err.value.hint or "")
    rep = edgekit.bench(irs["hw"], runs=3, warmup=0, memory=False, progress=False,
                        input_shapes=[(1, 3, 16, 16)])
    assert rep["results"][0]["status"] == "ok"
    with pytest.raises(ShapeError, match=r"--input-shape 1x4x16x16 does not fit input 'x'"):
        edgekit.bench(irs["hw"], runs=3, warmup=0, memory=False, progress=False,
                      input_shapes=[(1, 4, 16, 16)])
    with pytest.raises(UsageError, match="2 --input-shape given but hw.xml takes 1"):
        edgekit.bench(irs["hw"], runs=3, warmup=0, memory=False, progress=False,
                      input_shapes=[(1, 3, 8, 8), (1, 3, 8, 8)])


def test_parse_shape():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    for bad in ("1x0x2", "1,3", "", "x3", "-1x3"):
        with pytest.raises(UsageError, match="bad --input-shape"):
            parse_shape(bad)


class _Empty(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 4:] * 2.0  # 4 columns in, none out


def test_a_run_with_an_empty_output_reports_no_latency(tmp_path):
    path = tmp_path / "empty.onnx"
    torch.onnx.export(_Empty().eval(), (torch.rand(1, 4),), str(path), dynamo=True,
                      input_names=["x"], output_names=["y"], external_data=False)
    with pytest.raises(ModelRunError, match=r"output 'y' came back empty \(shape \[1, 0\]\)"
                                            r".*no latency is reported"):
        edgekit.bench(path, runs=3, warmup=0, memory=False, progress=False)


def test_cli_input_shape_and_error_exit_code(irs, capsys):
    from edgekit.cli import main

    rc = main(["bench", str(irs["hw"]), "--runs", "3", "--warmup", "0", "--no-memory",
               "--json", "-q", "--input-shape", "1x3x12x12"])
    assert rc == 0
    import json

    rep = json.loads(capsys.readouterr().out)
    assert rep["results"][0]["latency"]["n"] == 3
    rc = main(["bench", str(irs["hw"]), "--runs", "3", "--no-memory", "-q"])
    assert rc == 2
    assert "--input-shape" in capsys.readouterr().err
