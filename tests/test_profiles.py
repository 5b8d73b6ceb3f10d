from pathlib import Path

import pytest

from edgekit.backends import BACKENDS
from edgekit.errors import ConfigError, UnknownNameError
from edgekit.profiles import Tolerance, list_profiles, load_profile, parse_profile

REQUIRED = {
    "x86-onnxruntime-fp32", "x86-openvino-fp32", "arm64-tflite-fp32",
    "x86-onnxruntime-int8", "x86-openvino-int8", "arm64-tflite-int8",
}


def test_bundled_profiles_cover_required_targets_and_all_load():
    names = set(list_profiles())
    assert REQUIRED <= names
    for name in names:
        profile = load_profile(name)
        assert profile.name == name  # file name and declared name agree
        assert profile.backend in BACKENDS
        assert profile.precision in name


def test_openvino_profiles_pin_f32_execution():
    assert load_profile("x86-openvino-fp32").options["inference_precision"] == "f32"


def test_unknown_target_suggests_closest():
    with pytest.raises(UnknownNameError) as err:
        load_profile("x86-onnxruntim-fp32")
    assert "x86-onnxruntime-fp32" in str(err.value)
    assert err.value.suggestions[0] == "x86-onnxruntime-fp32"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(text)
    return path


def test_profile_from_path(tmp_path):
    path = _write(tmp_path, 'name = "mine"\nbackend = "onnxruntime"\nthreads = 1\n'
                            '[tolerance]\nmax_abs = 0.01\n')
    profile = load_profile(path)
    assert (profile.name, profile.threads, profile.tolerance.max_abs) == ("mine", 1, 0.01)
    assert profile.tolerance.min_cosine == Tolerance().min_cosine  # default kept


@pytest.mark.parametrize(
    "text, needle",
    [
        ('name = "x"\nbackend = "onnxruntime"\nthreds = 2\n', "unknown key 'threds'"),
        ('name = "x"\nbackend = "tensorrt"\n', "backend = 'tensorrt'"),
        ('name = "x"\n', "missing required key 'backend'"),
        ('name = "x"\nbackend = "onnxruntime"\nthreads = "2"\n', "'threads' must be a int"),
        ('name = "x"\nbackend = "onnxruntime"\nthreads = 0\n', "threads = 0"),
        ('name = "x"\nbackend = "onnxruntime"\nprecision = "int4"\n', "precision = 'int4'"),
        ('name = "x"\nbackend = "onnxruntime"\n[tolerance]\nmax_abs = -1\n', "tolerance.max_abs"),
        ('name = "x"\nbackend = "onnxruntime"\n[tolerance]\nmin_cosine = 2\n', "at most 1"),
        ('name = "x"\nbackend = "onnxruntime"\n[accuracy]\nmax_dorp = 1\n', "accuracy.max_dorp"),
        ('name = "x\nbackend = 1', "not valid TOML"),
        ('name = "x"\nbackend = "openvino"\n[options]\ninference_precison = "f32"\n',
         "unknown key 'inference_precison'"),
        ('name = "x"\nbackend = "openvino"\n[options]\ninference_precision = 32\n',
         "'inference_precision' must be a str"),
        ('name = "x"\nbackend = "onnxruntime"\nlayout = "nhwc"\n', "layout is not supported"),
        ('name = "x"\nbackend = "onnxruntime"\nprecision = "int8"\n[quantization]\nmethd = 1\n',
         "unknown key 'methd'"),
    ],
)
def test_malformed_profiles_name_file_and_key(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)
    assert err.value.exit_code == 2


def test_binary_profile_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_profile(path)


def test_missing_profile_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(tmp_path / "nope.toml")


def test_parse_rejects_non_table():
    with pytest.raises(ConfigError):
        parse_profile([], source="x")  # type: ignore[arg-type]
