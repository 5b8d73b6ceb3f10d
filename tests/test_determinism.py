"""Deterministic bundles and the content-addressed build cache."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.backends import get_backend
from edgekit.errors import ConfigError
from edgekit.pipeline import compress
from edgekit.recipe import build_recipe, load_recipe, parse_recipe

from conftest import tiny_net

ORT = "x86-onnxruntime-fp32"
ALL = ["x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32"]


def _x():
    return torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _needs(target):
    backend = {"x86-onnxruntime-fp32": "onnxruntime", "x86-openvino-fp32": "openvino",
               "x86-tflite-fp32": "tflite"}[target]
    reason = get_backend(backend).available()
    return pytest.mark.skipif(reason is not None, reason=str(reason))


def _walk_keys(data):
    if isinstance(data, dict):
        for k, v in data.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(data, list):
        for v in data:
            yield from _walk_keys(v)


@pytest.mark.slow
@pytest.mark.parametrize("target", [pytest.param(t, marks=_needs(t)) for t in ALL])
def test_two_builds_from_the_same_inputs_are_byte_identical(target, tmp_path):
    # Different parent folders (and staging folders) on purpose: no path may leak in.
    a = compress(tiny_net(), _x(), targets=[target], out_dir=tmp_path / "one" / "b",
                 progress=False)
    b = compress(tiny_net(), _x(), targets=[target], out_dir=tmp_path / "two" / "b",
                 progress=False)
    fa, fb = _files(a.root), _files(b.root)
    assert sorted(fa) == sorted(fb)
    for rel in fa:
        assert fa[rel] == fb[rel], f"{target}: {rel} differs between two identical builds"
    text = fa["manifest.json"].decode()
    assert str(tmp_path) not in text and "/tmp" not in text and str(Path.home()) not in text
    keys = set(_walk_keys(json.loads(text)))
    assert not {k for k in keys if k == "seconds" or k.endswith("_seconds")}


def test_cache_hit_skips_the_work_and_gives_the_same_bytes(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    first = compress(tiny_net(), _x(), targets=[ORT], out_dir=tmp_path / "a" / "b", cache=cache)
    assert first.cache_hit is False
    assert "cache miss" in capsys.readouterr().err

    from edgekit.backends.onnxruntime import OnnxRuntimeBackend

    def no_export(self, *a, **k):
        raise AssertionError("export must not run on a cache hit")

    monkeypatch.setattr(OnnxRuntimeBackend, "export", no_export)
    hit = compress(tiny_net(), _x(), targets=[ORT], out_dir=tmp_path / "c" / "b", cache=cache)
    assert hit.cache_hit is True
    assert "cache hit" in capsys.readouterr().err
    assert _files(hit.root) == _files(first.root)

    # Any change in the weights is a miss (and here the export is forced to fail).
    changed = tiny_net()
    with torch.no_grad():
        changed.head.bias[0] += 1e-3
    with pytest.raises(AssertionError, match="must not run"):
        compress(changed, _x(), targets=[ORT], out_dir=tmp_path / "d" / "b", cache=cache)
    # ...as are other example inputs, and cache=False never reads the cache.
    with pytest.raises(AssertionError, match="must not run"):
        compress(tiny_net(), _x() + 1, targets=[ORT], out_dir=tmp_path / "e" / "b", cache=cache)
    with pytest.raises(AssertionError, match="must not run"):
        compress(tiny_net(), _x(), targets=[ORT], out_dir=tmp_path / "f" / "b")


def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    compress(tiny_net(), _x(), targets=[ORT], out_dir=tmp_path / "a" / "b", cache=cache,
             progress=False)
    onnx = next(cache.rglob("model.onnx"))
    onnx.write_bytes(b"garbage")
    again = compress(tiny_net(), _x(), targets=[ORT], out_dir=tmp_path / "c" / "b", cache=cache,
                     progress=False)
    assert again.cache_hit is False
    again.check_files()
    assert next(cache.rglob("model.onnx")).read_bytes() != b"garbage"


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    from edgekit.cache import cache_dir

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir(True) == tmp_path / "c"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("EDGEKIT_CACHE_DIR")
    assert cache_dir(True) == Path.home() / ".cache" / "edgekit"


# --------------------------------------------------------------------------- recipes


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_zoo_recipe_cache_hit_skips_training_and_is_byte_identical(tmp_path, monkeypatch):
    recipe = load_recipe(_write(tmp_path / "r.toml",
                                f'model = "cnn"\ntargets = ["{ORT}"]\nepochs = 1\nseed = 3\n'))
    cache = tmp_path / "cache"
    first = build_recipe(recipe, tmp_path / "a" / "cnn", cache=cache, progress=False)
    m = first.manifest
    assert m.recipe["epochs"] == 1 and m.history[0].kind == "train"

    import edgekit.train

    def no_training(*a, **k):
        raise AssertionError("training must not run on a cache hit")

    monkeypatch.setattr(edgekit.train, "fit", no_training)
    hit = build_recipe(recipe, tmp_path / "b" / "cnn", cache=cache, progress=False)
    assert hit.cache_hit and _files(hit.root) == _files(first.root)
    # a different seed is a different build
    other = load_recipe(_write(tmp_path / "r2.toml",
                               f'model = "cnn"\ntargets = ["{ORT}"]\nepochs = 1\nseed = 4\n'))
    with pytest.raises(AssertionError, match="training must not run"):
        build_recipe(other, tmp_path / "c" / "cnn", cache=cache, progress=False)


@pytest.mark.slow
def test_recipe_builds_in_two_processes_are_byte_identical(tmp_path):
    """Training from a seed, exporting (every runtime) and verifying in fresh processes, without
    the cache: the zoo CNN's artifacts and manifest come out byte-identical."""
    targets = [t for t in ALL if not _needs(t).args[0]]  # every runtime installed here
    recipe = _write(tmp_path / "r.toml",
                    f"model = \"cnn\"\ntargets = {json.dumps(targets)}\nepochs = 1\n")
    for out in ("one", "two"):
        proc = subprocess.run([sys.executable, "-m", "edgekit", "build", "--recipe", str(recipe),
                               "-o", str(tmp_path / out / "cnn"), "--no-cache", "-q"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "cache hit" not in proc.stderr
    assert _files(tmp_path / "one" / "cnn") == _files(tmp_path / "two" / "cnn")


def test_user_model_recipe_with_weights(tmp_path, monkeypatch):
    (tmp_path / "mymodel.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n")
    torch.manual_seed(5)
    from torch import nn

    ref = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    recipe = load_recipe(_write(tmp_path / "r.toml",
                                'model = "mymodel:build"\ninput_shapes = ["1x1x8x8"]\n'
                                f'targets = ["{ORT}"]\nweights = "w.pt"\nname = "mine"\n'))
    monkeypatch.chdir("/")  # the recipe's folder, not the cwd, holds the module and weights
    bundle = build_recipe(recipe, tmp_path / "out", cache=False, progress=False)
    m = bundle.manifest
    assert m.name == "mine" and m.recipe["weights"] == "w.pt"
    from edgekit.bundle import sha256_file

    assert m.recipe["weights_sha256"] == sha256_file(tmp_path / "w.pt")
    import numpy as np

    ref_out = np.load(bundle.root / "reference.npz")["output.output"][0]
    with torch.no_grad():
        x = torch.from_numpy(np.load(bundle.root / "reference.npz")["input.input"][0])
        np.testing.assert_allclose(ref_out, ref(x).numpy(), atol=0)
    assert str(tmp_path) not in (bundle.root / "manifest.json").read_text()


@pytest.mark.parametrize("text, message", [
    ('model = "cnn"\n', "missing required key 'targets'"),
    ('targets = ["x"]\n', "missing required key 'model'"),
    ('model = "cnn"\ntargets = []\n', "'targets' is empty"),
    ('model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\nepochs = "2"\n',
     "'epochs' must be a int"),
    ('model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\nepochs = -1\n', "epochs = -1"),
    ('model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\nepoch = 1\n', "unknown key 'epoch'"),
    ('model = "nosuch"\ntargets = ["x86-onnxruntime-fp32"]\n', "neither a zoo model"),
    ('model = "m:f"\ntargets = ["x86-onnxruntime-fp32"]\n', "needs 'input_shapes'"),
    ('model = "m:f"\ninput_shapes = ["1xQ"]\ntargets = ["x86-onnxruntime-fp32"]\n',
     "input_shapes: bad input shape"),
    ('model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\nweights = "nope.pt"\n',
     "weights = 'nope.pt'"),
    ('model = "cnn"\ntargets = [\n', "not valid TOML"),
])
def test_malformed_recipes_name_file_and_key(text, message, tmp_path, capsys):
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as exc:
        load_recipe(path)
    assert str(path) in str(exc.value) and message in str(exc.value)
    from edgekit.cli import main

    assert main(["build", "--recipe", str(path), "-o", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_build_cli_recipe_usage_errors(tmp_path, capsys):
    from edgekit.cli import main

    path = _write(tmp_path / "r.toml", f'model = "cnn"\ntargets = ["{ORT}"]\n')
    assert main(["build", "cnn", "--recipe", str(path), "-o", str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["build", "--recipe", str(path), "--epochs", "3", "-o", str(tmp_path / "o")]) == 2
    assert "--epochs cannot be combined with --recipe" in capsys.readouterr().err
    assert main(["build", "--recipe", str(path), "-t", "x86-tflite-fp32",
                 "-o", str(tmp_path / "o")]) == 2
    assert "not in the recipe's targets" in capsys.readouterr().err
    assert main(["build", "-o", str(tmp_path / "o")]) == 2
    assert "needs a MODEL" in capsys.readouterr().err
    assert main(["build", "--recipe", str(tmp_path / "missing.toml"), "-o", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="must be a table"):
        parse_recipe([], source="s")  # type: ignore[arg-type]
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


@pytest.mark.slow
def test_int8_rebuild_reuses_the_timed_decisions_and_is_byte_identical(tmp_path, capsys):
    # The latency check searches variants (min_speedup 100: none reaches it), so timings decide
    # what ships; the second build reads those decisions from the cache instead of timing again.
    targets = ["x86-onnxruntime-int8", "x86-openvino-int8"]
    for t in ("onnxruntime", "openvino"):
        if get_backend(t).available() is not None:
            pytest.skip(f"{t} is not installed")
    gen = torch.Generator().manual_seed(1)
    np.savez(tmp_path / "calib.npz", input=torch.rand(16, 1, 8, 8, generator=gen).numpy())
    quant = {"samples": 16, "min_speedup": 100.0, "latency_variants": 2, "latency_runs": 20}
    roots = []
    for run in ("one", "two"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bundle = compress(tiny_net(), _x(), targets=targets, out_dir=tmp_path / run / "b",
                              calibration=tmp_path / "calib.npz", quantization=quant,
                              cache=tmp_path / "cache")
        roots.append(bundle.root)
        err = capsys.readouterr().err
        assert ("reusing the recorded int8 decisions" in err) == (run == "two"), err
    fa, fb = _files(roots[0]), _files(roots[1])
    assert sorted(fa) == sorted(fb)
    for rel in fa:
        assert fa[rel] == fb[rel], f"{rel} differs between two builds of the same int8 recipe"
    manifest = json.loads(fa["manifest.json"])
    for t in targets:
        q = manifest["targets"][t]["quantization"]
        assert q["latency_check"]["variants_tried"][0]["int8_ms"] > 0  # it was timed, once
        assert q["decisions"]["keep_float"] == q["float_layers"]
