"""Reliability cases 22-25: models that fail when run, benchmark arguments out of range,
inputs at run time, factories that kill the process and weights that are not checkpoints.

Real ONNX/OpenVINO files crafted with onnx.helper, real artifacts exported from a tiny
module, real child processes under a 4 GiB address-space cap (tests/capped.py).
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.cli import main
from edgekit.errors import ConfigError, DataError, ShapeError, UsageError

from capped import run_capped
from conftest import tiny_net
from reliability_helpers import have, onnx_file, rel

CAP_GIB = 4


needs_ort = pytest.mark.skipif(not (have("onnx") and have("onnxruntime")),
                               reason="needs onnx and onnxruntime (edgekit[onnxruntime])")
needs_ov = pytest.mark.skipif(not (have("onnx") and have("openvino")),
                              reason="needs onnx and openvino (edgekit[openvino])")


# --------------------------------------------------------------------------- crafted models


def _huge_model(path: Path, kind: str) -> Path:
    """A [1, 4] -> [1, 4] model whose middle node allocates terabytes when run.

    ``fill``: ConstantOfShape of a constant [2^20, 2^20] (4 TiB of float32);
    ``range``: Range(0, sum(x) * 1e12, 1), a size that depends on the input (terabytes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fill":
        inits = [numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")]
        nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="huge_fill",
                                  value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))]
    else:
        inits = [numpy_helper.from_array(np.array(v, np.float32), n)
                 for n, v in (("start", 0.0), ("scale", 1e12), ("delta", 1.0))]
        nodes = [helper.make_node("ReduceSum", ["x"], ["sx"], name="sum_x", keepdims=0),
                 helper.make_node("Mul", ["sx", "scale"], ["limit"], name="scale_up"),
                 helper.make_node("Range", ["start", "limit", "delta"], ["big"],
                                  name="huge_range")]
    nodes += [helper.make_node("ReduceSum", ["big"], ["r"], name="total", keepdims=0),
              helper.make_node("Add", ["x", "r"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _to_ir(onnx_path: Path) -> Path:
    import openvino as ov

    xml = onnx_path.with_suffix(".xml")
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def _no_traceback(text: str) -> None:
    assert "Traceback (most recent call last)" not in text, text


# =========================================================================== case 22

NODE = {"fill": ("huge_fill", "ConstantOfShape"), "range": ("huge_range", "Range")}


@rel(case=22, behaviour="an ONNX model whose ConstantOfShape or Range node allocates terabytes, "
     "given to `bench` (onnxruntime .onnx, OpenVINO IR .xml) under a 4 GiB memory cap: "
     "ModelRunError naming the node and its op, 'allocates too much', exit 1, no traceback, "
     "peak memory below the cap")
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", sorted(NODE))
def test_bench_of_a_model_that_allocates_terabytes(kind, runtime, tmp_path):
    if runtime == "onnxruntime" and not (have("onnx") and have("onnxruntime")):
        pytest.skip("needs onnx and onnxruntime")
    if runtime == "openvino" and not (have("onnx") and have("openvino")):
        pytest.skip("needs onnx and openvino")
    path = _huge_model(tmp_path / "m" / "model.onnx", kind)
    if runtime == "openvino":
        path = _to_ir(path)
    r = run_capped(["bench", str(path), "--runs", "2", "--warmup", "0", "--data", "none",
                    "--no-memory", "-q"], cap_gib=CAP_GIB, timeout=240)
    _no_traceback(r.out + r.err)
    assert r.code == 1, r.err
    node, op = NODE[kind]
    assert f"'{node}'" in r.err and "allocates too much" in r.err, r.err
    # OpenVINO turns ConstantOfShape into Broadcast; onnxruntime keeps the ONNX op name
    assert op in r.err or (runtime == "openvino" and "Broadcast" in r.err), r.err
    assert str(path) in r.err
    assert 0 < r.peak_rss_bytes < CAP_GIB * 2**30


@rel(case=22, behaviour="`Session.run` of a model whose Range size depends on the input "
     "(terabytes at run time) on onnxruntime and OpenVINO: ModelRunError (exit code 1) naming "
     "node 'huge_range' and op Range, the bytes asked for, and the file")
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_session_run_allocation_failure_names_the_node(runtime, tmp_path):
    if not (have("onnx") and have(runtime)):
        pytest.skip(f"needs onnx and {runtime}")
    from edgekit.backends import get_backend
    from edgekit.bench import artifact_from_file
    from edgekit.errors import ModelRunError

    path = _huge_model(tmp_path / "model.onnx", "range")
    if runtime == "openvino":
        path = _to_ir(path)
    # threads=2: OpenVINO 2026.4's single-threaded CPU plugin runs this Range without
    # allocating it and returns garbage (its own bug, not an allocation edgekit could see)
    sess = get_backend(runtime).load(artifact_from_file(path), threads=2, options={})
    x = np.full((1, 4), 0.2, np.float32)  # limit 8e11: 3.2 TB of float32
    with pytest.raises(ModelRunError) as info:
        sess.run([x])
    err = info.value
    assert err.exit_code == 1 and err.node == "huge_range" and err.op == "Range"
    assert "allocates too much" in str(err) and str(path) in str(err)
    assert err.requested_bytes and err.requested_bytes > 2**40
    # the session is still usable for a sane input afterwards (nothing left half-set)
    assert np.isfinite(sess.run([np.zeros((1, 4), np.float32)])[0]).all()


@rel(case=22, behaviour="an OpenVINO IR whose Const declares a shape that does not match its "
     "byte size in the .bin: BundleError naming the layer, both sizes and the files, from "
     "`bench` (exit 1, no traceback) and from Backend.load")
@needs_ov
def test_openvino_inconsistent_constant_names_layer_and_file(tmp_path, capsys):
    from edgekit.backends import get_backend
    from edgekit.errors import BundleError

    xml = _to_ir(_huge_model(tmp_path / "model.onnx", "fill"))
    text = xml.read_text()
    good = 'element_type="i64" shape="2" offset="4" size="16"'
    assert good in text
    xml.write_text(text.replace(good, good.replace('shape="2"', 'shape="2000"')))
    assert main(["bench", str(xml), "--runs", "2", "--warmup", "0", "--data", "none",
                 "--no-memory", "-q"]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "Const layer 'shape'" in err and "16000 bytes" in err and "16 bytes" in err
    assert str(xml) in err and "model.bin" in err
    from edgekit.backends.base import Artifact, TensorSpec

    art = Artifact("openvino", xml.parent, ["model.xml", "model.bin"],
                   [TensorSpec("x", (1, 4), "float32")], [TensorSpec("y", (1, 4), "float32")])
    with pytest.raises(BundleError, match="Const layer 'shape'"):
        get_backend("openvino").load(art, threads=1, options={})


# =========================================================================== case 23

BAD_ARGS = {
    "runs-1e12": (["--runs", "1e12"], "--runs 1e12", "1 to 1000000"),
    "runs-0": (["--runs", "0"], "--runs 0", "1 to 1000000"),
    "runs-frac": (["--runs", "2.5"], "--runs 2.5", "an integer"),
    "duration-inf": (["--duration", "inf"], "--duration inf", "<= 3600"),
    "duration-nan": (["--duration", "nan"], "--duration nan", "<= 3600"),
    "duration-0": (["--duration", "0"], "--duration 0", "> 0"),
    "duration-neg": (["--duration", "-5"], "--duration -5", "> 0"),
    "threads-10000": (["--threads", "10000"], "--threads 10000", "1 to 256"),
    "threads-0": (["--threads", "0"], "--threads 0", "1 to 256"),
    "limit-0": (["--limit", "0"], "--limit 0", ">= 1"),
    "limit-neg": (["--limit", "-3"], "--limit -3", ">= 1"),
    "warmup-neg": (["--warmup", "-1"], "--warmup -1", "0 to 100000"),
    "warmup-inf": (["--warmup", "inf"], "--warmup inf", "0 to 100000"),
}


@rel(case=23, behaviour="`bench --runs 1e12/0/2.5`, `--duration inf/nan/0/-5`, `--threads "
     "10000/0`, `--limit 0/-3`, `--warmup -1/inf`: UsageError naming the option, its value and "
     "the allowed range, exit 2, no traceback, before any model is opened (the model given is "
     "garbage)")
@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bench_arguments_out_of_range(case, tmp_path, capsys):
    flags, named, allowed = BAD_ARGS[case]
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(bytes(range(256)) * 4)  # opened first, it would fail as a BundleError
    assert main(["bench", str(garbage), *flags, "--data", "none", "--no-memory", "-q"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert named in err and allowed in err, err
    assert str(garbage) not in err


@rel(case=23, behaviour="`edgekit.bench(...)` from Python with runs=1e12, duration=inf/nan, "
     "threads=10000, limit=0 or warmup=-1: UsageError naming the argument and the range, before "
     "any model is opened")
@pytest.mark.parametrize("kwargs", [{"runs": 10**12}, {"runs": None, "duration": float("inf")},
                                    {"runs": None, "duration": float("nan")},
                                    {"threads": 10000}, {"limit": 0}, {"warmup": -1},
                                    {"runs": True}], ids=lambda k: "-".join(map(str, k.items())))
def test_bench_api_arguments_out_of_range(kwargs, tmp_path):
    import edgekit

    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UsageError) as info:
        edgekit.bench([garbage], data="none", memory=False, progress=False, **kwargs)
    name = next(k for k, v in kwargs.items() if v is not None)
    assert str(info.value).startswith(f"{name} "), info.value
    assert str(garbage) not in str(info.value)


@rel(case=23, behaviour="`bench --duration` on a fast model keeps at most the sample cap "
     "(lowered to 50 here) of latencies in memory: timing stops there, says so in the report's "
     "notes and on stderr")
@needs_ort
def test_bench_duration_keeps_samples_bounded(tmp_path, monkeypatch):
    import edgekit.bench.harness as harness
    import edgekit.bench.local_run as local_run

    monkeypatch.setattr(local_run, "MAX_SAMPLES", 50)
    path = onnx_file(tmp_path / "m", external=False)
    t0 = time.perf_counter()
    report = harness.bench([path], runs=None, duration=30.0, warmup=0, data="none",
                           memory=False, progress=False)
    assert time.perf_counter() - t0 < 20
    (row,) = report["results"]
    assert row["latency"]["n"] == 50 and len(row["samples_ms"]) == 50
    assert report["settings"]["sample_cap"] == 50
    assert any("cap" in n for n in report["notes"])


# =========================================================================== case 24

RUNTIMES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("openvino",),
            "tflite": ("litert_torch", "ai_edge_litert")}
_SESSIONS: dict[str, object] = {}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """session(runtime) -> a loaded session of tiny_net (1x1x8x8 -> 1x10), exported once."""

    def get(runtime: str):
        if not all(have(m) for m in RUNTIMES[runtime]):
            pytest.skip(f"needs {', '.join(RUNTIMES[runtime])}")
        if runtime not in _SESSIONS:
            from edgekit.backends import get_backend

            be = get_backend(runtime)
            art = be.export(tiny_net(), (torch.rand(1, 1, 8, 8),),
                            tmp_path_factory.mktemp(runtime), input_names=["x"],
                            output_names=["y"], options={})
            _SESSIONS[runtime] = be.load(art, threads=1, options={})
        return _SESSIONS[runtime]

    return get


def _x() -> torch.Tensor:
    return torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@rel(case=24, behaviour="`Session.run` with torch tensors on onnxruntime, OpenVINO and TFLite: "
     "requires_grad and non-contiguous tensors run; bf16/float16 are widened to float32, "
     "float64 rounded; outputs match the numpy run")
@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_session_run_accepts_torch_tensors(runtime, session):
    sess = session(runtime)
    x = _x()
    (want,) = sess.run([x.numpy()])
    (got,) = sess.run([x.clone().requires_grad_(True)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    strided = torch.rand(1, 1, 8, 16)[..., ::2].copy_(x)  # a non-contiguous view
    assert not strided.is_contiguous()
    np.testing.assert_allclose(sess.run([strided])[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sess.run([x.double()])[0], want, rtol=1e-5, atol=1e-6)
    for half in (torch.bfloat16, torch.float16):
        lossless = sess.run([x.to(half).float().numpy()])[0]
        np.testing.assert_allclose(sess.run([x.to(half)])[0], lossless, rtol=1e-5, atol=1e-6)


@rel(case=24, behaviour="`Session.run` given a wrong input (a string, None, a dict, a complex "
     "tensor, a bare array instead of a list): ShapeError/UsageError naming the input, its "
     "position and the expected dtype and shape, on every runtime")
@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_session_run_names_the_wrong_input(runtime, session):
    sess = session(runtime)
    for bad in ("hello", None, {"x": 1}, torch.zeros(1, 1, 8, 8, dtype=torch.complex64)):
        with pytest.raises(ShapeError) as info:
            sess.run([bad])
        msg = str(info.value)
        assert "input 'x' (position 0" in msg and "float32" in msg, msg
    with pytest.raises(UsageError, match=r"list with one array per model input \['x'\]"):
        sess.run(_x().numpy())


@rel(case=24, behaviour="a NaN or inf input to `Session.run` on onnxruntime, OpenVINO and "
     "TFLite: the same DataError on all three naming the input and the count of non-finite "
     "values (OpenVINO used to return finite outputs); allow_nonfinite=True runs it anyway")
@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_nonfinite_inputs_flagged_on_every_runtime(runtime, session):
    sess = session(runtime)
    x = _x()
    x[0, 0, 0, :3] = float("nan")
    x[0, 0, 1, 0] = float("inf")
    for feed in (x.numpy(), x):
        with pytest.raises(DataError) as info:
            sess.run([feed])
        msg = str(info.value)
        assert "input 'x'" in msg and "4 non-finite value(s) of 64" in msg and "3 NaN" in msg
        assert "allow_nonfinite=True" in msg
    (out,) = sess.run([x], allow_nonfinite=True)
    assert out.shape == (1, 10)


# =========================================================================== case 25


def _recipe(folder: Path, model: str, *, weights: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'model = "{model}"', 'input_shapes = ["1x4"]',
             'targets = ["x86-onnxruntime-fp32"]']
    if weights:
        lines.append(f'weights = "{weights}"')
    path = folder / "recipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@rel(case=25, behaviour="a factory that would kill the process (`build os:abort`, "
     "`subprocess:call`, recipe model = \"os:abort\", a user module re-exporting os.abort): "
     "refused by name before it is called, exit 2, the process not killed, no traceback, "
     "nothing written")
@pytest.mark.parametrize("how", ["cli-os-abort", "cli-subprocess", "recipe-os-abort",
                                 "reexported"])
def test_factory_that_kills_the_process_is_refused(how, tmp_path):
    out = tmp_path / "out"
    if how.startswith("cli"):
        ref = "os:abort" if how == "cli-os-abort" else "subprocess:call"
        args = ["build", ref, "--input-shape", "1x4", "-t", "x86-onnxruntime-fp32",
                "-o", str(out)]
    elif how == "recipe-os-abort":
        ref = "os:abort"
        args = ["build", "--recipe", str(_recipe(tmp_path / "r", ref)), "-o", str(out)]
    else:
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "evil_models.py").write_text("from os import abort as build\n")
        ref = "evil_models:build"
        args = ["build", "--recipe", str(_recipe(tmp_path / "r", ref)), "-o", str(out)]
    r = run_capped(args, cap_gib=CAP_GIB, cwd=tmp_path, timeout=120)
    _no_traceback(r.out + r.err)
    assert r.code == 2, (r.code, r.err)  # SIGABRT would be -6
    assert f"factory {ref}" in r.err and "refused without calling it" in r.err, r.err
    assert not out.exists()


@rel(case=25, behaviour="`load_factory` of a factory that raises, calls sys.exit or returns a "
     "non-Module: UsageError naming the factory and what happened (file and line of the "
     "raise), never a raw exception")
def test_factory_failures_are_usage_errors(tmp_path, monkeypatch):
    from edgekit.api import load_factory

    (tmp_path / "flaky_models.py").write_text(textwrap.dedent("""
        import sys
        def boom():
            raise ValueError("no weights here")
        def leave():
            sys.exit(3)
        def number():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match=r"flaky_models:boom raised ValueError at .*"
                       r"flaky_models.py:4 .*no weights here"):
        load_factory("flaky_models:boom")
    with pytest.raises(UsageError, match=r"flaky_models:leave called sys.exit\(3\)"):
        load_factory("flaky_models:leave")
    with pytest.raises(UsageError, match="returned int, not a torch.nn.Module"):
        load_factory("flaky_models:number")
    sys.modules.pop("flaky_models", None)


@rel(case=25, behaviour="recipe weights pointing at a text file, a PNG, an .onnx model or a "
     "FIFO: ConfigError naming the recipe, the file and what it really is, exit 2, no "
     "traceback, nothing written")
@pytest.mark.parametrize("kind", ["text", "png", "onnx", "fifo"])
def test_recipe_weights_that_are_not_a_checkpoint(kind, tmp_path, capsys, monkeypatch):
    import os

    folder = tmp_path / "r"
    folder.mkdir()
    mod = f"plain_models_{kind}"
    (folder / f"{mod}.py").write_text("from torch import nn\n\ndef build():\n"
                                      "    return nn.Linear(4, 3)\n")
    name = {"text": "w.pt", "png": "w.pt", "onnx": "w.onnx", "fifo": "w.pt"}[kind]
    if kind == "text":
        (folder / name).write_text("these are not weights\n")
    elif kind == "png":
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    elif kind == "onnx":
        (folder / name).write_bytes(onnx_file(tmp_path / "o", external=False).read_bytes())
    else:
        os.mkfifo(folder / name)
    what = {"text": "a text file", "png": "a PNG image", "onnx": "an ONNX model",
            "fifo": "not a regular file"}[kind]
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "path", list(sys.path))
    code = main(["build", "--recipe", str(_recipe(folder, f"{mod}:build", weights=name)),
                 "-o", str(out), "-q", "--no-cache"])
    err = capsys.readouterr().err
    _no_traceback(err)
    assert code == ConfigError.exit_code == 2, err
    assert str(folder / name) in err and what in err, err
    assert not out.exists()
    sys.modules.pop(mod, None)
