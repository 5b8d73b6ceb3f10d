"""edgekit.measure: one definition per number, one timer, one definition of a TFLite latency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgekit.backends import TensorSpec, get_backend
from edgekit.backends.tflite import FloatIOSession
from edgekit.measure.metrics import (
    centred_cosine,
    compare_outputs,
    cosine,
    max_abs_error,
    max_rel_error,
    sqnr_db,
    top1_agreement,
    top1_matches,
)
from edgekit.measure.timing import collect_interleaved, time_interleaved, timed_call
from edgekit.verify import verify

from conftest import tiny_net

# --------------------------------------------------------------------------- metrics


def test_cosine_hand_computed_and_zero_vectors():
    ref = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    out = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 0.0], [-3.0, -4.0], [np.inf, 1.0]])
    cos = cosine(ref, out)
    assert cos[0] == pytest.approx(1 / math.sqrt(2))
    assert cos[1] == 1.0  # both all zero
    assert cos[2] == 0.0  # one all zero
    assert cos[3] == pytest.approx(-1.0)
    assert math.isnan(cos[4])  # a non-finite norm
    # a sample is axis 0: a (2, 2, 2) output has two samples of four numbers
    r3 = np.arange(8.0).reshape(2, 2, 2)
    assert cosine(r3, r3) == pytest.approx([1.0, 1.0])


def test_centred_cosine_ignores_a_shared_offset():
    ref = np.array([[1.0, 2.0, 3.0]])
    assert cosine(ref, ref + 10)[0] < 0.99
    assert centred_cosine(ref, ref + 10)[0] == pytest.approx(1.0)
    # centred: [-1, 0, 1] against [1, 0, -1]
    assert centred_cosine(ref, ref[:, ::-1])[0] == pytest.approx(-1.0)


def test_sqnr_hand_computed_identical_and_zero_signal():
    ref = np.array([[3.0, 4.0]])
    out = np.array([[3.0, 3.0]])
    assert sqnr_db(ref, out) == pytest.approx(10 * math.log10(25 / 1))
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(np.zeros(3), np.ones(3)) == -math.inf
    assert sqnr_db(np.zeros(3), np.zeros(3)) == math.inf


def test_top1_agreement_is_a_fraction_over_the_last_axis():
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    out = np.array([[0.9, 0.1], [1.0, 0.5], [3.0, 4.0]])
    assert top1_matches(ref, out) == (2, 3)
    assert top1_agreement(ref, out) == pytest.approx(2 / 3)
    # (N, T, C): every (n, t) is a row, argmax over C
    r = np.array([[[1, 0], [0, 1]], [[1, 0], [1, 0]]], dtype=np.float32)
    o = np.array([[[1, 0], [1, 0]], [[1, 0], [1, 0]]], dtype=np.float32)
    assert top1_matches(r, o) == (3, 4)
    assert top1_agreement(np.zeros((2, 0)), np.zeros((2, 0))) is None


def test_max_abs_and_rel_errors():
    ref = np.array([[1.0, 0.0, -2.0]])
    out = np.array([[1.5, 1e-7, -2.0]])
    assert max_abs_error(ref, out) == pytest.approx(0.5)
    assert max_rel_error(ref, out) == pytest.approx(0.5)  # 0.5/1 beats 1e-7/1e-6 = 0.1
    assert math.isnan(max_abs_error(ref, np.array([[np.nan, 0.0, 0.0]])))
    assert max_abs_error(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0


def test_compare_outputs_multi_output():
    a_ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    b_ref = np.array([[2.0], [4.0]])
    fid = compare_outputs([a_ref, b_ref], [a_ref, b_ref * 1.5], ["a", "b"], classifier=True)
    assert fid["samples"] == 2 and [o["name"] for o in fid["outputs"]] == ["a", "b"]
    assert fid["outputs"][0]["sqnr_db"] == "inf"
    assert fid["outputs"][1]["max_abs"] == pytest.approx(2.0)
    # signal 4 + 16, noise 1 + 4: the summary SQNR is the worst output's
    assert fid["sqnr_db"] == pytest.approx(10 * math.log10(20 / 5))
    assert fid["cosine_min"] == pytest.approx(1.0) and fid["top1_agreement"] == 1.0
    assert compare_outputs([a_ref], [a_ref], ["a"], classifier=False)["top1_agreement"] is None


# --------------------------------------------------------------------------- verify == bench


class _Noisy:
    """A session returning the wrapped session's outputs plus a fixed perturbation."""

    def __init__(self, inner, rng):
        self.inner, self.rng = inner, rng
        self.inputs, self.outputs, self.info = inner.inputs, inner.outputs, inner.info
        self.backend = inner.backend

    def run(self, feeds):
        return [o + self.rng.normal(0, 0.3, o.shape).astype(o.dtype)
                for o in self.inner.run(feeds)]


def test_verify_and_bench_report_the_same_numbers(tmp_path):
    model = tiny_net()
    x = torch.rand(1, 1, 8, 8)
    be = get_backend("onnxruntime")
    art = be.export(model, (x,), tmp_path, input_names=["x"], output_names=["logits"],
                    options={})
    rng = np.random.default_rng(0)
    samples = [(rng.random((1, 1, 8, 8), dtype=np.float32),) for _ in range(40)]
    # the same artifact, data and perturbation for both tools
    rep = verify(model, _Noisy(be.load(art, threads=1, options={}), np.random.default_rng(1)),
                 samples, tolerance={"max_abs": None, "min_cosine": None,
                                     "min_top1_agreement": None},
                 classifier_outputs=["logits"])
    session = _Noisy(be.load(art, threads=1, options={}), np.random.default_rng(1))
    got = np.concatenate([session.run(list(s))[0] for s in samples])
    with torch.no_grad():
        want = np.concatenate([model(torch.from_numpy(s[0])).numpy() for s in samples])
    fid = compare_outputs([want], [got], ["logits"], classifier=True)
    out = rep.output("logits")
    assert 0 < out.top1_agreement < 1  # the perturbation flips some argmaxes
    assert fid["top1_agreement"] == pytest.approx(out.top1_agreement)
    assert fid["cosine_min"] == pytest.approx(out.cosine, abs=1e-6)
    assert fid["outputs"][0]["cosine_mean"] == pytest.approx(out.mean_cosine, abs=1e-6)
    assert fid["outputs"][0]["max_abs"] == pytest.approx(out.max_abs, abs=1e-6)


# --------------------------------------------------------------------------- timing


class _Interpreter:
    """Stands in for a TFLiteSession: int8 in and out, records what it was fed."""

    backend = "tflite"

    def __init__(self):
        self.inputs = [TensorSpec("x", (1, 4), "int8")]
        self.outputs = [TensorSpec("y", (1, 4), "int8")]
        self.info = {"precision": "int8", "io": "float"}
        self.fed: list[np.ndarray] = []

    def run(self, feeds, *, allow_nonfinite=False):
        self.fed.append(feeds[0])
        return [feeds[0]]


def test_float_io_session_converts_but_latency_times_the_interpreter():
    inner = _Interpreter()
    conv = (0.5, 1, np.dtype(np.int8))
    sess = FloatIOSession(inner, [conv], [conv])
    assert sess.inputs[0].dtype == "float32" and sess.outputs[0].dtype == "float32"
    x = np.array([[0.0, 1.0, -1.0, 100.0]], dtype=np.float32)
    (y,) = sess.run([x])
    assert inner.fed[-1].dtype == np.int8 and inner.fed[-1].tolist() == [[1, 3, -1, 127]]
    assert y.dtype == np.float32 and y.tolist() == [[0.0, 1.0, -1.0, 63.0]]
    timed, feeds = timed_call(sess, [x])
    assert timed is inner and feeds[0].dtype == np.int8
    plain = _Interpreter()
    assert timed_call(plain, [x]) == (plain, [x])


def test_bench_and_benchmarks_time_the_same_tflite_call():
    """`edgekit bench` times through collect_interleaved, benchmarks/ through
    time_interleaved: both call the interpreter alone, with the same pre-quantized feeds, and
    never the converting ``run``."""
    from edgekit.bench import local_run

    assert local_run.collect_interleaved is collect_interleaved
    conv = (0.5, 1, np.dtype(np.int8))
    x = np.array([[0.0, 1.0, -1.0, 100.0]], dtype=np.float32)
    fed = []
    for timer in (collect_interleaved, time_interleaved):
        inner = _Interpreter()
        sess = FloatIOSession(inner, [conv], [conv])

        def converting_run(feeds, **_):
            raise AssertionError("the float<->int8 conversion was timed")

        sess.run = converting_run  # type: ignore[method-assign]
        timer({"int8": sess}, {"int8": [x]}, warmup=2, runs=5)
        assert len(inner.fed) == 7 and all(f.dtype == np.int8 for f in inner.fed)
        fed.append(inner.fed[-1].tolist())
    assert fed[0] == fed[1] == [[1, 3, -1, 127]]


def test_latency_times_the_runtime_call_not_the_input_checks(tmp_path):
    """A real session's ``run`` checks its feeds (NaN refused); the call every timer makes is
    the bare runtime call on feeds checked once before timing."""
    from edgekit.backends import Artifact
    from edgekit.errors import DataError

    from reliability_helpers import onnx_file

    path = onnx_file(tmp_path / "m", external=False)
    art = Artifact("onnxruntime", path.parent, [path.name],
                   [TensorSpec("x", (1, 4), "float32")], [TensorSpec("y", (1, 3), "float32")],
                   "fp32")
    sess = get_backend("onnxruntime").load(art, threads=1, options={})
    x = np.ones((1, 4), np.float32)
    bare, feeds = timed_call(sess, [x])
    assert bare is not sess and feeds[0].dtype == np.float32
    np.testing.assert_array_equal(bare.run(feeds)[0], sess.run([x])[0])
    nan = np.full((1, 4), np.nan, np.float32)
    with pytest.raises(DataError, match="NaN"):
        sess.run([nan])
    assert np.isnan(bare.run([nan])[0]).all()  # no check inside the timed call
    with pytest.raises(DataError):
        timed_call(sess, [nan])  # the feeds are checked once, before timing
