"""Reliability, second round (issue 19): hostile names, links planted at temporary files and in
the build cache, and the generated C for NaN/inf quantization parameters (cases 18, 19, 26).

Real files, real links, real builds; the CLI runs in a child under a 4 GiB memory cap where the
whole command line matters (``capped.run_capped``), in-process (``edgekit.cli.main``) elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.bundle import SCHEMA_VERSION, file_record, sha256_file, write_json
from edgekit.cli import main
from edgekit.errors import UsageError

from capped import run_capped
from conftest import tiny_tflite_bytes
from reliability_helpers import fake_bundle, have, needs_onnx, onnx_file, rel

ORT = "x86-onnxruntime-fp32"
HOSTILE = {
    "dotdot": "../../x",
    "nul": "a\u0000b",
    "dot": ".",
    "empty": "",
    "slash": "/",
    "manifest": "manifest.json",
    "long": "x" * 300,
}


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links as links), with file contents' sha256."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel_path = str(p.relative_to(root))
        if p.is_symlink():
            out[rel_path] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[rel_path] = sha256_file(p)
        else:
            out[rel_path] = "dir"
    return out


def _profile(path: Path, name: str) -> Path:
    path.write_text(f"name = {json.dumps(name)}\nbackend = \"onnxruntime\"\nthreads = 1\n")
    return path


def _factory(folder: Path) -> None:
    (folder / "tinyf.py").write_text(textwrap.dedent("""
        import torch

        def make():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    """))


def _previous_bundle(out: Path) -> None:
    """A good previous bundle edgekit made (a real one: tiny ONNX, consistent checksums)."""
    src = onnx_file(out.parent / "prev-src", external=False)
    fake_bundle(out, "onnxruntime", {f"{ORT}/model.onnx": src.read_bytes()}, name="out")
    shutil.rmtree(src.parent)


# =========================================================================== case 18


@rel(case=18, behaviour="a target profile named '../../x' given to `edgekit build` (real child "
     "process, 4 GiB cap): ConfigError naming the name and the profile file, exit 2, no "
     "traceback, before any export; the previous bundle byte-identical, nothing written "
     "outside it")
def test_profile_named_dotdot_writes_nothing_outside(tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    _factory(work)
    prof = _profile(work / "evil.toml", "../../x")
    _previous_bundle(work / "out")
    before = tree(tmp_path)
    res = run_capped(["build", "tinyf:make", "--input-shape", "1x4", "-t", str(prof),
                      "-o", "out", "-q"], cwd=work, cap_gib=4)
    assert res.code == 2, res.err
    assert "'../../x'" in res.err and str(prof) in res.err and "never paths" in res.err
    assert not res.traceback, res.err
    assert 0 < res.peak_rss_bytes < 4 * 2**30
    assert tree(tmp_path) == before  # previous bundle intact, no x, no staging folder


@rel(case=18, behaviour="profile names with NUL, '.', '', '/', 'manifest.json' or 300 "
     "characters (in a .toml given to build, or in a recipe's targets): ConfigError naming the "
     "name and the file, exit 2, before any training or export, nothing written")
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_profile_names_are_refused_before_the_build(kind, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    prof = _profile(tmp_path / "p.toml", HOSTILE[kind])
    before = tree(tmp_path)
    # a zoo model that would train for minutes: the refusal must come first
    assert main(["build", "cnn", "-t", str(prof), "-o", "out", "-q"]) == 2
    err = capsys.readouterr().err
    assert "target profile" in err and str(prof) in err and "name" in err, err
    assert "Traceback" not in err and "hint:" in err
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "cnn"\ntargets = ["{prof.name}"]\nepochs = 1\n')
    assert main(["build", "--recipe", str(recipe), "-o", "out", "-q", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert str(prof) in err and "Traceback" not in err, err
    recipe.unlink()
    assert tree(tmp_path) == before


@rel(case=18, behaviour="a hostile name given as `--target` (.., NUL, 300 characters) or in a "
     "recipe's targets/name/input_names/output_names: UsageError/ConfigError naming the name, "
     "the key and the recipe file, exit 2, nothing built")
def test_hostile_names_on_the_command_line_and_in_recipes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for target in ("..", "x" * 300, "a\u0001b"):
        assert main(["build", "cnn", "-t", target, "-o", "out", "-q"]) == 2
        err = capsys.readouterr().err
        assert "target" in err and repr(target[:60])[:-1] in err and "Traceback" not in err
    _factory(tmp_path)
    user = 'model = "tinyf:make"\ninput_shapes = ["1x4"]\ntargets = ["x86-onnxruntime-fp32"]\n'
    cases = {
        'model = "cnn"\ntargets = ["manifest.json"]\n': "targets: target 'manifest.json'",
        'model = "cnn"\ntargets = [".."]\n': "targets: target '..'",
        'model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\nname = "../up"\n': "name '../up'",
        user + 'input_names = ["../x"]\n': "input_names: name '../x'",
        user + 'output_names = ["a\\u0000"]\n': "output_names: name 'a\\x00'",
        user + f'output_names = ["{"y" * 300}"]\n': "300 characters long (at most 128)",
    }
    recipe = tmp_path / "r.toml"
    for text, needle in cases.items():
        recipe.write_text(text)
        assert main(["build", "--recipe", str(recipe), "-o", "out", "-q", "--no-cache"]) == 2
        err = capsys.readouterr().err
        assert f"recipe {recipe}" in err and needle in err, (text, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


@needs_onnx
@rel(case=18, behaviour="hostile input/output names through `--input-name/--output-name` and "
     "compress(input_names=..., name=...): UsageError naming the name, exit 2, no bundle or "
     "staging folder; names like 'x:0' and 'mfcc_1' still build")
def test_hostile_tensor_names_through_cli_and_api(tmp_path, capsys, monkeypatch):
    import edgekit

    monkeypatch.chdir(tmp_path)
    _factory(tmp_path)
    for flag, name in (("--input-name", "../x"), ("--output-name", "a b"),
                       ("--output-name", "y" * 200), ("--input-name", "")):
        assert main(["build", "tinyf:make", "--input-shape", "1x4", "-t", ORT, flag, name,
                     "-o", "out", "-q"]) == 2
        err = capsys.readouterr().err
        assert f"{flag[2:].replace('-', ' ')} {repr(name[:60])[:-1]}" in err, err
        assert "Traceback" not in err
    model = torch.nn.Linear(4, 3).eval()
    for kwargs in ({"input_names": ["x\u0000"]}, {"output_names": ["a/b"]},
                   {"name": "../../b"}, {"input_names": ["manifest.json/.."]}):
        with pytest.raises(UsageError, match="name"):
            edgekit.compress(model, torch.zeros(1, 4), targets=[ORT], out_dir=tmp_path / "api",
                             progress=False, **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "api").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    bundle = edgekit.compress(model, torch.zeros(1, 4), targets=[ORT], out_dir=tmp_path / "ok",
                              input_names=["x:0"], output_names=["logits_1"], progress=False)
    assert [s["name"] for s in bundle.manifest.model.inputs] == ["x:0"]


def _c_compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@rel(case=18, behaviour="`embed` of files with non-ASCII names (modèle.tflite, 模型.onnx): "
     "exit 0, an ASCII identifier, the name kept escaped in the comment and the FILE_NAME "
     "string, the source compiles with cc -Werror, no temporary file left")
def test_embed_non_ascii_file_names(tmp_path, capsys):
    sources = {"modèle.tflite": tiny_tflite_bytes(200)}
    if have("onnx"):
        sources["模型.onnx"] = onnx_file(tmp_path / "src", external=False).read_bytes()
    for name, data in sources.items():
        src = tmp_path / name
        src.write_bytes(data)
        out = tmp_path / f"gen-{len(name)}"
        assert main(["embed", str(src), "-o", str(out)]) == 0, capsys.readouterr().err
        c_path, h_path = (Path(p) for p in capsys.readouterr().out.split())
        assert sorted(p.name for p in out.iterdir()) == sorted([c_path.name, h_path.name])
        for p in (c_path, h_path):
            text = p.read_bytes().decode("ascii")  # ASCII only
            assert name.encode("ascii", "backslashreplace").decode() in text
        assert c_path.stem.isidentifier() and c_path.stem.isascii()
        escaped = "".join(ch if ch.isascii() else "".join(f"\\{b:03o}" for b in ch.encode())
                          for ch in name)
        assert f'_FILE_NAME "{escaped}"' in h_path.read_text()
        cc = _c_compiler()
        if cc:
            run = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c",
                                  str(c_path), "-o", str(tmp_path / "o.o")],
                                 capture_output=True, text=True)
            assert run.returncode == 0, run.stderr


@rel(case=18, behaviour="a manifest whose tensor name holds a newline and a `#include` (a "
     "crafted bundle) given to `embed`: BundleError naming the target and the name, exit 1, "
     "no .c/.h written")
def test_embed_refuses_control_characters_in_manifest_names(tmp_path, capsys):
    root = fake_bundle(tmp_path / "b", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)})
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["targets"]["t"]["inputs"][0]["name"] = 'x"\n#include "/etc/passwd'
    (root / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "gen"
    assert main(["embed", str(root), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "target t" in err and "control characters" in err and "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())


# =========================================================================== case 19


def _plant(folder: Path, names: list[str], target: Path) -> None:
    for name in names:
        (folder / name).symlink_to(target)


@rel(case=19, behaviour="symlinks to an outside file planted at `pack`'s old fixed temporary "
     "name (.NAME.partial), at guesses and at the archive path itself: the outside file "
     "byte-identical, the archive written fresh (a valid bundle archive), no temporary file left")
def test_pack_never_writes_through_planted_links(tmp_path, capsys):
    root = fake_bundle(tmp_path / "kws", "tflite", {"t/model.tflite": tiny_tflite_bytes(64)})
    outside = tmp_path / "outside" / "precious.txt"
    outside.parent.mkdir()
    outside.write_bytes(b"the user's precious file\n")
    dist = tmp_path / "dist"
    dist.mkdir()
    planted = [".kws.tar.gz.partial", ".kws.tar.gz.tmp", "kws.tar.gz.partial", "kws.tar.gz.tmp",
               ".kws.tar.gz"]
    _plant(dist, planted, outside)
    (dist / "kws.tar.gz").symlink_to(outside)  # the destination itself: replaced, not followed
    assert main(["pack", str(root), "-o", str(dist / "kws.tar.gz")]) == 0, \
        capsys.readouterr().err
    assert outside.read_bytes() == b"the user's precious file\n"
    archive = dist / "kws.tar.gz"
    assert not archive.is_symlink() and archive.read_bytes()[:2] == b"\x1f\x8b"
    assert sorted(p.name for p in dist.iterdir()) == sorted([*planted, "kws.tar.gz"])
    assert all((dist / n).is_symlink() for n in planted)
    assert main(["unpack", str(archive), "-o", str(tmp_path / "back")]) == 0


@rel(case=19, behaviour="symlinks to an outside file planted at `embed`'s old fixed temporary "
     "names (.NAME.c.tmp, .NAME.h.tmp) and at manifest.json's (.manifest.json.tmp): the outside "
     "file byte-identical, the outputs written, only the planted links besides them")
def test_embed_and_manifest_writes_never_follow_planted_links(tmp_path, capsys):
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me\n")
    src = tmp_path / "m.tflite"
    src.write_bytes(tiny_tflite_bytes(100))
    out = tmp_path / "gen"
    out.mkdir()
    planted = [".m_tflite.c.tmp", ".m_tflite.h.tmp", "m_tflite.c.tmp", ".m_tflite.c.partial"]
    _plant(out, planted, outside)
    assert main(["embed", str(src), "-o", str(out)]) == 0, capsys.readouterr().err
    assert outside.read_bytes() == b"keep me\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([*planted, "m_tflite.c", "m_tflite.h"])
    assert "m_tflite" in (out / "m_tflite.h").read_text()
    folder = tmp_path / "b"
    folder.mkdir()
    _plant(folder, [".manifest.json.tmp", ".manifest.json.partial"], outside)
    write_json(folder / "manifest.json", {"a": 1})
    assert outside.read_bytes() == b"keep me\n"
    assert json.loads((folder / "manifest.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in folder.iterdir()) == [".manifest.json.partial",
                                                         ".manifest.json.tmp", "manifest.json"]


def _build_cached(work: Path, cache: Path, capsys) -> str:
    """``edgekit build --recipe r.toml -o first`` in ``work`` with ``cache`` as the cache; the
    source fingerprint is pinned, so edits to edgekit's files between builds keep the key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("EDGEKIT_CACHE_DIR", str(cache))
        mp.setattr("edgekit.cache.source_fingerprint", lambda: "pinned-for-the-test")
        code = main(["build", "--recipe", "r.toml", "-o", "first"])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


@pytest.fixture(scope="module")
def cached_build(tmp_path_factory):
    """A real recipe build (user model, ONNX Runtime) whose bundle went into a fresh cache."""
    if not (have("onnx") and have("onnxruntime")):
        pytest.skip("needs onnx and onnxruntime (edgekit[onnxruntime])")
    work = tmp_path_factory.mktemp("cached")
    _factory(work)
    (work / "r.toml").write_text('model = "tinyf:make"\ninput_shapes = ["1x4"]\n'
                                 f'targets = ["{ORT}"]\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("EDGEKIT_CACHE_DIR", str(work / "cache"))
        mp.setattr("edgekit.cache.source_fingerprint", lambda: "pinned-for-the-test")
        assert main(["build", "--recipe", "r.toml", "-o", "first", "-q"]) == 0
    entries = [p for p in (work / "cache").glob("*/*") if not p.name.startswith(".")]
    assert len(entries) == 1, list((work / "cache").rglob("*"))
    return work, entries[0]


def _tamper(entry: Path, how: str, outside: Path) -> None:
    target = entry / ORT
    if how == "file-link":  # an extra file that is a link to a file outside
        (target / "extra.onnx").symlink_to(outside / "secret.onnx")
    elif how == "dir-link":  # the target folder swapped for a link to a folder outside
        shutil.copytree(target, outside / "copy")
        shutil.rmtree(target)
        target.symlink_to(outside / "copy")
    elif how == "reference-link":  # a listed file as a link (checksum made to match)
        shutil.copyfile(entry / "reference.npz", outside / "reference.npz")
        (entry / "reference.npz").unlink()
        (entry / "reference.npz").symlink_to(outside / "reference.npz")
    elif how == "entry-link":  # the whole entry a link to a copy outside
        shutil.copytree(entry, outside / "entry")
        shutil.rmtree(entry)
        entry.symlink_to(outside / "entry")
    elif how == "fifo":
        os.mkfifo(target / "pipe")


@rel(case=19, behaviour="a build-cache entry holding a link (an extra file or the target folder "
     "linked outside, a listed file as a link, the entry itself a link, or a FIFO), from a real "
     "recipe build: refused as damaged and rebuilt, nothing of the outside copied, `verify` of "
     "the result passes on edgekit's own files only, the outside files intact")
@pytest.mark.parametrize("how", ["file-link", "dir-link", "reference-link", "entry-link", "fifo"])
def test_cache_entry_with_links_is_refused(how, cached_build, tmp_path, capsys):
    work, entry = cached_build
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache, symlinks=True)
    mine = cache / entry.relative_to(work / "cache")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = tmp_path / "outside" / "secret.onnx"
    secret.write_bytes(b"SECRET-OUTSIDE-BYTES" * 10)
    _tamper(mine, how, outside)
    outside_before = tree(outside)
    shutil.copy(work / "r.toml", tmp_path / "r.toml")
    shutil.copy(work / "tinyf.py", tmp_path / "tinyf.py")
    # the same output name as the cached build (the bundle name is part of the key)
    err = _build_cached(tmp_path, cache, capsys)
    assert "is damaged" in err and "rebuilding" in err, err
    assert "cache hit" not in err and "Traceback" not in err
    again = tmp_path / "first"
    files = [p for p in again.rglob("*")]
    assert not any(p.is_symlink() for p in files)
    assert all(b"SECRET-OUTSIDE" not in p.read_bytes() for p in files if p.is_file())
    assert tree(outside) == outside_before  # nothing outside removed or changed
    listed = json.loads((again / "manifest.json").read_text())
    names = {r["path"] for t in listed["targets"].values() for r in t["files"]}
    assert {str(p.relative_to(again)) for p in files if p.is_file()} == \
        names | {"manifest.json", "reference.npz"}
    assert main(["verify", str(again)]) == 0
    # the damaged entry was replaced by the fresh build: the next build is a clean hit
    assert not mine.is_symlink() and not any(p.is_symlink() for p in mine.rglob("*"))
    assert "cache hit" in _build_cached(tmp_path, cache, capsys)


# =========================================================================== case 26


def _quant_bundle(root: Path, quant_in: dict, quant_out: dict) -> Path:
    """A bundle written by hand whose manifest carries the given quantization parameters
    (written with NaN/Infinity allowed, as a hand edit would)."""
    root.mkdir(parents=True)
    (root / "t").mkdir()
    (root / "t" / "model.tflite").write_bytes(tiny_tflite_bytes(96))
    spec_in = [{"name": "mfcc", "shape": [1, 49, 10], "dtype": "int8", "quantization": quant_in}]
    spec_out = [{"name": "logits", "shape": [1, 12], "dtype": "int8",
                 "quantization": quant_out}]
    from edgekit._npz import save_npz

    save_npz(root / "reference.npz", {"input.mfcc": np.zeros((1, 1, 49, 10), np.int8),
                                      "output.logits": np.zeros((1, 1, 12), np.int8)})
    manifest = {"schema_version": SCHEMA_VERSION, "name": "kws",
                "model": {"inputs": spec_in, "outputs": spec_out},
                "reference": file_record(root, "reference.npz"),
                "targets": {"t": {"backend": "tflite", "precision": "int8",
                                  "files": [file_record(root, "t/model.tflite")],
                                  "inputs": spec_in, "outputs": spec_out}}}
    (root / "manifest.json").write_text(json.dumps(manifest, allow_nan=True))
    return root


BAD_QUANT = {
    "scale-nan": ({"scale": float("nan"), "zero_point": 0}, "input 'mfcc' quantization scale"),
    "scale-inf": ({"scale": float("inf"), "zero_point": 0}, "scale is inf"),
    "per-channel-neg-inf": ({"scale": [0.5, float("-inf")], "zero_point": [0, 0]}, "-inf"),
    "scale-over-float32": ({"scale": 1e39, "zero_point": 0}, "outside the float32 range"),
    "scale-string": ({"scale": "0.5", "zero_point": 0}, "not a number"),
    "zero-point-nan": ({"scale": 0.5, "zero_point": float("nan")}, "zero point is nan"),
    "zero-point-fraction": ({"scale": 0.5, "zero_point": 3.5}, "not a 32-bit integer"),
}


@rel(case=26, behaviour="embed of a bundle whose manifest quantization scale/zero point is NaN, "
     "inf, -inf (per channel), beyond float32, a string or a fraction: BundleError naming the "
     "target, the tensor and the value, exit 1, no .c/.h or temporary file written")
@pytest.mark.parametrize("kind", sorted(BAD_QUANT))
def test_embed_refuses_nan_inf_quantization(kind, tmp_path, capsys):
    quant, needle = BAD_QUANT[kind]
    root = _quant_bundle(tmp_path / "b", quant, {"scale": 0.25, "zero_point": 3})
    out = tmp_path / "gen"
    out.mkdir()
    assert main(["embed", str(root), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "target t" in err and "'mfcc'" in err and needle in err, err
    assert "Traceback" not in err and "hint:" in err
    assert list(out.iterdir()) == []


@rel(case=26, behaviour="control: finite extreme quantization parameters (subnormal and largest "
     "float32 scales, per-channel lists, int32 zero points) give a header and source that "
     "compile with cc -std=c99 -Wall -Wextra -Werror -pedantic (and as C++ with c++)")
def test_embed_quantization_header_compiles(tmp_path, capsys):
    cc = _c_compiler()
    if cc is None:
        pytest.skip("needs a C compiler (cc, gcc or clang)")
    root = _quant_bundle(tmp_path / "b",
                         {"scale": 1e-40, "zero_point": -(2**31)},
                         {"scale": [3.4028234663852886e38, 1.5e-45, 0.125],
                          "zero_point": [2**31 - 1, 0, -3]})
    out = tmp_path / "gen"
    assert main(["embed", str(root), "-o", str(out), "--name", "kws_model"]) == 0, \
        capsys.readouterr().err
    header = (out / "kws_model.h").read_text()
    assert "KWS_MODEL_INPUT_0_SCALE 1e-40f" in header
    assert "KWS_MODEL_OUTPUT_0_SCALES {3.4028234663852886e+38f" in header
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #include "kws_model.h"
        static const float in_scale = KWS_MODEL_INPUT_0_SCALE;
        static const long in_zp = KWS_MODEL_INPUT_0_ZERO_POINT;
        static const float out_scales[] = KWS_MODEL_OUTPUT_0_SCALES;
        static const long out_zps[] = KWS_MODEL_OUTPUT_0_ZERO_POINTS;
        int main(void) {
            return (int)(kws_model_size + (in_scale > 0) + in_zp % 2 + (out_scales[0] > 0)
                         + out_zps[2]) & 0;
        }
    """))
    for compiler, std in ((cc, "-std=c99"), (shutil.which("c++") or shutil.which("g++"),
                                             "-std=c++17")):
        if compiler is None:
            continue
        lang = ["-x", "c++"] if "++" in compiler else []
        run = subprocess.run([compiler, std, "-Wall", "-Wextra", "-Werror", "-pedantic",
                              "-I", str(out), *lang, str(tmp_path / "main.c"),
                              *lang, str(out / "kws_model.c"), "-o", str(tmp_path / "a.out")],
                             capture_output=True, text=True)
        assert run.returncode == 0, (compiler, run.stderr)
        assert subprocess.run([str(tmp_path / "a.out")]).returncode == 0
