"""LiteRT int8 files that are integer end to end: the exported-graph rewrites before litert's
PT2E quantizer (residual adds and pools found by their source, hardsigmoid / hardswish
written out in ops it quantizes) keep the float function, and the file's other ops on float
data are read back into the manifest (``float_ops``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mnv3_block import block as _model
from mnv3_block import inputs as _inputs

from edgekit.quantize import QuantConfig

pytest.importorskip("litert_torch", reason="LiteRT int8 needs litert-torch (extra tflite)")


@pytest.mark.parametrize("wide", [False, True])
def test_the_rewrites_keep_the_float_function(wide):
    from edgekit.backends.pt2e_rewrites import restore_sources, split_hard_activations

    model = _model()
    x = torch.from_numpy(_inputs(1, 0)[0][0]) * 4  # values well past the hard bends at +-3
    gm = torch.export.export(model, (x,)).module()
    before = gm(x)
    rewritten = split_hard_activations(gm, wide=wide)
    marked = restore_sources(gm)
    targets = [str(n.target) for n in gm.graph.nodes]
    if wide:  # 16x8: only the hardswishes, the hardsigmoid stays whole
        assert len(rewritten) == 2 and "aten.hardsigmoid.default" in targets
    else:
        assert len(rewritten) == 3 and "aten.hardsigmoid.default" not in targets
    assert "aten.hardswish.default" not in targets
    assert {"aten.add.Tensor", "aten.cat.default", "aten.max_pool2d.default"} <= {
        str(n.target) for n in gm.graph.nodes if n.name in marked}
    torch.testing.assert_close(gm(x), before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class _MaskedAttention(torch.nn.Module):
    """Attention scores plus an additive padding mask, a softmax (``reshaped``: after a
    reshape, a cast and eval-mode dropout), a residual add."""

    def __init__(self, reshaped: bool = False) -> None:
        super().__init__()
        self.reshaped = reshaped

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = x @ x.transpose(-1, -2) + (1.0 - mask)[:, None, :] * -1e4
        if self.reshaped:
            n = scores.shape[-1]
            scores = torch.nn.functional.dropout(scores.reshape(-1, n).float(), 0.1, False)
            return torch.softmax(scores, -1).reshape(x.shape[0], n, n) @ x + x
        return torch.softmax(scores, -1) @ x + x


@pytest.mark.parametrize("reshaped", [False, True])
def test_the_sum_a_softmax_reads_keeps_no_source(reshaped):
    """An int8 range over a -1e4 mask and the scores would leave the scores a few levels:
    the add the softmax reads (directly or through ops that pass its values on) stays
    unannotated (float), the residual add gets its source."""
    from edgekit.backends.pt2e_rewrites import restore_sources

    x, mask = torch.randn(1, 4, 8), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gm = torch.export.export(_MaskedAttention(reshaped).eval(), (x, mask)).module()
    marked = restore_sources(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    adds = [n for n in marked if str(nodes[n].target) == "aten.add.Tensor"]
    assert len(adds) == 1 and [str(u.target) for u in nodes[adds[0]].users] == ["output"]
    scores = [n for n in gm.graph.nodes if str(n.target) == "aten.add.Tensor"
              and n.name not in marked]
    assert len(scores) == 1 and "source_fn_stack" not in scores[0].meta


class _ScaledAttention(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x @ x.transpose(-1, -2) * 0.35, -1) @ x


def test_a_scale_a_softmax_reads_keeps_its_source():
    """No mask (a ViT): the scale multiply before the softmax is quantized as before."""
    from edgekit.backends.pt2e_rewrites import restore_sources

    gm = torch.export.export(_ScaledAttention(), (torch.randn(1, 4, 8),)).module()
    marked = restore_sources(gm)
    muls = [n.name for n in gm.graph.nodes if str(n.target) == "aten.mul.Tensor"]
    assert len(muls) == 1 and muls[0] in marked


def _ops(path) -> list[tuple[str, str]]:
    """(op, output dtype) per op of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    return [(o["op_name"], np.dtype(tensors[o["outputs"][0]]["dtype"]).name)
            for o in interp._get_ops_details() if o["op_name"] != "DELEGATE"]


def _build(tmp_path, name: str, join: bool = True, **config):
    from edgekit.backends import get_backend

    torch.set_num_threads(1)
    be = get_backend("tflite")
    cal = _inputs(16, 0)
    art = be.quantize(_model(join), (torch.from_numpy(cal[0][0]),), tmp_path / name,
                      input_names=["x"], output_names=["y"], options={}, calibration=cal,
                      config=QuantConfig(**config))
    return be, art


def _sqnr(be, art, join: bool = True) -> float:
    model, sess = _model(join), be.load(art, threads=1, options={"io": "float"})
    num = den = 0.0
    for (x,) in _inputs(8, 1):
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy().astype(np.float64)
        out = sess.run([x])[0].astype(np.float64)
        num, den = num + float((ref ** 2).sum()), den + float(((out - ref) ** 2).sum())
    return float(10 * np.log10(num / den))


def test_litert_int8_runs_adds_gates_and_pools_on_int8_data(tmp_path):
    be, art = _build(tmp_path, "q")
    ops = _ops(art.path)
    q = art.info["quantization"]
    # no op of the file computes on float data, and the manifest reads that back
    assert q["float_ops"] == {}
    assert [op for op, dtype in ops if dtype == "float32"] == []
    assert {"ADD", "MUL", "MEAN", "MAX_POOL_2D", "CONCATENATION"} <= {op for op, _ in ops}
    assert "HARD_SWISH" not in {op for op, _ in ops}  # written out: XNNPACK has no int8 one
    assert len(q["rewritten_activations"]) == 3
    assert _sqnr(be, art) > 25.0

    # integer_ops off (LiteRT's default flow): litert's quantizer leaves them unannotated,
    # float ops in the file, which the manifest now names
    _be, plain = _build(tmp_path, "plain", integer_ops=False)
    floats = plain.info["quantization"]["float_ops"]
    assert plain.info["quantization"]["rewritten_activations"] == []
    assert floats.get("ADD", 0) >= 1 and sum(floats.values()) == sum(
        1 for op, dtype in _ops(plain.path) if dtype == "float32" and op != "DEQUANTIZE")


def test_litert_16x8_builds_a_hardswish_model(tmp_path):
    """litert-torch's converter has no int16 HARD_SWISH: written as x * hardsigmoid(x), the
    model builds in 16x8, every compute layer on int16 data, closer to fp32 than 8-bit."""
    be, wide = _build(tmp_path, "wide", join=False, activations_16bit="all")
    q = wide.info["quantization"]
    assert {r["precision"] for r in q["layers"]} == {"int16"}
    assert len(q["rewritten_activations"]) == 2
    assert "HARD_SWISH" not in {op for op, _ in _ops(wide.path)}
    # the hardsigmoids stay TFLite's float lowering in 16x8, and the manifest says so
    assert q["float_ops"] and set(q["float_ops"]) <= {"ADD", "MUL"}
    _be, eight = _build(tmp_path, "eight", join=False)
    assert _sqnr(be, wide, False) > _sqnr(be, eight, False) + 6.0


def test_litert_min_max_share_one_range_over_their_inputs(tmp_path):
    """Unannotated, TFLite's MAXIMUM -> MINIMUM took the range of ``lo + 1.5`` ([0, 1.5]) and
    cut every negative output to 0 (SQNR 6 dB); annotated, one int8 scale spans the inputs
    and the output, and the outputs follow fp32."""
    from test_op_corpus import TensorClamp  # maximum / minimum with per-feature bounds

    from edgekit.backends import get_backend

    torch.set_num_threads(1)
    model, be = TensorClamp().eval(), get_backend("tflite")
    g = torch.Generator().manual_seed(1)
    cal = [[torch.randn(1, 8, generator=g).numpy()] for _ in range(16)]
    art = be.quantize(model, (torch.from_numpy(cal[0][0]),), tmp_path / "q", input_names=["x"],
                      output_names=["y"], options={}, calibration=cal,
                      config=QuantConfig(scale_floor="off"))
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(art.path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = [o for o in interp._get_ops_details() if o["op_name"] in ("MINIMUM", "MAXIMUM")]
    assert len(ops) == 2
    for op in ops:
        scales = {tensors[i]["quantization"] for i in [*op["inputs"], *op["outputs"]]}
        assert len(scales) == 1, (op["op_name"], scales)
    assert "QUANTIZE" not in {o["op_name"] for o in interp._get_ops_details()}
    sess = be.load(art, threads=1, options={"io": "float"})
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    ref = model(x).detach().numpy().astype(np.float64)
    got = np.concatenate([sess.run([r[None].numpy()])[0] for r in x]).astype(np.float64)
    assert (ref < 0).mean() > 0.2 and (got < 0).mean() > 0.2  # the negative outputs survive
    assert 10 * np.log10((ref ** 2).sum() / ((got - ref) ** 2).sum()) > 25.0


class _CatTwice(torch.nn.Module):
    """One tensor concatenated with itself, as Llama's rotary embedding does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x) * 2.0
        return torch.cat((h, h), -1)


def test_litert_cat_of_one_tensor_twice_quantizes(tmp_path):
    """litert's cat annotator left the repeated input's edge sharing its range with itself,
    and prepare_pt2e recursed until RecursionError; repaired, the file builds and its
    CONCATENATION runs on int8 data."""
    from edgekit.backends import get_backend

    torch.set_num_threads(1)
    model, be = _CatTwice().eval(), get_backend("tflite")
    g = torch.Generator().manual_seed(1)
    cal = [[torch.randn(1, 8, generator=g).numpy()] for _ in range(16)]
    art = be.quantize(model, (torch.from_numpy(cal[0][0]),), tmp_path / "q", input_names=["x"],
                      output_names=["y"], options={}, calibration=cal,
                      config=QuantConfig(scale_floor="off"))
    assert ("CONCATENATION", "int8") in _ops(art.path)
    sess = be.load(art, threads=1, options={"io": "float"})
    x = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
    ref = model(x).detach().numpy()
    assert np.abs(sess.run([x.numpy()])[0] - ref).max() < 0.05 * np.abs(ref).max()


class _Splits(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, c = x.chunk(3, dim=-1)
        d, e = torch.split(x, [2, 4], dim=1)
        return torch.cat((a * 2, b - c, c), dim=-1), d.sum(1, keepdim=True) + e


def test_splits_taken_apart_by_index_become_slices_with_the_same_values():
    from edgekit.backends.pt2e_rewrites import split_to_slices

    x = torch.randn(1, 6, 6)
    gm = torch.export.export(_Splits(), (x,)).module()
    before = gm(x)
    assert len(split_to_slices(gm)) == 2
    ops = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not any("split" in o or "chunk" in o or "getitem" in o for o in ops), ops
    assert "aten.slice.Tensor" in ops
    torch.testing.assert_close(gm(x), before, rtol=0, atol=0)


class _Flip(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return y.transpose(0, 1).reshape(2, 8)


def test_same_scale_refusal_is_named_and_other_failures_are_not():
    import inspect

    from edgekit.backends._common import same_scale_failure

    lines, first = inspect.getsourcelines(_Flip.forward)
    line = first + next(i for i, ln in enumerate(lines) if "transpose" in ln)
    said = (f"Failed to run converter passes: {__file__}:{line}:0: error: 'tfl.transpose' op "
            "quantization parameters violate the same scale constraint: "
            "!quant.uniform<i8:f32, 0.0159:1> vs. !quant.uniform<i8:f32, 0.0154:4>")
    try:
        raise RuntimeError("conversion failed") from ValueError(said)
    except RuntimeError as exc:
        err = same_scale_failure("tflite", _Flip(), (torch.randn(2, 8),), exc)
    assert err is not None and err.op == "tfl.transpose" and err.layer == "<root>"
    assert f"refused the TRANSPOSE traced from {__file__}:{line}" in str(err)
    assert "layer '<root>' (_Flip)" in str(err) and "ONNX Runtime or OpenVINO" in err.hint
    # the Linear on the line before is not blamed; a message without the constraint is not ours
    assert "proj" not in str(err).split("converter said")[0]
    assert same_scale_failure("tflite", _Flip(), (torch.randn(2, 8),),
                              ValueError("error: 'tfl.conv_2d' op failed")) is None
