"""Reliability and security (issue 8): untrusted models and data, faults mid-run, nothing lost.

Every test carries ``@pytest.mark.reliability(case=N, behaviour=...)``;
``scripts/reliability_table.py`` runs them and writes the README table from the outcomes.
Cases that need root (tmpfs mounts) or sshd skip with the reason when those are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgekit._npz import save_npz
from edgekit.bundle import SCHEMA_VERSION, file_record, load_bundle, sha256_file, write_json
from edgekit.cli import main
from edgekit.errors import (
    BundleError,
    ConfigError,
    DataError,
    ExportError,
    OutputPathError,
    ShapeError,
    UsageError,
    VerificationError,
)

from conftest import tiny_tflite_bytes

rel = pytest.mark.reliability
ROOT = Path(__file__).resolve().parent.parent


def _have(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


needs_onnx = pytest.mark.skipif(not (_have("onnx") and _have("onnxruntime")),
                                reason="needs onnx and onnxruntime (edgekit[onnxruntime])")


# --------------------------------------------------------------------------- helpers


def _onnx_file(folder: Path, *, external: bool = True, in_shape=(1, 4)) -> Path:
    """A tiny real ONNX model (x @ w, w = 4x3), weights in model.onnx.data when ``external``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [in_shape[0], 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    return path


def _set_external(path: Path, **entries: str) -> None:
    """Rewrite the external-data entries (location/offset/length) of every external tensor."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            kv = {e.key: e.value for e in t.external_data}
            kv.update(entries)
            del t.external_data[:]
            for k, v in kv.items():
                t.external_data.add(key=k, value=str(v))
    path.write_bytes(model.SerializeToString())


@pytest.fixture
def no_external_reads(monkeypatch):
    """Fail the test if onnx reads any external data (the checks must refuse first)."""
    import onnx.external_data_helper as edh

    def boom(*_a, **_k):
        raise AssertionError("external data was read before the checks refused it")

    monkeypatch.setattr(edh, "load_external_data_for_model", boom)
    monkeypatch.setattr(edh, "load_external_data_for_tensor", boom)


@pytest.fixture
def no_runtime(monkeypatch):
    """Fail the test if a runtime is asked to open a file."""
    def boom(*_a, **_k):
        raise AssertionError("a runtime was given the file")

    if _have("onnxruntime"):
        import onnxruntime

        monkeypatch.setattr(onnxruntime, "InferenceSession", boom)
    import edgekit.backends.tflite as tfl

    monkeypatch.setattr(tfl, "_interpreter_module", lambda: SimpleNamespace(Interpreter=boom))


def _fake_bundle(root: Path, backend: str, files: dict[str, bytes], *, name="fake",
                 shape=(1, 4)) -> Path:
    """A bundle written by hand (consistent checksums) around the given artifact bytes."""
    root.mkdir(parents=True)
    for rel_path, data in files.items():
        (root / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (root / rel_path).write_bytes(data)
    concrete = [max(d, 1) for d in shape]
    save_npz(root / "reference.npz", {"input.x": np.ones((1, *concrete), np.float32),
                                      "output.y": np.zeros((1, concrete[0], 3), np.float32)})
    spec_in = [{"name": "x", "shape": list(shape), "dtype": "float32"}]
    spec_out = [{"name": "y", "shape": [shape[0], 3], "dtype": "float32"}]
    write_json(root / "manifest.json", {
        "schema_version": SCHEMA_VERSION, "name": name,
        "model": {"inputs": spec_in, "outputs": spec_out},
        "reference": file_record(root, "reference.npz"),
        "targets": {"t": {"backend": backend, "precision": "fp32",
                          "files": [file_record(root, f) for f in files],
                          "inputs": spec_in, "outputs": spec_out}},
    })
    return root


def _bench_cli(*args: str) -> list[str]:
    return ["bench", *args, "--runs", "2", "--warmup", "0", "--data", "none", "--no-memory", "-q"]


# =========================================================================== case 1


GARBAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "garbage": lambda b: bytes(range(256)) * 4,
    "empty": lambda b: b"",
}


@rel(case=1, behaviour="truncated, garbage or empty .onnx/.tflite/.xml given to `bench`: "
     "BundleError naming the file, exit 1, no runtime ever opens it")
@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_corrupt_files_to_bench_are_refused_before_any_runtime(kind, tmp_path, capsys,
                                                               no_runtime):
    good_tfl = tiny_tflite_bytes(200)
    # a real IR pair is not needed: the XML check runs first
    ir = b'<?xml version="1.0"?>\n<net name="m" version="11"><layers></layers></net>\n'
    sources = {"model.tflite": good_tfl, "model.xml": ir}
    if _have("onnx"):
        sources["model.onnx"] = _onnx_file(tmp_path / "src", external=False).read_bytes()
    for name, data in sources.items():
        path = tmp_path / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(GARBAGE[kind](data))
        assert main(_bench_cli(str(path))) == 1, name
        err = capsys.readouterr().err
        assert str(path) in err and "error" in err, (name, err)
        assert "Traceback" not in err


@rel(case=1, behaviour="tflite flatbuffer whose tables/vectors/buffers point past the end "
     "(cut tail, lying offsets): refused by the structural check, naming the file and the field")
def test_tflite_structure_is_checked_not_just_the_magic(tmp_path):
    from edgekit.modelfile import check_tflite_file

    ok = tmp_path / "ok.tflite"
    ok.write_bytes(tiny_tflite_bytes(24))
    check_tflite_file(ok)
    bad_root = tmp_path / "root.tflite"
    bad_root.write_bytes((10_000).to_bytes(4, "little") + b"TFL3" + bytes(24))
    with pytest.raises(BundleError, match=r"root.tflite.*root table"):
        check_tflite_file(bad_root)
    bad_vt = bytearray(tiny_tflite_bytes(24))
    bad_vt[16:20] = (-4000).to_bytes(4, "little", signed=True)  # vtable "after" the file end
    (tmp_path / "vt.tflite").write_bytes(bytes(bad_vt))
    with pytest.raises(BundleError, match="Model vtable"):
        check_tflite_file(tmp_path / "vt.tflite")


@rel(case=1, behaviour="a bundle whose artifact is garbage but whose checksums match (a "
     "crafted bundle) given to `verify`: target FAILED naming the file, exit 1, nothing run")
def test_verify_crafted_bundle_with_garbage_artifact(tmp_path, capsys, no_runtime):
    root = _fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": b"\x00" * 64})
    assert main(["verify", str(root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    entry = out["targets"]["t"]
    assert entry["status"] in ("failed", "skipped")
    if entry["status"] == "failed":
        assert "t/model.tflite" in entry["error"] and "TFLite" in entry["error"]


@rel(case=1, behaviour="garbage artifact given to `embed` (file or bundle): BundleError naming "
     "the file, exit 1, no .c/.h written")
def test_embed_refuses_corrupt_artifacts(tmp_path, capsys):
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"\x00" * 100)
    out = tmp_path / "gen"
    assert main(["embed", str(bad), "-o", str(out)]) == 1
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()
    root = _fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)[:20]})
    assert main(["embed", str(root), "-o", str(out)]) == 1
    assert "model.tflite" in capsys.readouterr().err and not out.exists()


@rel(case=1, behaviour="OpenVINO IR with a DTD/entity (XXE, billion laughs) or a .bin shorter "
     "than the offsets in the XML: refused before OpenVINO reads it")
def test_openvino_ir_xml_entities_and_short_bin(tmp_path):
    from edgekit.backends.openvino import check_ir_files

    xxe = tmp_path / "xxe.xml"
    xxe.write_text('<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                   '\n<net name="m" version="11"><layers>&e;</layers></net>\n')
    with pytest.raises(BundleError, match="DTD/entity"):
        check_ir_files(xxe)
    ir = tmp_path / "m.xml"
    ir.write_text('<?xml version="1.0"?>\n<net name="m" version="11"><layers>'
                  '<layer id="0" name="w" type="Const"><data offset="0" size="4096"/></layer>'
                  "</layers></net>\n")
    (tmp_path / "m.bin").write_bytes(b"\0" * 100)
    with pytest.raises(BundleError, match=r"m.bin is 100 bytes but m.xml reads up to byte 4096"):
        check_ir_files(ir)


# =========================================================================== case 2


@rel(case=2, behaviour="a file whose bytes are another format than its extension (TFLite "
     "named .onnx, a torch.save zip named .tflite, a PNG named .xml): error names the file, "
     "what it really is, and the fix")
def test_format_extension_mismatch(tmp_path, capsys, no_runtime):
    from edgekit.modelfile import check_format

    cases = {
        "model.onnx": (tiny_tflite_bytes(64), "is a TFLite flatbuffer",
                       "rename it to model.tflite"),
        "model.xml": (b"\x89PNG\r\n\x1a\n" + bytes(64), "is a PNG image", None),
    }
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(2)}, ckpt)
    cases["model.tflite"] = (ckpt.read_bytes(), "is a zip archive", None)
    if _have("onnx"):
        cases["net.tflite"] = (_onnx_file(tmp_path / "o", external=False).read_bytes(),
                               "is an ONNX model", "rename it to net.onnx")
    for name, (data, what, fix) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(BundleError) as info:
            check_format(path)
        msg = str(info.value)
        assert str(path) in msg and what in msg, msg
        if fix:
            assert fix in msg
        assert main(_bench_cli(str(path))) == 1
        assert what in capsys.readouterr().err


@rel(case=2, behaviour="mislabelled file inside a bundle: Backend.load refuses it (BundleError "
     "naming the file) before the runtime is created")
def test_backend_load_checks_format(tmp_path, no_runtime):
    from edgekit.backends import get_backend

    root = _fake_bundle(tmp_path / "b", "onnxruntime", {"t/model.onnx": tiny_tflite_bytes(64)})
    bundle = load_bundle(root)
    with pytest.raises(BundleError, match=r"model.onnx is a TFLite flatbuffer"):
        get_backend("onnxruntime").load(bundle.artifact("t"), threads=1, options={})


# =========================================================================== case 3


@needs_onnx
@rel(case=3, behaviour="ONNX external data at '../x', an absolute path or through a symlink "
     "out of the model's folder: refused before any byte is read")
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_onnx_external_data_outside_the_folder(how, tmp_path, no_external_reads, capsys):
    from edgekit.backends.onnxruntime import check_onnx_file

    path = _onnx_file(tmp_path / "m")
    secret = tmp_path / "secret.bin"
    secret.write_bytes((tmp_path / "m" / "model.onnx.data").read_bytes())  # would even "work"
    if how == "dotdot":
        _set_external(path, location="../secret.bin")
        needle = "'..' component"
    elif how == "absolute":
        _set_external(path, location=str(secret))
        needle = "absolute path"
    else:
        (tmp_path / "m" / "model.onnx.data").unlink()
        (tmp_path / "m" / "model.onnx.data").symlink_to(secret)
        needle = "outside"
    with pytest.raises(BundleError) as info:
        check_onnx_file(path)
    msg = str(info.value)
    assert str(path) in msg and "'w'" in msg and needle in msg and "refused" in msg, msg
    assert main(_bench_cli(str(path))) == 1
    assert "refused" in capsys.readouterr().err


@needs_onnx
@rel(case=3, behaviour="ONNX external data whose offset/length run past the end of the data "
     "file (or a missing data file): refused before reading, naming tensor, bytes and file")
def test_onnx_external_data_offsets_past_the_end(tmp_path, no_external_reads):
    from edgekit.backends.onnxruntime import check_onnx_file

    path = _onnx_file(tmp_path / "m")
    for entries, needle in (({"offset": "0", "length": str(10**9)}, "bytes 0..1000000000"),
                            ({"offset": str(10**6), "length": "48"}, "bytes 1000000..1000048"),
                            ({"location": "nope.data"}, "missing")):
        _set_external(path, **entries)
        with pytest.raises(BundleError, match=needle) as info:
            check_onnx_file(path)
        assert "tensor 'w'" in str(info.value)


@needs_onnx
@rel(case=3, behaviour="control: a well-formed ONNX model with external data in its folder "
     "passes the checks and runs")
def test_onnx_external_data_inside_the_folder_loads(tmp_path):
    from edgekit.bench.harness import artifact_from_file
    from edgekit.backends import get_backend

    art = artifact_from_file(_onnx_file(tmp_path / "m"))
    assert art.files == ["model.onnx", "model.onnx.data"]
    sess = get_backend("onnxruntime").load(art, threads=1, options={})
    (y,) = sess.run([np.ones((1, 4), np.float32)])
    assert np.allclose(y, np.ones((1, 4)) @ np.arange(12, dtype=np.float32).reshape(4, 3))


# =========================================================================== case 4


def _touch_marker(path: str) -> None:  # what a hostile pickle would run
    Path(path).write_text("pwned")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch_marker, (self.marker,))


@rel(case=4, behaviour="a checkpoint needing globals `weights_only` refuses: DataError naming "
     "the file and the refused global, code never runs; trust=True / --trust-checkpoint / "
     "trust_weights opt in")
def test_checkpoint_with_code_is_refused_unless_trusted(tmp_path, capsys):
    from edgekit.checkpoint import UntrustedCheckpointError, load_checkpoint
    from edgekit.recipe import _load_weights, parse_recipe

    marker = tmp_path / "ran"
    ckpt = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, ckpt)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(ckpt)
    msg = str(info.value)
    assert str(ckpt) in msg and "_touch_marker" in msg and "--trust-checkpoint" in msg
    assert info.value.refused and info.value.refused.endswith("_touch_marker")
    assert not marker.exists()
    # through a recipe: refused (ConfigError naming the recipe key), opt-in runs it
    model = nn.Linear(2, 1)
    recipe = parse_recipe({"model": "m:f", "targets": ["x86-onnxruntime-fp32"],
                           "input_shapes": ["1x2"], "weights": "evil.pt"},
                          source="r.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="weights = 'evil.pt'.*_touch_marker"):
        _load_weights(recipe, model)
    assert not marker.exists()
    load_checkpoint(ckpt, trust=True)
    assert marker.read_text() == "pwned"  # the opt-in really is full unpickling
    assert "unpickling" in capsys.readouterr().err
    # plain state_dicts load safely; truncated files are a clear DataError
    good = tmp_path / "good.pt"
    torch.save(nn.Linear(2, 1).state_dict(), good)
    assert set(load_checkpoint(good)) == {"weight", "bias"}
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    # the CLI flag exists and is refused without a recipe
    assert main(["build", "cnn", "-t", "x86-onnxruntime-fp32", "-o", str(tmp_path / "o"),
                 "--trust-checkpoint"]) == 2
    assert "--trust-checkpoint needs --recipe" in capsys.readouterr().err


@rel(case=4, behaviour="edgekit itself never calls torch.load without weights_only=True outside "
     "edgekit.checkpoint (source scan)")
def test_no_unsafe_torch_load_in_edgekit():
    offenders = []
    for path in (ROOT / "edgekit").rglob("*.py"):
        text = path.read_text()
        for line_no, line in enumerate(text.splitlines(), 1):
            if "torch.load(" in line and path.name != "checkpoint.py" \
                    and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{line_no}")
            if "pickle.load" in line or "allow_pickle=True" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{line_no}")
    assert not offenders, offenders


# =========================================================================== case 5


class _Huge(nn.Module):
    """Reports 2.0 GiB + 512 KiB of float32 parameters without allocating them (meta device)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2**15, 2**14 + 4, device="meta")

    def forward(self, x):
        return self.lin(x)


@rel(case=5, behaviour="a model over 2 GiB exported to ONNX without external data (or on the "
     "int8 path, which writes one file): ExportError about the 2 GiB protobuf limit and "
     "external data, raised from parameter sizes before export")
def test_onnx_over_2gib_without_external_data(tmp_path):
    from edgekit.backends.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend()
    x = torch.zeros(1, 2**15, device="meta")
    with pytest.raises(ExportError) as info:
        be.export(_Huge(), (x,), tmp_path, input_names=["x"], output_names=["y"],
                  options={"external_data": False})
    msg = str(info.value)
    assert "2.00 GiB" in msg and "2 GiB limit" in msg and "external data" in msg
    assert "external_data = true" in msg
    with pytest.raises(ExportError, match="int8 path"):
        be.quantize(_Huge(), (x,), tmp_path, input_names=["x"], output_names=["y"],
                    options={}, calibration=[], config=None)
    assert not any(tmp_path.iterdir())  # nothing written


@needs_onnx
@rel(case=5, behaviour="the same size check with the limit lowered to 1 KB on a real tiny "
     "model: refused without external data; with external data (the default) it exports "
     "model.onnx + model.onnx.data and runs")
def test_size_check_with_lowered_limit(tmp_path, monkeypatch):
    import edgekit.backends._common as common
    from edgekit.backends.onnxruntime import OnnxRuntimeBackend

    monkeypatch.setattr(common, "PROTOBUF_LIMIT", 1000)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()  # ~2.7 KB
    x = torch.randn(1, 16)
    be = OnnxRuntimeBackend()
    with pytest.raises(ExportError, match="external data"):
        be.export(model, (x,), tmp_path / "a", input_names=["x"], output_names=["y"],
                  options={"external_data": False})
    art = be.export(model, (x,), tmp_path / "b", input_names=["x"], output_names=["y"],
                    options={})
    assert len(art.files) == 2 and art.files[1].endswith(".data")
    (y,) = be.load(art, threads=1, options={}).run([x.numpy()])
    assert np.allclose(y, model(x).detach().numpy(), atol=1e-5)


# =========================================================================== case 6


class _Gauss(nn.Module):
    def forward(self, x):
        return torch.special.erfinv(x.clamp(-0.9, 0.9))


class _UsesErfinv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Sequential(nn.Tanh(), _Gauss())

    def forward(self, x):
        return self.head(self.body(x))


@needs_onnx
@rel(case=6, behaviour="an op the target cannot convert: ExportError naming the op, the graph "
     "node, the module path and its class, with a hint")
def test_unsupported_op_names_op_node_and_module(tmp_path):
    from edgekit.backends import get_backend

    with pytest.raises(ExportError) as info:
        get_backend("onnxruntime").export(_UsesErfinv(), (torch.randn(2, 4),), tmp_path,
                                          input_names=["x"], output_names=["y"], options={})
    e = info.value
    msg = str(e)
    assert e.op and "erfinv" in e.op and e.layer == "head.1"
    assert "(_Gauss)" in msg and "hint" in msg
    assert re.search(r"graph node '\w*erfinv\w*'", msg), msg


# =========================================================================== case 7


@rel(case=7, behaviour="dynamic dimensions where the target needs static shapes (`embed` for "
     "firmware): ShapeError naming the tensor and the dimension, nothing written")
def test_dynamic_shape_for_static_target(tmp_path, capsys):
    root = _fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)},
                        shape=(-1, 4))
    out = tmp_path / "gen"
    assert main(["embed", str(root), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "input 'x' has a dynamic dimension 0" in err and "static shapes" in err
    assert not out.exists()


@needs_onnx
@rel(case=7, behaviour="static artifacts fed another shape at run time: ShapeError naming the "
     "input, expected and given shapes")
def test_static_artifact_refuses_other_shapes(tmp_path):
    from edgekit.bench.harness import artifact_from_file
    from edgekit.backends import get_backend

    sess = get_backend("onnxruntime").load(artifact_from_file(_onnx_file(tmp_path / "m")),
                                           threads=1, options={})
    with pytest.raises(ShapeError, match=r"input 'x': expected shape \[1, 4\], got \[2, 4\]"):
        sess.run([np.zeros((2, 4), np.float32)])


# =========================================================================== case 8


def _cand(shape, dtype="float32"):
    from edgekit.backends import TensorSpec

    return SimpleNamespace(name="m", inputs=[TensorSpec("x", tuple(shape), dtype)])


@rel(case=8, behaviour="evaluation data (bench --data) with the wrong shape, layout (NHWC vs "
     "NCHW), dtype or NaN/inf values: ShapeError/DataError naming the input, before any run")
def test_eval_data_checks(tmp_path, capsys):
    from edgekit.bench.harness import check_data_fits

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
    if _have("onnx"):  # the same through the CLI: exit 2, nothing benchmarked
        path = _onnx_file(tmp_path / "m")
        data = tmp_path / "d.npz"
        np.savez(data, x=np.full((4, 4), np.nan, np.float32), y=np.zeros(4, np.int64))
        argv = [a for a in _bench_cli(str(path)) if a not in ("--data", "none")]
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
    if _have("onnx") and _have("onnxruntime"):
        src = _onnx_file(tmp_path / "m")
        root = _fake_bundle(tmp_path / "b", "onnxruntime",
                            {"t/model.onnx": src.read_bytes(),
                             "t/model.onnx.data": (src.parent / "model.onnx.data").read_bytes()})
        assert main(["verify", str(root)]) == 1
        out = capsys.readouterr().out
        assert "FAILED" in out and "max rel" in out and "onnxruntime 1." in out


# =========================================================================== case 10


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head((h + torch.relu(self.res(h))).mean((2, 3)))


class _Concat(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 8, 1)
        self.after = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.cat([self.left(h), self.right(h)], 1)
        return self.head(torch.relu(self.after(h)).mean((2, 3)))


class _Grouped(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        self.pw = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(self.pw(self.grouped(h))).mean((2, 3)))


COUPLINGS = {
    "residual": (_Residual, {"stem", "res"}),
    "concat": (_Concat, {"stem", "left", "right"}),
    "grouped-conv": (lambda: _Grouped(4), {"stem", "grouped"}),
    "depthwise-conv": (lambda: _Grouped(16), {"stem", "grouped", "pw"}),
}


@rel(case=10, behaviour="pruning across a residual add, a concatenation, a grouped or a "
     "depthwise conv: the coupled layers are pruned as one group, recorded by name in the "
     "history, and the model still runs")
@pytest.mark.parametrize("coupling", sorted(COUPLINGS))
def test_pruning_keeps_couplings_and_names_groups(coupling):
    from edgekit.prune import prune

    factory, coupled = COUPLINGS[coupling]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, 3, 8, 8)
    res = prune(model, (x,), ratio=0.5)
    assert model(x).shape == (1, 5)
    groups = res.history["groups"] if isinstance(res.history, dict) else res.history
    names = [{layer for layer, _ in g["layers"]} for g in groups]
    assert any(coupled <= n for n in names), names
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0


@rel(case=10, behaviour="a pruning target that would empty a layer or prunes nothing: "
     "ConfigError saying so, model untouched")
def test_pruning_that_would_empty_layers_is_refused():
    from edgekit.prune import prune

    tiny = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.raises(ConfigError, match="prunes nothing"):
        prune(tiny, (torch.randn(1, 4),), ratio=0.5, round_to=8)
    assert tiny[0].out_features == 8


@rel(case=10, behaviour="a concatenation feeding a grouped conv (which torch-pruning would "
     "mis-index) is refused before anything is pruned: ConfigError naming the concatenated "
     "layers and the grouped conv, with the keep_layers that avoid it")
def test_pruning_concat_into_grouped_conv_names_the_group():
    from edgekit.prune import prune

    torch.manual_seed(0)
    model = _Concat(groups=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"\['left', 'right'\] feeds grouped convolution "
                       r"'after' \(groups=4\)") as err:
        prune(model, (torch.randn(1, 3, 8, 8),), ratio=0.5)
    assert "keep_layers=['left', 'right', 'after']" in str(err.value.hint)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was pruned
    res = prune(model, (torch.randn(1, 3, 8, 8),), ratio=0.5,
                keep_layers=["left", "right", "after"])
    assert res.macs_after < res.macs_before and model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


# =========================================================================== case 11


def _slow_factory(tmp_path: Path) -> None:
    (tmp_path / "slownet.py").write_text(textwrap.dedent("""
        import glob, os, time, torch
        class Slow(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 2)
            def forward(self, x):
                # once the bundle is being staged, say so and stall (the test kills us here)
                if glob.glob(os.path.join(os.environ["SLOW_DIR"], ".out.partial-*")):
                    open(os.environ["SLOW_MARKER"], "w").close()
                    time.sleep(120)
                return self.lin(x)
        def make():
            torch.manual_seed(0)
            return Slow()
    """))


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _stalled_build(tmp_path: Path) -> subprocess.Popen:
    """A real `edgekit build` of the slow model into tmp_path/out, stalled mid-export (its
    staging folder exists); the caller signals it and reaps it with :func:`_reap`."""
    _slow_factory(tmp_path)
    marker = tmp_path / "stalled"
    env = {**os.environ, "SLOW_DIR": str(tmp_path), "SLOW_MARKER": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "build", "slownet:make", "--input-shape", "1x4",
         "-t", "x86-onnxruntime-fp32", "-o", "out", "-q"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the build to stall")
        assert proc.poll() is None, proc.communicate()
    except BaseException:
        _reap(proc)
        raise
    return proc


def _reap(proc: subprocess.Popen, sig: int | None = None) -> str:
    """Send ``sig`` (if given) and wait for the process; kill it if it lingers. Its stderr."""
    try:
        if sig is not None:
            proc.send_signal(sig)
        return proc.communicate(timeout=60)[1] or ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file()}


@rel(case=11, behaviour="SIGTERM or SIGINT to `edgekit build` mid-export (real subprocess, real "
     "signal): exit 143/130, the previous bundle byte-identical, the staging folder removed")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_during_build_keeps_previous_bundle(sig, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "t").mkdir()
    (out / "t" / "model.onnx").write_bytes(b"previous")
    write_json(out / "manifest.json", {"schema_version": SCHEMA_VERSION, "name": "previous",
                                       "targets": {"t": {"files": [{"path": "t/model.onnx"}]}}})
    before = _tree(out)
    proc = _stalled_build(tmp_path)
    try:
        assert list(tmp_path.glob(".out.partial-*")), "expected a staging folder mid-build"
    finally:
        err = _reap(proc, getattr(signal, sig))
    assert proc.returncode == (143 if sig == "SIGTERM" else 130), err
    assert f"interrupted ({'SIGTERM' if sig == 'SIGTERM' else 'Ctrl-C'})" in err
    assert "Traceback" not in err
    assert _tree(out) == before
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())


@needs_onnx
@rel(case=11, behaviour="SIGTERM to `edgekit bench` mid-timing (real subprocess, real signal): "
     "exit 143, bench.json written and marked interrupted (by SIGTERM) with the samples so far")
def test_sigterm_during_bench_marks_partial_results(tmp_path):
    path = _onnx_file(tmp_path / "m")
    out = tmp_path / "rep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "bench", str(path), "--duration", "120",
         "--warmup", "1", "--data", "none", "--no-memory", "--format", "json", "-o", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any("timing" in ln for ln in lines) or proc.poll() is not None, 120,
                  "bench to start timing")
        time.sleep(1.0)
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    err = "".join(lines)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err
    rep = json.loads((out / "bench.json").read_text())
    assert rep["interrupted"] is True and rep["interrupted_by"] == "SIGTERM"
    assert rep["status"] == "interrupted" and rep["partial"] is True
    row = rep["results"][0]
    assert row["status"] == "partial" and row["latency"]["n"] >= 1


# =========================================================================== case 12


@pytest.fixture
def tiny_mount(tmp_path):
    """mount(options) -> a fresh tmpfs with those options (root only); unmounted afterwards."""
    mounts: list[Path] = []
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs (not root here)")

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _prepare_previous(dest: Path) -> dict[str, str]:
    dest.mkdir()
    (dest / "manifest.json").write_text('{"schema_version": 1, "targets": {}, "previous": true}\n')
    return _tree(dest)


@needs_onnx
@rel(case=12, behaviour="disk full during export (real 64 KiB tmpfs): OutputPathError 'no space "
     "left on device', exit 2, previous bundle byte-identical, no partial folder left")
def test_disk_full_during_export_real_tmpfs(tmp_path, tiny_mount):
    from edgekit.pipeline import compress

    mnt = tiny_mount("size=64k")
    dest = mnt / "out"
    before = _prepare_previous(dest)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()  # ~70 KB
    with pytest.raises(OutputPathError) as info:
        compress(model, (torch.randn(1, 64),), targets=["x86-onnxruntime-fp32"], out_dir=dest,
                 input_names=["x"], output_names=["y"], progress=False)
    msg = str(info.value)
    assert "no space left on device" in msg and "previous bundle" in msg and "free" in msg
    assert _tree(dest) == before
    assert sorted(p.name for p in mnt.iterdir()) == ["out"]


@rel(case=12, behaviour="disk full simulated (OSError ENOSPC raised by the exporter, wrapped by "
     "the converter): same OutputPathError, previous bundle intact, nothing left (runs "
     "without root)")
def test_disk_full_simulated_enospc(tmp_path, monkeypatch):
    import errno

    from edgekit.backends.onnxruntime import OnnxRuntimeBackend
    from edgekit.pipeline import compress

    def full_export(self, model, example_inputs, out_dir, **kw):
        (Path(out_dir) / "model.onnx").write_bytes(b"half")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "model.onnx"))
        except OSError as exc:
            raise ExportError("writing failed", backend="onnxruntime") from exc

    monkeypatch.setattr(OnnxRuntimeBackend, "export", full_export)
    dest = tmp_path / "out"
    before = _prepare_previous(dest)
    with pytest.raises(OutputPathError, match="no space left on device.*previous bundle"):
        compress(nn.Linear(4, 2), (torch.randn(1, 4),), targets=["x86-onnxruntime-fp32"],
                 out_dir=dest, input_names=["x"], output_names=["y"], progress=False)
    assert _tree(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@rel(case=12, behaviour="unwritable output folder (read-only tmpfs as root, chmod 555 "
     "otherwise): `build` exits 2 with 'not writable' before any work")
def test_unwritable_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        point = tmp_path / "ro"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"root, and cannot mount a read-only tmpfs: {proc.stderr.strip()}")
    else:
        point = tmp_path / "ro"
        point.mkdir()
        point.chmod(0o555)
    try:
        rc = main(["build", "cnn", "-t", "x86-onnxruntime-fp32", "-o", str(point / "out"),
                   "--no-train", "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and "is not writable" in err and str(point) in err, err
        assert not (point / "out").exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        else:
            point.chmod(0o755)


# =========================================================================== case 13


@pytest.fixture
def loopback_ssh(tmp_path):
    from edgekit.bench.arm_emulation import loopback_sshd

    if not shutil.which("ssh") or not (shutil.which("sshd") or Path("/usr/sbin/sshd").is_file()):
        pytest.skip("needs ssh and sshd (apt-get install openssh-server openssh-client)")
    bin_dir = tmp_path / "board-bin"
    bin_dir.mkdir()
    try:
        with loopback_sshd(tmp_path / "sshd", path_prefix=bin_dir) as ssh:
            yield ssh, bin_dir
    except RuntimeError as exc:
        pytest.skip(f"cannot start a loopback sshd: {exc}")


@needs_onnx
@rel(case=13, behaviour="a remote device that disconnects mid-benchmark (loopback sshd, the "
     "session killed while the runner runs): RemoteError 'lost the connection', results marked "
     "partial, exit 1, no hang")
def test_remote_disconnect_mid_benchmark(loopback_ssh, tmp_path, capsys):
    from edgekit.bench.remote import RemoteDevice, RemoteError, run_remote

    ssh, bin_dir = loopback_ssh
    started = tmp_path / "runner-started"
    # the board's python3: says it started, then its SSH session drops (sshd child killed)
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        touch {started}
        pid=$$
        while [ "$pid" -gt 1 ]; do
            pid=$(awk '{{print $4}}' /proc/$pid/stat)
            case "$(cat /proc/$pid/comm)" in sshd*) kill -9 "$pid"; exit 0;; esac
        done
        sleep 60
    """))
    (bin_dir / "python3").chmod(0o755)
    dev = RemoteDevice(host=ssh.host, port=ssh.port, user=ssh.user, key=str(ssh.key),
                       known_hosts=str(ssh.known_hosts), command_timeout=60,
                       python=str(bin_dir / "python3"), lock_dir=str(tmp_path / "locks"))
    path = _onnx_file(tmp_path / "m")
    t0 = time.perf_counter()
    with pytest.raises(RemoteError) as info:
        run_remote(dev, [path, path.parent / "model.onnx.data"], [np.zeros((1, 4), np.float32)],
                   runs=2)
    assert time.perf_counter() - t0 < 60
    assert started.exists(), "the runner never started: the disconnect was not mid-run"
    msg = str(info.value)
    assert "lost the connection" in msg and "during the runner" in msg and "partial" in msg
    assert info.value.partial["partial"] is True
    # through bench(): the report is written and marked partial (the CLI then exits 1)
    from edgekit.bench.harness import bench

    out = tmp_path / "rep"
    rep = bench(path, remote=dev, runs=2, data="none", memory=False, out_dir=out,
                formats=("json",), progress=False)
    assert rep["partial"] is True and rep["status"] == "partial"
    assert "lost the connection" in rep["errors"][0]["error"]
    assert json.loads((out / "bench.json").read_text())["partial"] is True


@rel(case=13, behaviour="remote commands are argument lists, each quoted for the remote shell "
     "(no interpolated strings): a hostile file name stays one argument")
def test_remote_commands_are_argument_lists():
    from edgekit.bench.remote import RemoteDevice

    dev = RemoteDevice(host="h", port=22, user="u")
    cmd = dev.ssh_cmd(["python3", "x; rm -rf ~", "$(reboot)"])
    assert isinstance(cmd, list) and cmd[-1] == "python3 'x; rm -rf ~' '$(reboot)'"
    src = (ROOT / "edgekit" / "bench" / "remote.py").read_text()
    assert "shell=True" not in src and "os.system" not in src


# =========================================================================== case 14

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True), st.text(max_size=12))
_json = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), c,
                                                                   max_size=4)), max_leaves=12)
_toml_scalar = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(),
                         st.text(max_size=12), st.lists(st.text(max_size=8), max_size=3))
_keys_profile = st.sampled_from(["name", "backend", "arch", "device", "precision", "layout",
                                 "threads", "description", "tolerance", "accuracy", "options",
                                 "bogus"])
_keys_recipe = st.sampled_from(["model", "targets", "input_shapes", "input_names",
                                "output_names", "epochs", "seed", "weights", "trust_weights",
                                "name", "verify_samples", "bogus"])
_known_values = st.sampled_from(["onnxruntime", "tflite", "openvino", "fp32", "int8", "cnn",
                                 "x86_64", "cpu", "nchw", "m:f", "1x4", "x86-tflite-fp32"])
_value = st.one_of(_toml_scalar, _known_values, st.lists(_known_values, max_size=3),
                   st.dictionaries(st.sampled_from(["max_abs", "min_cosine", "max_drop",
                                                    "min_top1_agreement", "x"]),
                                   st.one_of(st.floats(), st.integers(-5, 5), st.text(max_size=3)),
                                   max_size=3))
_PROP = settings(max_examples=120, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow,
                                        HealthCheck.function_scoped_fixture])


def _toml(data: dict) -> str:
    def v(x):
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, float):
            return "nan" if x != x else ("inf" if x == float("inf") else
                                         "-inf" if x == float("-inf") else repr(x))
        if isinstance(x, (int, str)):
            return json.dumps(x) if isinstance(x, str) else str(x)
        if isinstance(x, list):
            return "[" + ", ".join(v(i) for i in x) + "]"
        if isinstance(x, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {v(i)}" for k, i in x.items()) + "}"
        raise TypeError(x)
    return "\n".join(f"{json.dumps(k)} = {v(x)}" for k, x in data.items()) + "\n"


@rel(case=14, behaviour="property test (hypothesis): any target-profile TOML (random keys, "
     "types, NaN/inf, garbage bytes) gives a valid profile or a ConfigError naming the file")
@_PROP
@given(base=st.sampled_from([{}, {"name": "p", "backend": "onnxruntime"},
                             {"name": "p", "backend": "tflite", "precision": "int8"}]),
       data=st.dictionaries(_keys_profile, _value, max_size=6),
       noise=st.one_of(st.none(), st.none(), st.binary(max_size=40)))
@example(base={"name": "p", "backend": "onnxruntime"}, noise=None,
         data={"tolerance": {"max_abs": float("nan")}})  # NaN used to be accepted
@example(base={"name": "p", "backend": "onnxruntime"}, noise=None,
         data={"accuracy": {"max_drop": float("nan")}})
def test_profile_loader_properties(base, data, noise, tmp_path_factory):
    from edgekit.profiles import load_profile

    data = {**base, **data}
    path = tmp_path_factory.mktemp("p") / "t.toml"
    path.write_bytes(noise if noise is not None else _toml(data).encode())
    try:
        prof = load_profile(path)
    except (ConfigError, UsageError) as exc:
        assert str(path) in str(exc)
        return
    assert prof.backend in ("onnxruntime", "tflite", "openvino") and 1 <= prof.threads <= 256
    for value in prof.tolerance.to_json().values():
        assert value is None or value >= 0
    assert prof.max_accuracy_drop >= 0


@rel(case=14, behaviour="property test (hypothesis): any recipe TOML gives a Recipe or a "
     "ConfigError naming the file")
@_PROP
@given(base=st.sampled_from([{}, {"model": "cnn", "targets": ["x86-tflite-fp32"]},
                             {"model": "m:f", "targets": ["x86-tflite-fp32"],
                              "input_shapes": ["1x4"]}]),
       data=st.dictionaries(_keys_recipe, _value, max_size=6),
       noise=st.one_of(st.none(), st.none(), st.binary(max_size=40)))
def test_recipe_loader_properties(base, data, noise, tmp_path_factory):
    from edgekit.recipe import load_recipe

    data = {**base, **data}
    path = tmp_path_factory.mktemp("r") / "r.toml"
    path.write_bytes(noise if noise is not None else _toml(data).encode())
    try:
        recipe = load_recipe(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert recipe.targets and all(isinstance(t, str) for t in recipe.targets)


@rel(case=14, behaviour="property test (hypothesis): any manifest.json (random JSON, mutated "
     "valid manifests) gives a Bundle or a BundleError; unsafe paths never validate")
@_PROP
@given(junk=_json, mutation=st.tuples(st.sampled_from(["name", "targets", "files", "path",
                                                       "sha256", "inputs", "shape", "reference",
                                                       "backend"]), _json),
       raw=st.one_of(st.none(), st.binary(max_size=30)))
def test_manifest_reader_properties(junk, mutation, raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("b")
    good = {"schema_version": SCHEMA_VERSION, "name": "n",
            "reference": {"path": "reference.npz", "sha256": "0" * 64},
            "targets": {"t": {"backend": "onnxruntime", "precision": "fp32",
                              "files": [{"path": "t/model.onnx", "sha256": "0" * 64}],
                              "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
                              "outputs": [{"name": "y", "shape": [1, 3], "dtype": "float32"}]}}}
    key, value = mutation
    entry = good["targets"]["t"]
    if key in ("name", "targets", "reference"):
        good[key] = value
    elif key in ("files", "inputs", "backend"):
        entry[key] = value
    elif key in ("path", "sha256"):
        entry["files"][0][key] = value
    else:
        entry["inputs"][0]["shape"] = value
    for manifest in (junk, good):
        if raw is not None:
            (root / "manifest.json").write_bytes(raw)
        else:
            try:
                text = json.dumps(manifest)
            except (ValueError, TypeError):
                continue
            (root / "manifest.json").write_text(text)
        try:
            bundle = load_bundle(root)
        except BundleError:
            continue
        for t in bundle.targets:
            art = bundle.artifact(t)
            for f in art.files:
                assert ".." not in Path(f).parts and not Path(f).is_absolute()
            with pytest.raises(BundleError):
                bundle.check_files()  # the files do not exist: named, never a crash


# =========================================================================== case 15


@pytest.fixture
def packed(tmp_path):
    root = _fake_bundle(tmp_path / "kws", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)})
    from edgekit.archive import pack_bundle

    return root, pack_bundle(root, tmp_path / "kws.tar.gz")


def _hostile(tmp_path: Path, name: str, add) -> Path:
    path = tmp_path / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _member(tar, name, data=b"x", **kw):
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


@rel(case=15, behaviour="pack -> unpack round trip: deterministic archive, unpacked bundle "
     "passes every checksum")
def test_pack_unpack_round_trip(packed, tmp_path, capsys):
    from edgekit.archive import pack_bundle, unpack_bundle

    root, archive = packed
    again = pack_bundle(root, tmp_path / "again.tar.gz")
    assert again.read_bytes() == archive.read_bytes()
    bundle = unpack_bundle(archive, tmp_path / "restored")
    bundle.check_files()
    assert _tree(tmp_path / "restored") == _tree(root)
    assert main(["unpack", str(archive), "-o", str(tmp_path / "cli")]) == 0
    assert "checksums ok" in capsys.readouterr().out


@rel(case=15, behaviour="archives with absolute paths, '..', symlinks, hard links, devices or "
     "FIFOs: refused before anything is written; the destination untouched, nothing left")
@pytest.mark.parametrize("attack", ["absolute", "dotdot", "symlink", "hardlink", "device",
                                    "fifo"])
def test_unpack_refuses_unsafe_members(attack, packed, tmp_path, capsys):
    from edgekit.archive import unpack_bundle

    _, good = packed
    evil_target = tmp_path / "evil-target"

    def add(tar):
        with tarfile.open(good) as src:
            for m in src.getmembers():
                tar.addfile(m, src.extractfile(m))
        if attack == "absolute":
            _member(tar, str(evil_target))
        elif attack == "dotdot":
            _member(tar, "kws/../../evil-target")
        elif attack == "symlink":
            _member(tar, "kws/t/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        elif attack == "hardlink":
            _member(tar, "kws/t/hl", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        elif attack == "device":
            _member(tar, "kws/t/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        else:
            _member(tar, "kws/t/fifo", type=tarfile.FIFOTYPE)

    archive = _hostile(tmp_path, attack, add)
    dest = tmp_path / "dest"
    before = _prepare_previous(dest)
    with pytest.raises(BundleError, match="refused"):
        unpack_bundle(archive, dest)
    assert _tree(dest) == before and not evil_target.exists()
    assert not list(tmp_path.glob(".dest.*"))
    assert main(["unpack", str(archive), "-o", str(dest)]) == 1
    assert "refused" in capsys.readouterr().err


@rel(case=15, behaviour="archives whose files do not match the manifest checksums, with extra "
     "files, or truncated: BundleError naming the file; nothing left, destination untouched")
def test_unpack_checks_checksums_and_truncation(packed, tmp_path):
    from edgekit.archive import unpack_bundle

    _, good = packed

    def tampered(tar):
        with tarfile.open(good) as src:
            for m in src.getmembers():
                data = src.extractfile(m).read()
                if m.name.endswith("model.tflite"):
                    data = data[:-1] + b"X"
                _member(tar, m.name, data)

    def extra(tar):
        with tarfile.open(good) as src:
            for m in src.getmembers():
                tar.addfile(m, src.extractfile(m))
        _member(tar, "kws/t/payload.sh", b"#!/bin/sh\n")

    dest = tmp_path / "dest"
    before = _prepare_previous(dest)
    with pytest.raises(BundleError, match=r"checksum mismatch for t/model.tflite"):
        unpack_bundle(_hostile(tmp_path, "tampered", tampered), dest)
    with pytest.raises(BundleError, match=r"files not in the manifest: t/payload.sh"):
        unpack_bundle(_hostile(tmp_path, "extra", extra), dest)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BundleError, match="cut.tar.gz"):
        unpack_bundle(cut, dest)
    assert _tree(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@rel(case=15, behaviour="a bundle folder whose file is a symlink out of it (checksum made to "
     "match): verify, load and embed refuse it as a link, nothing read through it")
def test_bundle_symlink_out_of_the_folder_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside.tflite"
    outside.write_bytes(tiny_tflite_bytes(64))
    root = _fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": outside.read_bytes()})
    (root / "t" / "model.tflite").unlink()
    (root / "t" / "model.tflite").symlink_to(outside)
    with pytest.raises(BundleError, match="is a link or resolves outside the bundle"):
        load_bundle(root).check_files()
    assert main(["verify", str(root)]) == 1
    assert "is a link" in capsys.readouterr().err
    assert main(["embed", str(root), "-o", str(tmp_path / "gen")]) == 1
    assert not (tmp_path / "gen").exists()


# =========================================================================== extras


@rel(case="deps", behaviour="dependency floors avoid the known model-file advisories: onnx "
     ">= 1.21, torch >= 2.6 (weights_only) in pyproject.toml, and the pins in constraints.txt "
     "satisfy them")
def test_dependency_floors():
    import tomllib

    from packaging.version import Version

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values()
                                   for r in extra]

    def floor(pkg: str) -> list[Version]:
        return [Version(r.split(">=")[1].split(",")[0]) for r in reqs
                if r.startswith(pkg + ">=")]

    assert floor("torch") and min(floor("torch")) >= Version("2.6")
    assert floor("onnx") and min(floor("onnx")) >= Version("1.21")
    assert not any(r.split("[")[0] in ("onnx", "torch") for r in reqs)  # never unbounded
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert Version(pins["onnx"]) >= Version("1.21")
    assert Version(pins["torch"].split("+")[0]) >= Version("2.6")


@needs_onnx
@rel(case="paths", behaviour="manifests carry no machine paths; manifests and bench reports "
     "carry no home folders, user names or secrets from the environment")
def test_no_machine_paths_or_secrets_in_outputs(tmp_path, monkeypatch):
    import getpass

    from edgekit.bench.harness import bench
    from edgekit.pipeline import compress

    monkeypatch.setenv("EDGEKIT_TEST_TOKEN", "s3cr3t-t0ken-value")
    torch.manual_seed(0)
    bundle = compress(nn.Linear(4, 3).eval(), (torch.randn(1, 4),),
                      targets=["x86-onnxruntime-fp32"], out_dir=tmp_path / "b",
                      input_names=["x"], output_names=["y"], progress=False)
    text = (bundle.root / "manifest.json").read_text()
    report = bench(bundle.root, runs=2, warmup=0, data="none", memory=False,
                   out_dir=tmp_path / "rep", formats=("json",), progress=False)
    assert report["status"] == "complete"
    tmp_root = tempfile.gettempdir().rstrip(os.sep) + os.sep
    assert str(tmp_path) not in text and tmp_root not in text  # the shipped manifest
    for blob in (text, (tmp_path / "rep" / "bench.json").read_text()):
        assert "s3cr3t" not in blob and "EDGEKIT_TEST_TOKEN" not in blob
        assert str(Path.home()) + "/" not in blob
        assert f"/{getpass.getuser()}/" not in blob


@rel(case="all", behaviour="every numbered case of the table has at least one reliability "
                          "test (all tests/test_reliability*.py files)")
def test_every_case_has_a_test():
    import ast

    sys.path.insert(0, str(ROOT / "scripts"))
    from reliability_table import CASES

    cases = set()
    for path in sorted((ROOT / "tests").glob("test_reliability*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "rel"
                    or isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "reliability"):
                for kw in node.keywords:
                    if kw.arg == "case" and isinstance(kw.value, ast.Constant):
                        cases.add(kw.value.value)
    numbered = {c for c in CASES if isinstance(c, int)}
    assert numbered <= cases, sorted(numbered - cases)
