"""`edgekit embed`: C arrays for microcontrollers, deterministic, with clear errors."""

import hashlib
import os
import shutil
import subprocess

import pytest

from edgekit.bundle import SCHEMA_VERSION, file_record, write_json
from edgekit.cli import main
from edgekit.embed import check_identifier, embed_artifact, sanitize_identifier
from edgekit.errors import BundleError, UsageError

from conftest import tiny_tflite_bytes

# 775 bytes, not a multiple of 12 or 16; a structurally valid (empty) TFLite flatbuffer first,
# since embed checks the file before reading it.
PAYLOAD = tiny_tflite_bytes(775, fill=bytes(range(256)) * 3 + b"edgekit")


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "src" / "kws-model.v2.tflite"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def _fake_bundle(root, files=("t/model.tflite",), quant=True):
    """A bundle written by hand: one target whose input/output carry quantization params."""
    root.mkdir(parents=True)
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(PAYLOAD)
    q_in = {"scale": 0.5, "zero_point": -128} if quant else None
    q_out = {"scale": [0.25, 0.125], "zero_point": [0, 3]} if quant else None
    inputs = [{"name": "mfcc", "shape": [1, 49, 10], "dtype": "int8"}]
    outputs = [{"name": "logits", "shape": [1, 12], "dtype": "int8"}]
    if quant:
        inputs[0]["quantization"], outputs[0]["quantization"] = q_in, q_out
    write_json(root / "manifest.json", {
        "schema_version": SCHEMA_VERSION, "name": "kws",
        "targets": {"t": {"backend": "tflite", "precision": "int8",
                          "files": [file_record(root, f) for f in files],
                          "inputs": inputs, "outputs": outputs}},
    })
    return root


def test_plain_file_gives_deterministic_c_and_header(artifact, tmp_path):
    c1, h1 = embed_artifact(artifact, tmp_path / "a")
    c2, h2 = embed_artifact(artifact, tmp_path / "b")
    assert c1.name == "kws_model_v2_tflite.c" and h1.name == "kws_model_v2_tflite.h"
    assert c1.read_bytes() == c2.read_bytes() and h1.read_bytes() == h2.read_bytes()
    header, body = h1.read_text(), c1.read_text()
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert f'#define KWS_MODEL_V2_TFLITE_SHA256 "{digest}"' in header
    assert "#define KWS_MODEL_V2_TFLITE_SIZE 775u" in header
    assert "#ifndef EDGEKIT_KWS_MODEL_V2_TFLITE_H_" in header and 'extern "C" {' in header
    assert "extern const unsigned char kws_model_v2_tflite[];" in header
    assert "EDGEKIT_ALIGNAS_16 const unsigned char kws_model_v2_tflite[775] = {" in body
    assert "alignas(16)" in body
    # no paths, no dates
    for text in (header, body):
        assert str(tmp_path) not in text and "src" not in text


def test_explicit_identifier_and_bytes_round_trip(artifact, tmp_path):
    c, _ = embed_artifact(artifact, tmp_path, identifier="g_model")
    hexes = [tok.strip().rstrip(",") for line in c.read_text().splitlines()
             if line.startswith("  0x") for tok in line.split(",") if tok.strip()]
    assert bytes(int(h, 16) for h in hexes) == PAYLOAD


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None,
                    reason="needs gcc and g++")
def test_generated_code_compiles_as_c_and_cpp_and_is_aligned(artifact, tmp_path):
    embed_artifact(artifact, tmp_path, identifier="g_model")
    (tmp_path / "main.c").write_text(
        '#include <stdint.h>\n#include <stdio.h>\n#include "g_model.h"\n'
        "int main(void) {\n"
        "  unsigned long sum = 0;\n"
        "  for (size_t i = 0; i < g_model_size; ++i) sum += g_model[i];\n"
        '  printf("%zu %lu %d %s\\n", g_model_size, sum,\n'
        "         (int)((uintptr_t)g_model % 16), g_model_sha256);\n"
        "  return g_model_size == G_MODEL_SIZE ? 0 : 1;\n}\n"
    )
    for compiler, std, src_lang in (("gcc", "-std=c11", []), ("g++", "-std=c++17",
                                                              ["-x", "c++"])):
        exe = tmp_path / f"prog_{compiler}"
        subprocess.run([compiler, std, "-Wall", "-Werror", "-pedantic", *src_lang,
                        str(tmp_path / "main.c"), str(tmp_path / "g_model.c"), "-o", str(exe)],
                       check=True, capture_output=True, cwd=tmp_path)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
        assert out.split() == ["775", str(sum(PAYLOAD)), "0", hashlib.sha256(PAYLOAD).hexdigest()]


def test_bundle_target_adds_io_specs_and_quantization(tmp_path):
    root = _fake_bundle(tmp_path / "kws")
    c, h = embed_artifact(root, tmp_path / "gen", target="t")
    assert c.name == "kws_t.c"
    header = h.read_text()
    for line in [
        '#define KWS_T_TARGET "t"', '#define KWS_T_NUM_INPUTS 1',
        '#define KWS_T_INPUT_0_NAME "mfcc"', '#define KWS_T_INPUT_0_DTYPE "int8"',
        "#define KWS_T_INPUT_0_SHAPE {1, 49, 10}", "#define KWS_T_INPUT_0_ELEMENTS 490",
        "#define KWS_T_INPUT_0_DIM_1 49", "#define KWS_T_INPUT_0_SCALE 0.5f",
        "#define KWS_T_INPUT_0_ZERO_POINT -128", '#define KWS_T_OUTPUT_0_NAME "logits"',
        "#define KWS_T_OUTPUT_0_SCALES {0.25f, 0.125f}",
        "#define KWS_T_OUTPUT_0_ZERO_POINTS {0, 3}",
    ]:
        assert line in header, line
    # the single target is picked without --target; output is the same
    c2, h2 = embed_artifact(root, tmp_path / "gen2")
    assert h2.read_bytes() == h.read_bytes() and c2.read_bytes() == c.read_bytes()


@pytest.mark.parametrize("name, rule", [
    ("int", "keyword"),
    ("class", "keyword"),
    ("3model", "starts with a digit"),
    ("my-model", "contains '-'"),
    ("mödel", "contains 'ö'"),
    ("__model", "reserved"),
    ("_Model", "reserved"),
    ("", "empty"),
])
def test_invalid_identifiers_are_rejected_with_the_rule(name, rule, artifact, tmp_path):
    with pytest.raises(UsageError) as exc:
        embed_artifact(artifact, tmp_path / "out", identifier=name)
    assert rule in str(exc.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_sanitize_identifier():
    assert sanitize_identifier("model.tflite") == "model_tflite"
    assert sanitize_identifier("2-layer net.onnx") == "m_2_layer_net_onnx"
    assert sanitize_identifier("int") == "int_model"
    assert sanitize_identifier("...") == "model"
    for text in ("a b", "x86-tflite-fp32", "9", "über.tflite"):
        assert check_identifier(sanitize_identifier(text))


def test_max_bytes_error_names_size_and_limit_and_keeps_old_output(artifact, tmp_path):
    out = tmp_path / "out"
    c, h = embed_artifact(artifact, out, identifier="m", max_bytes=775)  # exactly at the limit
    before = (c.read_bytes(), h.read_bytes())
    with pytest.raises(UsageError) as exc:
        embed_artifact(artifact, out, identifier="m", max_bytes=512)
    assert "775 bytes" in str(exc.value) and "512 bytes" in str(exc.value)
    assert (c.read_bytes(), h.read_bytes()) == before
    assert sorted(p.name for p in out.iterdir()) == ["m.c", "m.h"]


def test_tampered_and_missing_bundle_files_are_named(tmp_path):
    root = _fake_bundle(tmp_path / "kws")
    (root / "t" / "model.tflite").write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(BundleError, match=r"checksum mismatch for t/model.tflite"):
        embed_artifact(root, tmp_path / "gen", target="t")
    os.remove(root / "t" / "model.tflite")
    with pytest.raises(BundleError, match=r"file t/model.tflite is missing"):
        embed_artifact(root, tmp_path / "gen", target="t")
    assert not (tmp_path / "gen").exists()


def test_multi_file_target_needs_file(tmp_path):
    root = _fake_bundle(tmp_path / "b", files=("t/model.onnx", "t/model.onnx.data"), quant=False)
    with pytest.raises(UsageError, match=r"(?s)has 2 files .*--file"):
        embed_artifact(root, tmp_path / "gen")
    c, _ = embed_artifact(root, tmp_path / "gen", file="model.onnx.data", identifier="w")
    assert "w[775]" in c.read_text()


def test_cli_embed_exit_codes(artifact, tmp_path, capsys):
    assert main(["embed", str(artifact), "-o", str(tmp_path / "g"), "--name", "m"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "g" / "m.c"),
                                                str(tmp_path / "g" / "m.h")]
    assert main(["embed", str(artifact), "-o", str(tmp_path / "g"), "--name", "1m"]) == 2
    assert "starts with a digit" in capsys.readouterr().err
    assert main(["embed", str(artifact), "-o", str(tmp_path / "g"), "--max-bytes", "10"]) == 2
    assert "775 bytes, over the limit of 10 bytes" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "nope.tflite")]) == 2
    root = _fake_bundle(tmp_path / "kws")
    (root / "t" / "model.tflite").write_bytes(b"x")
    assert main(["embed", str(root), "-o", str(tmp_path / "g2")]) == 1
    assert "t/model.tflite" in capsys.readouterr().err


def test_embed_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["embed", "--help"])
    assert exc.value.code == 0 and "alignas(16)" in capsys.readouterr().out
