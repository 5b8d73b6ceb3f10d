"""Reliability cases 1-7: untrusted model files (corrupt or mislabelled bytes, ONNX external
data outside the folder, pickled code, oversized graphs, unsupported ops, dynamic shapes) are
refused with a named error before any runtime opens them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.bundle import load_bundle
from edgekit.cli import main
from edgekit.errors import (
    BundleError,
    ConfigError,
    DataError,
    ExportError,
    ShapeError,
)

from conftest import tiny_tflite_bytes
from reliability_helpers import (
    ROOT,
    bench_cli,
    fake_bundle,
    have,
    needs_onnx,
    onnx_file,
    rel,
    set_external,
)


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

    if have("onnxruntime"):
        import onnxruntime

        monkeypatch.setattr(onnxruntime, "InferenceSession", boom)
    import edgekit.backends.tflite as tfl

    monkeypatch.setattr(tfl, "_interpreter_module", lambda: SimpleNamespace(Interpreter=boom))


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
    if have("onnx"):
        sources["model.onnx"] = onnx_file(tmp_path / "src", external=False).read_bytes()
    for name, data in sources.items():
        path = tmp_path / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(GARBAGE[kind](data))
        assert main(bench_cli(str(path))) == 1, name
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
    root = fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": b"\x00" * 64})
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
    root = fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)[:20]})
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
    if have("onnx"):
        cases["net.tflite"] = (onnx_file(tmp_path / "o", external=False).read_bytes(),
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
        assert main(bench_cli(str(path))) == 1
        assert what in capsys.readouterr().err


@rel(case=2, behaviour="mislabelled file inside a bundle: Backend.load refuses it (BundleError "
     "naming the file) before the runtime is created")
def test_backend_load_checks_format(tmp_path, no_runtime):
    from edgekit.backends import get_backend

    root = fake_bundle(tmp_path / "b", "onnxruntime", {"t/model.onnx": tiny_tflite_bytes(64)})
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

    path = onnx_file(tmp_path / "m")
    secret = tmp_path / "secret.bin"
    secret.write_bytes((tmp_path / "m" / "model.onnx.data").read_bytes())  # would even "work"
    if how == "dotdot":
        set_external(path, location="../secret.bin")
        needle = "'..' component"
    elif how == "absolute":
        set_external(path, location=str(secret))
        needle = "absolute path"
    else:
        (tmp_path / "m" / "model.onnx.data").unlink()
        (tmp_path / "m" / "model.onnx.data").symlink_to(secret)
        needle = "outside"
    with pytest.raises(BundleError) as info:
        check_onnx_file(path)
    msg = str(info.value)
    assert str(path) in msg and "'w'" in msg and needle in msg and "refused" in msg, msg
    assert main(bench_cli(str(path))) == 1
    assert "refused" in capsys.readouterr().err


@needs_onnx
@rel(case=3, behaviour="ONNX external data whose offset/length run past the end of the data "
     "file (or a missing data file): refused before reading, naming tensor, bytes and file")
def test_onnx_external_data_offsets_past_the_end(tmp_path, no_external_reads):
    from edgekit.backends.onnxruntime import check_onnx_file

    path = onnx_file(tmp_path / "m")
    for entries, needle in (({"offset": "0", "length": str(10**9)}, "bytes 0..1000000000"),
                            ({"offset": str(10**6), "length": "48"}, "bytes 1000000..1000048"),
                            ({"location": "nope.data"}, "missing")):
        set_external(path, **entries)
        with pytest.raises(BundleError, match=needle) as info:
            check_onnx_file(path)
        assert "tensor 'w'" in str(info.value)


@needs_onnx
@rel(case=3, behaviour="control: a well-formed ONNX model with external data in its folder "
     "passes the checks and runs")
def test_onnx_external_data_inside_the_folder_loads(tmp_path):
    from edgekit.backends import get_backend
    from edgekit.bench import artifact_from_file

    art = artifact_from_file(onnx_file(tmp_path / "m"))
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
    root = fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)},
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
    from edgekit.backends import get_backend
    from edgekit.bench import artifact_from_file

    sess = get_backend("onnxruntime").load(artifact_from_file(onnx_file(tmp_path / "m")),
                                           threads=1, options={})
    with pytest.raises(ShapeError, match=r"input 'x': expected shape \[1, 4\], got \[2, 4\]"):
        sess.run([np.zeros((2, 4), np.float32)])
