"""Conformance suite: every fp32 backend exports, loads and runs the same small models.

TFLite conversions take a few seconds each, so its cases are marked slow.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import Artifact, get_backend
from edgekit.errors import (
    BackendMissingError,
    BundleError,
    EdgekitError,
    ExportError,
    ShapeError,
    UsageError,
)

torch.manual_seed(0)

BACKENDS = [
    "onnxruntime",
    "openvino",
    pytest.param("tflite", marks=pytest.mark.slow),
]
MAIN_FILE = {"onnxruntime": "model.onnx", "openvino": "model.xml", "tflite": "model.tflite"}


# --------------------------------------------------------------------------- test models


class ConvNet(nn.Module):
    """Conv + BatchNorm + Dropout: export must use eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x).mean(dim=(2, 3))))


class ImageText(nn.Module):
    """A float image and int64 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.emb = nn.Embedding(50, 8)
        self.fc = nn.Linear(12, 5)

    def forward(self, img: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        a = self.conv(img).mean(dim=(2, 3))
        b = self.emb(tokens).mean(dim=1)
        return self.fc(torch.cat([a, b], dim=1))


class TwoHeads(nn.Module):
    """Two outputs of different shapes, the smaller one first."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 7)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.cls(h), self.reg(h)


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 12, batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


class Gaussianize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfinv(torch.tanh(x))


class UsesErfinv(nn.Module):
    """erfinv is rejected by all three converters (found while building this suite)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Sequential(nn.ReLU(), Gaussianize())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(x))


def _case(name: str):
    g = torch.Generator().manual_seed(1)
    if name == "conv":
        return ConvNet(), (torch.randn(2, 3, 16, 16, generator=g),), ["image"], ["logits"]
    if name == "image_text":
        return (
            ImageText(),
            (torch.randn(1, 3, 8, 8, generator=g), torch.randint(0, 50, (1, 6), generator=g)),
            ["image", "tokens"],
            ["logits"],
        )
    if name == "two_heads":
        return TwoHeads(), (torch.randn(3, 6, generator=g),), ["x"], ["cls", "reg"]
    if name == "lstm":
        return LSTMNet(), (torch.randn(2, 5, 6, generator=g),), ["seq"], ["logits"]
    raise KeyError(name)


MODELS = ["conv", "image_text", "two_heads", "lstm"]
_CACHE: dict[tuple[str, str], tuple] = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(backend, model_name) -> (model, inputs, artifact); each export runs once."""

    def get(backend: str, name: str):
        key = (backend, name)
        if key not in _CACHE:
            model, inputs, in_names, out_names = _case(name)
            model.train()  # export must switch to eval itself, and restore this afterwards
            out_dir = tmp_path_factory.mktemp(f"{backend}-{name}")
            art = get_backend(backend).export(
                model, inputs, out_dir, input_names=in_names, output_names=out_names, options={}
            )
            assert model.training, "export left the model in eval mode"
            model.eval()
            _CACHE[key] = (model, inputs, art)
        return _CACHE[key]

    return get


def _reference(model: nn.Module, inputs: tuple) -> list[np.ndarray]:
    with torch.no_grad():
        out = model.eval()(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_export_load_run_matches_pytorch(backend, name, exported):
    model, inputs, art = exported(backend, name)
    _, _, in_names, out_names = _case(name)
    ref = _reference(model, inputs)

    # The artifact: files, names, shapes in PyTorch order.
    assert isinstance(art, Artifact) and art.backend == backend
    assert art.files[0] == MAIN_FILE[backend]
    for f in art.files:
        assert (art.root / f).is_file(), f
    assert sorted(art.files) == sorted(
        str(p.relative_to(art.root)) for p in art.root.rglob("*") if p.is_file()
    )
    if backend == "openvino":
        assert "model.bin" in art.files
    n_params = sum(p.numel() for p in model.parameters())
    assert 3 * n_params <= art.size_bytes <= 4 * n_params * 3 + 200_000, art.size_bytes
    assert [s.name for s in art.inputs] == in_names
    assert [s.name for s in art.outputs] == out_names
    assert [s.shape for s in art.inputs] == [tuple(x.shape) for x in inputs]
    assert [s.shape for s in art.outputs] == [r.shape for r in ref]
    assert all(s.dtype == "float32" for s in art.outputs)
    if name == "image_text":
        assert art.inputs[0].dtype == "float32"
        assert art.inputs[1].dtype == ("int32" if backend == "tflite" else "int64")
    if backend == "tflite":
        assert art.info["input_map"] == {n: f"args_{i}" for i, n in enumerate(in_names)}
        assert art.info["output_map"] == {n: f"output_{i}" for i, n in enumerate(out_names)}

    be = get_backend(backend)
    for threads in (1, 2):
        sess = be.load(art, threads=threads, options={})
        assert sess.info["threads"] == threads
        assert sess.info["device"] == "CPU"
        assert [s.name for s in sess.inputs] == in_names
        assert [s.name for s in sess.outputs] == out_names
        out = sess.run([x.numpy() for x in inputs])
        assert len(out) == len(ref)
        for o, r, n in zip(out, ref, out_names):
            assert isinstance(o, np.ndarray)
            assert o.shape == r.shape, n
            assert float(np.abs(o - r).max()) < 1e-4, n
        # run twice: results must not alias the runtime's buffers
        again = sess.run([(x * 0).numpy() if x.is_floating_point() else x.numpy()
                          for x in inputs])
        assert not np.array_equal(again[0], out[0])
        assert float(np.abs(out[0] - ref[0]).max()) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_errors_name_the_input(backend, exported):
    model, inputs, art = exported(backend, "image_text")
    sess = get_backend(backend).load(art, threads=1, options={})
    img, tok = inputs[0].numpy(), inputs[1].numpy()
    with pytest.raises(ShapeError) as err:
        sess.run([img[:, :, :4], tok])
    msg = str(err.value)
    assert "'image'" in msg and "[1, 3, 8, 8]" in msg and "[1, 3, 4, 8]" in msg
    with pytest.raises(ShapeError, match=r"'tokens'.*\[1, 6\].*\[1, 5\]"):
        sess.run([img, tok[:, :5]])
    with pytest.raises(ShapeError, match="expected 2 inputs"):
        sess.run([img])
    with pytest.raises(ShapeError, match="'tokens'.*dtype"):
        sess.run([img, tok.astype(np.float32)])
    # int64 feeds are accepted (cast where the artifact is int32) ...
    ref = _reference(model, inputs)
    out = sess.run([img.astype(np.float64), tok.astype(np.int64)])
    assert float(np.abs(out[0] - ref[0]).max()) < 1e-4


@pytest.mark.slow
def test_tflite_int64_values_that_do_not_fit_int32(exported):
    _, inputs, art = exported("tflite", "image_text")
    sess = get_backend("tflite").load(art, threads=1, options={})
    tok = inputs[1].numpy().copy()
    tok[0, 0] = 2**40
    with pytest.raises(ShapeError, match=r"'tokens'.*do not fit.*int32"):
        sess.run([inputs[0].numpy(), tok])


def test_openvino_reports_the_precision_it_runs(exported):
    _, inputs, art = exported("openvino", "conv")
    sess = get_backend("openvino").load(art, threads=2, options={})
    assert sess.info["precision"] == "fp32" and sess.info["openvino_precision"] == "f32"
    assert sess.info["requested_precision"] == "f32"
    sess = get_backend("openvino").load(art, threads=1, options={"inference_precision": "f32"})
    assert sess.info["precision"] == "fp32"
    sess = get_backend("openvino").load(art, threads=1, options={"inference_precision": "bf16"})
    import openvino as ov

    # what this CPU really runs when asked for bf16: bf16 only where OpenVINO has bf16 kernels
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert sess.info["precision"] == ("bf16" if bf16 else "fp32")
    with pytest.raises(UsageError, match="inference_precision"):
        get_backend("openvino").load(art, threads=1, options={"inference_precision": "fp32"})


def test_openvino_weights_stay_fp32(exported):
    model, _, art = exported("openvino", "conv")
    n_params = sum(p.numel() for p in model.parameters())
    assert (art.root / "model.bin").stat().st_size >= 4 * n_params * 0.9
    assert art.info["weights"] == "f32"


def test_onnxruntime_info_records_providers_and_threads(exported):
    _, _, art = exported("onnxruntime", "conv")
    sess = get_backend("onnxruntime").load(art, threads=2, options={})
    assert sess.info["providers"] == ["CPUExecutionProvider"]
    assert sess.info["intra_op_num_threads"] == 2
    assert sess.info["inter_op_num_threads"] == 1
    assert sess.info["execution_mode"] == "sequential"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tflite"])
def test_available_and_versions(backend):
    be = get_backend(backend)
    assert be.available() is None
    versions = be.versions()
    assert versions["torch"].startswith(torch.__version__.split("+")[0])
    main = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "ai-edge-litert"}
    assert versions[main[backend]][0].isdigit()


# --------------------------------------------------------------------------- missing packages

BLOCK = {
    "onnxruntime": ["onnxruntime"],
    "openvino": ["openvino"],
    "tflite": ["ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
               "tflite_runtime.interpreter", "litert_torch"],
}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tflite"])
def test_missing_package_names_the_extra(backend, monkeypatch, tmp_path):
    for mod in BLOCK[backend]:
        monkeypatch.setitem(sys.modules, mod, None)
    be = get_backend(backend)
    reason = be.available()
    assert reason is not None and BLOCK[backend][0] in reason and "not installed" in reason

    main = tmp_path / MAIN_FILE[backend]
    main.write_bytes(b"\0" * 64)
    art = Artifact(backend, tmp_path, [main.name], [], [])
    with pytest.raises(BackendMissingError) as err:
        be.load(art, threads=1, options={})
    assert f'edgekit[{backend}]' in str(err.value)
    assert err.value.exit_code == 2

    if backend != "onnxruntime":  # onnx export needs onnx/onnxscript, not onnxruntime
        with pytest.raises(BackendMissingError, match=rf"edgekit\[{backend}\]"):
            be.export(TwoHeads(), (torch.randn(1, 6),), tmp_path / "out",
                      input_names=["x"], output_names=["cls", "reg"], options={})


# --------------------------------------------------------------------------- corrupt files


def _copy(art: Artifact, dest: Path) -> Artifact:
    shutil.copytree(art.root, dest)
    return replace(art, root=dest)


def _corruptions(backend: str):
    main = MAIN_FILE[backend]
    cases = [
        ("truncated", main, lambda b: b[: len(b) // 2]),
        ("garbage", main, lambda b: bytes(range(256)) * 8),
        ("empty", main, lambda b: b""),
        ("other-format", main, lambda b: b"\x89PNG\r\n\x1a\n" + b"\0" * 200),
    ]
    if backend == "openvino":
        cases.append(("truncated-bin", "model.bin", lambda b: b[: len(b) // 2]))
    if backend == "tflite":
        cases.append(("tail-cut", main, lambda b: b[:-100]))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_artifact_raises_bundle_error_naming_the_file(backend, exported, tmp_path):
    _, _, art = exported(backend, "two_heads")
    be = get_backend(backend)
    for label, fname, corrupt in _corruptions(backend):
        bad = _copy(art, tmp_path / label)
        target = bad.root / fname
        target.write_bytes(corrupt(target.read_bytes()))
        with pytest.raises(BundleError) as err:
            be.load(bad, threads=1, options={})
        assert str(target) in str(err.value), (label, str(err.value))
    # a missing main file
    gone = _copy(art, tmp_path / "gone")
    (gone.root / MAIN_FILE[backend]).unlink()
    with pytest.raises(BundleError, match="does not exist"):
        be.load(gone, threads=1, options={})


def test_onnx_truncated_external_data(exported, tmp_path):
    _, _, art = exported("onnxruntime", "conv")
    data = [f for f in art.files if f != "model.onnx"]
    assert data, "expected torch to write external data next to model.onnx"
    bad = _copy(art, tmp_path / "cut")
    p = bad.root / data[0]
    p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(BundleError, match="model.onnx"):
        get_backend("onnxruntime").load(bad, threads=1, options={})


# --------------------------------------------------------------------------- export errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_op_names_op_and_layer(backend, tmp_path):
    with pytest.raises(ExportError) as err:
        get_backend(backend).export(
            UsesErfinv(), (torch.randn(2, 4),), tmp_path,
            input_names=["x"], output_names=["y"], options={},
        )
    e = err.value
    assert e.backend == backend
    assert e.op is not None and "erfinv" in e.op
    assert e.layer == "head.1"
    msg = str(e)
    assert "erfinv" in msg and "head.1" in msg and "Gaussianize" in msg


def test_an_op_failing_in_a_named_module_is_placed_in_that_module():
    """OpenVINO's frontend names the module its failing op is in
    (``__module.<path>/aten::cat``): the error names that layer, not the first layer of the
    model using the same op (Mixtral's attention ``cat``, not its rotary embedding's)."""
    from edgekit.backends._common import export_failure

    class Cat(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x], -1)

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rotary, self.attn = Cat(), Cat()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(self.rotary(x))

    said = RuntimeError("Consumer: util::PtFrameworkNode __module.attn/aten::cat "
                        "(util::SequenceMark ...) -> (f32[?,?])")
    err = export_failure("openvino", Two(), (torch.randn(1, 3),), said)
    assert err.op == "aten.cat.default" and err.layer == "attn", (err.op, err.layer)
    elsewhere = RuntimeError("No conversion rule found for operations: aten::cat")
    assert export_failure("openvino", Two(), (torch.randn(1, 3),), elsewhere).layer == "rotary"


def test_openvino_reports_its_onnx_route_failure_in_that_exporter_s_words(tmp_path):
    """Both of OpenVINO's routes fail on ``torch.linalg.svdvals``: the ONNX route's part of the
    error says what the ONNX exporter said, not the PyTorch frontend's words again."""

    class Svd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.linalg.svdvals(x.view(2, 2)).sum()

    with pytest.raises(ExportError) as err:
        get_backend("openvino").export(Svd(), (torch.randn(1, 4),), tmp_path,
                                       input_names=["x"], output_names=["y"], options={})
    frontend, onnx_route = str(err.value).split("(through its ONNX export too:", 1)
    assert "No conversion rule found" in frontend, frontend
    assert "No conversion rule found" not in onnx_route and "svd" in onnx_route, onnx_route
    # what the ONNX route's error is read from: its own exceptions only (an ONNX error that
    # names no op took the frontend's line naming one)
    chain, cur = [], err.value.__cause__
    while cur is not None and len(chain) < 20:
        chain.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    assert chain and not any("No conversion rule found" in c for c in chain), chain


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_wrong_number_of_names_is_a_usage_error(backend, tmp_path):
    be = get_backend(backend)
    with pytest.raises(UsageError, match="2 outputs"):
        be.export(TwoHeads(), (torch.randn(1, 6),), tmp_path,
                  input_names=["x"], output_names=["only_one"], options={})
    with pytest.raises(UsageError, match="input names"):
        be.export(TwoHeads(), (torch.randn(1, 6),), tmp_path,
                  input_names=["x", "y"], output_names=["a", "b"], options={})


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_bad_threads_and_wrong_backend(backend, exported):
    _, _, art = exported(backend, "two_heads")
    be = get_backend(backend)
    with pytest.raises(UsageError, match="threads"):
        be.load(art, threads=0, options={})
    other = "openvino" if backend == "onnxruntime" else "onnxruntime"
    with pytest.raises(UsageError, match="artifact is for backend"):
        get_backend(other).load(art, threads=1, options={})


def test_all_errors_are_edgekit_errors():
    for cls in (BackendMissingError, BundleError, ExportError, ShapeError, UsageError):
        assert issubclass(cls, EdgekitError)
