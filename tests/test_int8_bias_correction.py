"""Bias correction on the QDQ model's own arithmetic (ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekit.quantize import QuantConfig


class CoarseTail(nn.Module):
    """Conv -> ReLU -> conv -> ReLU -> mean -> Linear: the calibration data holds rare bright
    images, so the activations sit on grids far coarser than their typical values, and rounding
    them shifts what the average pool hands the linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def _data(n: int, seed: int, bright: bool = True) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal(0.0, 0.3, (1, 1, 12, 12)).astype(np.float32)
        if bright and i % 8 == 0:
            x *= 400.0  # a rare bright image sets the ranges
        out.append([x])
    return out


def _toy(backend: str, n: int):
    """The model, its backend, ``n`` calibration batches and an example input."""
    from edgekit.backends import get_backend

    torch.manual_seed(0)
    cal = _data(n, 0)
    return CoarseTail().eval(), get_backend(backend), cal, (torch.from_numpy(cal[0][0]),)


def _build(tmp_path, on: bool):
    model, be, cal, ex = _toy("onnxruntime", 48)
    fp32 = be.export(model, ex, tmp_path / "fp32", input_names=["x"], output_names=["y"],
                     options={})
    art = be.quantize(model, ex, tmp_path / f"q{on}", input_names=["x"], output_names=["y"],
                      options={}, calibration=cal, fp32=fp32,
                      config=QuantConfig(int8_bias_correction=on, latency_check=False,
                                         fallback=False, equalize=False,
                                         bias_correction=False))
    return model, be.load(art, threads=1, options={}), art


def _errors(model: nn.Module, session) -> tuple[np.ndarray, float]:
    """Per-output mean error and the SQNR (dB) on typical images the correction did not see."""
    refs, outs = [], []
    for (x,) in _data(64, 7, bright=False):
        with torch.no_grad():
            refs.append(model(torch.from_numpy(x)).numpy().astype(np.float64))
        outs.append(session.run([x])[0].astype(np.float64))
    ref, out = np.concatenate(refs), np.concatenate(outs)
    err = out - ref
    return err.mean(0), float(10 * np.log10((ref ** 2).sum() / (err ** 2).sum()))


def test_bias_correction_on_the_qdq_model_removes_the_shift_its_activations_add(tmp_path):
    import onnx
    from onnx import numpy_helper

    model, plain, plain_art = _build(tmp_path, False)
    _, fixed, fixed_art = _build(tmp_path, True)
    record = fixed_art.info["quantization"]["int8_bias_correction"]
    assert record["applied"] is True and record["layers"] == 3 and record["corrected"] >= 2, record
    assert record["sqnr_after_db"] > record["sqnr_before_db"]
    assert record["fit_sqnr_after_db"] > record["fit_sqnr_before_db"]
    assert record["corrected"] + record["undone"] <= record["layers"]
    assert plain_art.info["quantization"]["int8_bias_correction"] is None

    shift_plain, db_plain = _errors(model, plain)
    shift_fixed, db_fixed = _errors(model, fixed)
    assert np.abs(shift_fixed).max() < 0.5 * np.abs(shift_plain).max(), (shift_plain,
                                                                          shift_fixed)
    assert db_fixed > db_plain + 1.0, (db_plain, db_fixed)

    # only the int32 biases moved: the int8 weights and every scale are the same
    a, b = (onnx.load(str(art.path)) for art in (plain_art, fixed_art))
    ia = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    assert ia.keys() == ib.keys()
    moved = sorted(k for k in ia if not np.array_equal(ia[k], ib[k]))
    assert moved and all(k.endswith("bias_quantized") and ia[k].dtype == np.int32
                         for k in moved), moved

    # the same recipe gives the same bytes
    (tmp_path / "again").mkdir()
    _, _, again = _build(tmp_path / "again", True)
    assert again.path.read_bytes() == fixed_art.path.read_bytes()


def test_openvino_qdq_source_skips_the_correction_and_says_why(tmp_path):
    model, be, cal, ex = _toy("openvino", 16)
    art = be.quantize(model, ex, tmp_path / "ov", input_names=["x"], output_names=["y"],
                      options={}, calibration=cal,
                      config=QuantConfig(int8_bias_correction=True, openvino_source="qdq",
                                         latency_check=False, fallback=False))
    record = art.info["quantization"]["int8_bias_correction"]
    assert record["applied"] is False and "ONNX Runtime" in record["skipped"], record
