"""Softmax inputs behind an attention mask: quantized on the range the softmax needs, or kept
in float where even that grid is too coarse for the scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends.onnx_softmax_ranges import row_floor
from edgekit.quantize import QuantConfig


class MaskedAttention(nn.Module):
    """One attention layer over token embeddings with a padding mask, peaked scores (std ~1.4,
    max ~6): ``"additive"`` adds ``(1 - mask) * -1e4`` (BERT), ``"fill"`` fills the padded
    keys with the float32 minimum (Hugging Face's ``masked_fill``)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style
        self.embed = nn.Embedding(50, 32)
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.head = nn.Linear(32, 3)
        with torch.no_grad():
            self.q.weight *= 2
            self.k.weight *= 2

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        scores = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(32)
        if self.style == "fill":
            scores = scores.masked_fill(mask[:, None, :] == 0, torch.finfo(x.dtype).min)
        else:
            scores = scores + (1.0 - mask.to(x.dtype))[:, None, :] * -1e4
        return self.head(scores.softmax(-1) @ self.v(x))


def _data(n: int, seed: int) -> list[list[np.ndarray]]:
    """Token ids and masks, 3..16 real tokens of 16."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 17))
        tokens = np.zeros((1, 16), np.int64)
        tokens[0, :length] = rng.integers(1, 50, length)
        mask = np.zeros((1, 16), np.int64)
        mask[0, :length] = 1
        out.append([tokens, mask])
    return out


def _sqnr(model: nn.Module, session) -> float:
    num = den = 0.0
    for batch in _data(16, 1):
        with torch.no_grad():
            ref = model(*[torch.from_numpy(a) for a in batch]).numpy().astype(np.float64)
        got = session.run(batch)[0].astype(np.float64)
        num += float((ref ** 2).sum())
        den += float(((got - ref) ** 2).sum())
    return float(10 * np.log10(num / den))


def test_row_floor_leaves_out_fully_masked_rows():
    maxima = np.array([2.0, 5.0, 3.5, -9990.0])  # the last row: every key masked
    assert row_floor(maxima, 16) == pytest.approx(2.0 - (math.log(16) + 10.0))
    assert row_floor(np.array([np.nan]), 16) == -math.inf


@pytest.mark.parametrize("style", ["additive", "fill"])
def test_a_masked_softmax_input_keeps_its_scores_where_the_default_flow_loses_them(
        style, tmp_path):
    import onnx
    from onnx import numpy_helper

    from benchmarks.native import ort_int8
    from edgekit.backends import get_backend

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = MaskedAttention(style).eval()
    be = get_backend("onnxruntime")
    cal = _data(16, 0)
    ex = tuple(torch.from_numpy(a) for a in cal[0])
    names = ["tokens", "mask"]
    fp32 = be.export(model, ex, tmp_path / "fp32", input_names=names, output_names=["y"],
                     options={})
    arts = {on: be.quantize(model, ex, tmp_path / f"q{on}", input_names=names,
                            output_names=["y"], options={}, calibration=cal,
                            config=QuantConfig(softmax_ranges=on, latency_check=False,
                                               fallback=False), fp32=fp32)
            for on in (True, "narrow", False)}
    default, _ = ort_int8(fp32.path, tmp_path / "default", cal, names, fp32.inputs,
                          fp32.outputs, threads=1)
    off = _sqnr(model, be.load(arts[False], threads=1, options={}))
    native = _sqnr(model, default)
    for on in (True, "narrow"):
        ours = _sqnr(model, be.load(arts[on], threads=1, options={}))
        assert ours >= native + 10.0 and ours >= off + 10.0, (on, ours, off, native)

    found = arts["narrow"].info["quantization"]["softmax_ranges"]
    assert len(found) == 1 and arts[False].info["quantization"]["softmax_ranges"] == {}
    (tensor, entry), = found.items()
    assert entry["calibrated_min"] < -9000  # the mask, as the calibrator saw it
    assert -30.0 < entry["rmin"] < -10.0 and 0.0 < entry["rmax"] < 10.0
    # the file quantizes the softmax input on that range (ONNX Runtime's uint8 grid)
    assert entry["keep_float"] is False
    proto = onnx.load(str(arts["narrow"].path))
    inits = {i.name: i for i in proto.graph.initializer}
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    scale = float(numpy_helper.to_array(inits[q.input[1]]))
    assert scale == pytest.approx((entry["rmax"] - entry["rmin"]) / 255, rel=1e-5)


class ScoresToo(MaskedAttention):
    """Returns the masked scores beside the result: they are not the softmax's alone."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):  # type: ignore[override]
        x = self.embed(tokens)
        scores = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(32)
        scores = scores + (1.0 - mask.to(x.dtype))[:, None, :] * -1e4
        return self.head(scores.softmax(-1) @ self.v(x)), scores


def test_a_softmax_input_read_elsewhere_keeps_its_calibrated_range(tmp_path):
    from edgekit.backends import get_backend
    from edgekit.backends.onnx_softmax_ranges import softmax_input_ranges

    torch.manual_seed(0)
    cal = _data(8, 0)
    ex = tuple(torch.from_numpy(a) for a in cal[0])
    found = {}
    for name, model in (("alone", MaskedAttention("additive")), ("output", ScoresToo("additive"))):
        outs = ["y"] if name == "alone" else ["y", "scores"]
        art = get_backend("onnxruntime").export(model.eval(), ex, tmp_path / name,
                                                input_names=["tokens", "mask"],
                                                output_names=outs, options={})
        found[name] = softmax_input_ranges(art.path, ["tokens", "mask"], cal)
    assert len(found["alone"]) == 1 and found["output"] == {}


def test_grid_errors_of_flat_and_peaked_scores():
    from edgekit.backends.onnx_softmax_ranges import grid_errors

    rng = np.random.default_rng(0)
    masked = np.full((64, 4), -1e4)
    ratio = {}
    for spread in (0.05, 4.0):
        rows = np.concatenate([rng.normal(0, spread, (64, 12)), masked], axis=1)
        low = float(rows[:, :12].max(axis=1).min()) - (math.log(16) + 10)
        inp, out = grid_errors([rows], low, float(rows.max()))
        ratio[spread] = inp / out
        # the same without the masked keys (they lie on both grids, at 0, up to the
        # exp(-10) the clipped ones weigh)
        assert grid_errors([rows[:, :12]], low, float(rows.max())) == pytest.approx(
            (inp, out), rel=0.05)
    # flat scores: a step of 0.05 moves the probabilities far more than their own grid does
    assert ratio[0.05] > 10 and ratio[0.05] > 3 * ratio[4.0], ratio


def test_gpt2_masked_softmax_inputs_kept_float_where_the_row_range_is_too_coarse(tmp_path):
    """A randomly initialised GPT-2's attention scores span ~0.1, the causal mask the float32
    minimum: on the row range (12.5 wide, a step of 0.05) the attention comes out uniform."""
    import json

    import onnx

    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_tiny import Gpt2, token_ids

    from edgekit.pipeline import compress

    target = "x86-onnxruntime-int8"
    cal = [token_ids(i) for i in range(24)]
    got = {}
    for mode in (True, "narrow"):
        compress(Gpt2().eval(), (cal[0],), targets=[target], out_dir=tmp_path / str(mode),
                 calibration=cal, progress=False,
                 quantization={"latency_check": False, "fallback": False,
                               "softmax_ranges": mode, "int8_scope": "all"})
        entry = json.loads((tmp_path / str(mode) / "manifest.json").read_text()
                           )["targets"][target]
        got[mode] = entry
    q = got[True]["artifact_info"]["quantization"]
    choice = q["softmax_float_choice"]
    assert choice["kept"] == "float" and choice["sqnr_float_db"] > choice["sqnr_narrow_db"] + 6
    entries = list(q["softmax_ranges"].values())
    assert len(entries) == 2 and all(e["keep_float"] for e in entries)
    assert all(e["input_grid_error"] > e["output_grid_error"] for e in entries)
    # read from the file: no QuantizeLinear on a softmax input, the Softmax and its mask Add float
    proto = onnx.load(str(tmp_path / "True" / target / "model.onnx"))
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {e["softmax_input"] for e in entries}
    assert q["float_ops"]["Softmax"] == 2 and q["float_ops"]["Add"] >= 2
    assert set(q["float_nodes"]) == {n for e in entries for n in e["float_nodes"]}
    held = {m: min(o["sqnr_db"] for o in got[m]["quantization"]["heldout_fidelity"]["outputs"])
            for m in got}
    assert held[True] >= held["narrow"] + 6.0, held
    assert got["narrow"]["artifact_info"]["quantization"]["softmax_float_choice"] is None
