import json
import subprocess
import sys
import textwrap

import pytest

from edgekit.cli import main


def run_cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("cmd", [[], ["models"], ["targets"], ["build"], ["demo"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: edgekit" in capsys.readouterr().out


def test_targets_and_models_json(capsys):
    assert main(["targets", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert {"x86-onnxruntime-fp32", "x86-openvino-fp32", "arm64-tflite-fp32"} <= names
    assert main(["models", "--json"]) == 0
    models = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"cnn", "lstm", "transformer", "image_text", "image_audio", "embedding", "vae",
            "gan", "mobilenet_v2", "ds_cnn", "resnet8", "autoencoder"} <= models


def test_unknown_model_exit_2_with_suggestion(tmp_path, capsys):
    assert main(["build", "mobilenetv2", "-t", "x86-onnxruntime-fp32",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mobilenetv2'" in err and "did you mean 'mobilenet_v2'" in err


def test_unknown_target_exit_2(tmp_path, capsys):
    assert main(["build", "cnn", "-t", "arm64-tflite-fp16", "-o", str(tmp_path / "o"),
                 "--no-train"]) == 2
    assert "did you mean 'arm64-tflite-fp32'" in capsys.readouterr().err


def test_corrupt_profile_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\nbackend = [")
    assert main(["build", "cnn", "-t", str(bad), "-o", str(tmp_path / "o"), "--no-train"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unwritable_output_exit_2(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["build", "cnn", "-t", "x86-onnxruntime-fp32", "-o", str(tmp_path / "f" / "o"),
                 "--no-train", "-q"]) == 2
    assert "a file is in the way" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "x"


def test_user_model_needs_input_shape(tmp_path, capsys):
    assert main(["build", "mypkg:net", "-t", "x86-onnxruntime-fp32", "-o", str(tmp_path)]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["build", "cnn", "--input-shape", "1x2", "-t", "x86-onnxruntime-fp32",
                 "-o", str(tmp_path)]) == 2


def test_bad_input_shape_syntax(tmp_path, capsys):
    assert main(["build", "m:f", "--input-shape", "1by3", "-t", "x86-onnxruntime-fp32",
                 "-o", str(tmp_path / "o")]) == 2
    assert "bad input shape '1by3'" in capsys.readouterr().err


def test_build_user_factory_end_to_end(tmp_path):
    (tmp_path / "usernet.py").write_text(textwrap.dedent("""
        import torch
        def make():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    """))
    code, out, err = run_cli("build", "usernet:make", "--input-shape", "1x3x4",
                             "-t", "x86-onnxruntime-fp32", "-o", "out", "--json", cwd=tmp_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["targets"][0]["target"] == "x86-onnxruntime-fp32"
    assert result["targets"][0]["max_abs_diff"] < 1e-5
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert "[edgekit]" in err  # progress on stderr, data on stdout


def test_user_factory_import_error_exit_2(tmp_path):
    code, _, err = run_cli("build", "nosuchmod:make", "--input-shape", "1x3",
                           "-t", "x86-onnxruntime-fp32", "-o", "out", cwd=tmp_path)
    assert code == 2 and "cannot import module 'nosuchmod'" in err
