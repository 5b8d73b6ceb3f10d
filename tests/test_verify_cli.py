"""`edgekit verify`: checksums first, then the reference inputs on every available runtime."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from edgekit._npz import save_npz
from edgekit.backends import get_backend
from edgekit.bundle import load_bundle, sha256_file, write_json
from edgekit.bundle_check import verify_bundle
from edgekit.cli import main
from edgekit.errors import BundleError
from edgekit.pipeline import compress

from conftest import tiny_net

ORT, TFL = "x86-onnxruntime-fp32", "x86-tflite-fp32"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    targets = [t for t, b in ((ORT, "onnxruntime"), (TFL, "tflite"))
               if get_backend(b).available() is None]
    if not targets:
        pytest.skip("needs onnxruntime or tflite")
    root = tmp_path_factory.mktemp("verify") / "b"
    compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=targets, out_dir=root, progress=False)
    return root, targets


@pytest.fixture
def bundle(built, tmp_path):
    root, targets = built
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    return copy, targets


def test_verify_passes_and_reports_per_output(bundle, capsys):
    root, targets = bundle
    assert main(["verify", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["checksums"]["passed"] is True
    assert set(report["targets"]) == set(targets)
    for t in targets:
        entry = report["targets"][t]
        assert entry["status"] == "passed"
        [out] = entry["outputs"]
        assert out["name"] == "output" and out["passed"] and out["max_abs"] < 1e-4
        assert out["cosine"] > 0.9999
    assert main(["verify", str(root), "-t", targets[0]]) == 0
    text = capsys.readouterr().out
    assert f"{targets[0]}" in text and "max abs diff" in text and "checksums: ok" in text


def test_tampered_artifact_fails_naming_the_file(bundle, capsys):
    root, targets = bundle
    rec = load_bundle(root).manifest.targets[targets[0]].files[0]
    path = root / rec.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert main(["verify", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"checksum mismatch for {rec.path}" in err
    assert before == {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}  # loses nothing


def test_missing_artifact_and_reference_are_named(bundle, capsys):
    root, targets = bundle
    rec = load_bundle(root).manifest.targets[targets[-1]].files[0]
    os.remove(root / rec.path)
    os.remove(root / "reference.npz")
    with pytest.raises(BundleError) as exc:
        verify_bundle(root)
    assert f"file {rec.path} is missing" in str(exc.value)
    assert "file reference.npz is missing" in str(exc.value)
    assert main(["verify", str(root)]) == 1


def test_wrong_reference_output_fails_per_output(bundle, capsys):
    root, targets = bundle
    with np.load(root / "reference.npz") as npz:
        ref = {k: npz[k] for k in npz.files}
    ref["output.output"] = ref["output.output"] + 0.5
    save_npz(root / "reference.npz", ref)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["reference"]["sha256"] = sha256_file(root / "reference.npz")
    manifest["reference"]["bytes"] = (root / "reference.npz").stat().st_size
    write_json(root / "manifest.json", manifest)
    assert main(["verify", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    out = report["targets"][targets[0]]["outputs"][0]
    assert out["passed"] is False and any("max abs diff" in f for f in out["failures"])
    assert report["passed"] is False


def test_missing_runtime_is_skipped_not_failed(bundle, monkeypatch, capsys):
    root, targets = bundle
    backend = get_backend(load_bundle(root).manifest.targets[targets[0]].backend)
    monkeypatch.setattr(type(backend), "available", lambda self: "pretend it is not installed")
    assert main(["verify", str(root), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["targets"][targets[0]]
    assert entry["status"] == "skipped" and f"edgekit[{backend.extra}]" in entry["install"]
    assert main(["verify", str(root)]) == 0
    assert "skipped: pretend it is not installed" in capsys.readouterr().out


def test_not_a_bundle_and_unknown_target(tmp_path, bundle, capsys):
    assert main(["verify", str(tmp_path / "nothing")]) == 1
    assert "manifest.json is missing" in capsys.readouterr().err
    root, _ = bundle
    assert main(["verify", str(root), "-t", "x86-nope"]) == 2
    assert "unknown target" in capsys.readouterr().err


@pytest.mark.parametrize("cmd, text", [
    ("verify", "sha256"), ("embed", "--max-bytes"), ("cmake-dir", "--python"),
    ("build", "--recipe"),
])
def test_help(cmd, text, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0 and text in capsys.readouterr().out
