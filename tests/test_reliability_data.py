"""Reliability cases 8 and 9: evaluation and calibration data that do not fit the model, and
the report when an artifact disagrees with its PyTorch reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.cli import main
from edgekit.errors import (
    DataError,
    ShapeError,
    VerificationError,
)

from reliability_helpers import bench_cli, fake_bundle, have, onnx_file, rel

# =========================================================================== case 8


def _cand(shape, dtype="float32"):
    from edgekit.backends import TensorSpec

    return SimpleNamespace(name="m", inputs=[TensorSpec("x", tuple(shape), dtype)])


@rel(case=8, behaviour="evaluation data (bench --data) with the wrong shape, layout (NHWC vs "
     "NCHW), dtype or NaN/inf values: ShapeError/DataError naming the input, before any run")
def test_eval_data_checks(tmp_path, capsys):
    from edgekit.bench import check_data_fits

    c = _cand((1, 3, 8, 8))
    check_data_fits(c, [np.zeros((5, 3, 8, 8), np.float32)], "data d.npz")
    with pytest.raises(ShapeError, match=r"input 'x'.*\[3, 8, 8\].*\[8, 8, 3\].*layout"):
        check_data_fits(c, [np.zeros((5, 8, 8, 3), np.float32)], "data d.npz")
    with pytest.raises(ShapeError, match=r"\[3, 8, 8\].*\[3, 4, 4\]"):
        check_data_fits(c, [np.zeros((5, 3, 4, 4), np.float32)], "data d.npz")
    with pytest.raises(ShapeError, match="takes int64, the data is float32"):
        check_data_fits(_cand((1, 6), "int64"), [np.zeros((5, 6), np.float32)], "data d.npz")
    with pytest.raises(ShapeError, match="does not convert"):
        check_data_fits(c, [np.array([["a"] * 192] * 5).reshape(5, 3, 8, 8)], "data d.npz")
    bad = np.zeros((5, 3, 8, 8), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="input 'x' holds 1 NaN"):
        check_data_fits(c, [bad], "data d.npz")
    if have("onnx"):  # the same through the CLI: exit 2, nothing benchmarked
        path = onnx_file(tmp_path / "m")
        data = tmp_path / "d.npz"
        np.savez(data, x=np.full((4, 4), np.nan, np.float32), y=np.zeros(4, np.int64))
        argv = [a for a in bench_cli(str(path)) if a not in ("--data", "none")]
        assert main([*argv, "--data", str(data), "--metric", "mse"]) == 2
        assert "NaN" in capsys.readouterr().err


@rel(case=8, behaviour="calibration data with the wrong shape, layout, dtype, NaN, or a value "
     "range unlike the reference (0..255 vs 0..1): errors naming the input / a range warning")
def test_calibration_data_checks():
    from edgekit.quantize.calibration import CalibrationRangeWarning, calibration_batches

    ex = [torch.rand(1, 3, 8, 8)]
    kw = {"example_inputs": ex, "input_names": ["x"]}
    with pytest.raises(ShapeError, match="layout mismatch"):
        calibration_batches([np.zeros((4, 8, 8, 3), np.float32)], **kw)
    with pytest.raises(ShapeError, match=r"input 'x'.*\[3, 4, 4\]"):
        calibration_batches([np.zeros((4, 3, 4, 4), np.float32)], **kw)
    with pytest.raises(ShapeError, match="input 'ids' has dtype float32, the model takes int64"):
        calibration_batches([np.zeros((4, 6), np.float32)], input_names=["ids"],
                            example_inputs=[torch.zeros(1, 6, dtype=torch.int64)])
    with pytest.raises(DataError, match="input 'x' holds <U1 data, not numbers"):
        calibration_batches([np.array(["a"] * 192 * 2).reshape(2, 3, 8, 8)], **kw)
    nan = np.zeros((4, 3, 8, 8), np.float32)
    nan[1] = np.inf
    with pytest.raises(DataError, match="NaN or infinite"):
        calibration_batches([nan], **kw)
    with pytest.warns(CalibrationRangeWarning, match="0..255"):
        calibration_batches([np.random.default_rng(0).integers(0, 256, (8, 3, 8, 8))
                             .astype(np.float32)], **kw)


# =========================================================================== case 9


class _Session:
    backend = "onnxruntime"

    def __init__(self, offset: float) -> None:
        self.outputs = [SimpleNamespace(name="logits"), SimpleNamespace(name="embedding")]
        self.inputs = []
        self.offset = offset
        self.info = {"runtime": "onnxruntime", "version": "1.31.1", "threads": 1}

    def run(self, feeds):
        x = feeds[0]
        return [x.sum(1, keepdims=True) + self.offset, x * 2 + self.offset / 10]


class _Ref(nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True), x * 2


@rel(case=9, behaviour="runtimes that disagree beyond tolerance: VerificationError with max "
     "abs/rel error per output, the worst output, and runtime + torch versions")
def test_disagreement_report(tmp_path, capsys):
    from edgekit.verify import verify

    samples = [[np.ones((1, 4), np.float32)]]
    report = verify(_Ref(), _Session(0.5), samples, tolerance={"max_abs": 1e-3})
    with pytest.raises(VerificationError) as info:
        report.raise_for_failure(context="target x86-onnxruntime-fp32")
    msg = str(info.value)
    assert "output 'logits'" in msg and "output 'embedding'" in msg
    assert "max abs 0.5" in msg and "max rel 0.125" in msg
    assert "worst output: 'logits'" in msg
    assert "runtime: onnxruntime 1.31.1" in msg
    assert f"torch {torch.__version__.split('+')[0]}" in msg
    # the same through `edgekit verify` on a bundle whose reference disagrees
    if have("onnx") and have("onnxruntime"):
        src = onnx_file(tmp_path / "m")
        root = fake_bundle(tmp_path / "b", "onnxruntime",
                            {"t/model.onnx": src.read_bytes(),
                             "t/model.onnx.data": (src.parent / "model.onnx.data").read_bytes()})
        assert main(["verify", str(root)]) == 1
        out = capsys.readouterr().out
        assert "FAILED" in out and "max rel" in out and "onnxruntime 1." in out
