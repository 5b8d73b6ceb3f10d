"""Configuration as data: one validator for profile [options] / [quantization], recipe
[quantization] and compress(quantization=...), with the precedence profile < recipe < argument."""

import dataclasses
import json
from pathlib import Path

import pytest

from edgekit.backends import BACKENDS, get_backend
from edgekit.errors import ConfigError
from edgekit.pipeline import _quant_configs
from edgekit.profiles import load_profile
from edgekit.quantize.config import TABLE_SCHEMA, QuantConfig
from edgekit.recipe import _quantization, build_recipe, load_recipe, parse_recipe
from edgekit.schema import Field, check_table

OV = 'name = "ov"\nbackend = "openvino"\n'
INT8 = 'name = "q"\nbackend = "onnxruntime"\nprecision = "int8"\n'


def _profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "board.toml"
    path.write_text(text)
    return path


def test_schema_covers_every_quant_config_field():
    assert set(TABLE_SCHEMA) == {f.name for f in dataclasses.fields(QuantConfig)}


def test_check_table_types_ranges_and_suggestions():
    schema = {"n": Field(int, low=1), "x": Field(float, low=0, low_open=True),
              "mode": ("a", "b"), "names": Field(list, item=str), "on": bool}
    out = check_table({"n": 2, "x": 1, "mode": "a", "names": ["h"], "on": True}, schema,
                      where="f.toml [t]")
    assert out == {"n": 2, "x": 1.0, "mode": "a", "names": ["h"], "on": True}
    assert isinstance(out["x"], float)
    for table, needle in [({"nn": 1}, "unknown key 'nn'"), ({"n": 0}, "n = 0 must be at least 1"),
                          ({"n": True}, "'n' must be a int, got bool"),
                          ({"x": 0}, "x = 0 must be above 0"),
                          ({"x": float("nan")}, "x = nan must be a number"),
                          ({"mode": "c"}, "mode = 'c' is not one of 'a', 'b'"),
                          ({"names": [1]}, "'names' must be a list of str"),
                          ({"on": "yes"}, "'on' must be a bool")]:
        with pytest.raises(ConfigError) as err:
            check_table(table, schema, where="f.toml [t]")
        assert needle in str(err.value) and "f.toml [t]" in str(err.value)
        assert err.value.exit_code == 2
    with pytest.raises(ConfigError, match="did you mean 'n'"):
        check_table({"nn": 1}, schema, where="w")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_declares_its_options(backend):
    schema = get_backend(backend).options_schema
    assert isinstance(schema, dict)
    with pytest.raises(ConfigError, match="unknown key 'no_such_option'"):
        check_table({"no_such_option": 1}, schema, where="x")


@pytest.mark.parametrize("text, needle", [
    (OV + '[options]\ninference_precison = "f32"\n',
     "unknown key 'inference_precison'"),
    (OV + '[options]\ninference_precision = "fp32"\n', "inference_precision = 'fp32'"),
    (OV + '[options]\ncompress_to_fp16 = "yes"\n', "'compress_to_fp16' must be a bool"),
    ('name = "o"\nbackend = "onnxruntime"\n[options]\ngraph_optimization_level = "max"\n',
     "graph_optimization_level = 'max'"),
])
def test_backend_options_are_validated_naming_file_and_key(tmp_path, text, needle):
    path = _profile(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert needle in str(err.value)
    assert f"target profile {path} [options]" in str(err.value)


def test_options_typo_suggests_the_key(tmp_path):
    path = _profile(tmp_path, OV + '[options]\ninference_precison = "f32"\n')
    with pytest.raises(ConfigError, match="did you mean 'inference_precision'"):
        load_profile(path)


def test_layout_is_refused_with_a_clear_error(tmp_path):
    path = _profile(tmp_path, OV + 'layout = "nchw"\n')
    with pytest.raises(ConfigError, match="layout is not supported; remove it") as err:
        load_profile(path)
    assert str(path) in str(err.value)


def test_profile_quantization_table(tmp_path):
    profile = load_profile(_profile(tmp_path, INT8 + '[quantization]\nmethod = "entropy"\n'))
    assert profile.quantization == {"method": "entropy"}
    assert profile.to_json()["quantization"] == {"method": "entropy"}
    for text, needle in [(INT8 + '[quantization]\nmethd = "entropy"\n', "did you mean 'method'"),
                         (INT8 + '[quantization]\nsamples = 0\n', "samples = 0"),
                         (INT8 + '[quantization]\nmin_speedup = -1\n', "min_speedup = -1"),
                         (INT8 + '[quantization]\nscale_floor = true\n', "scale_floor"),
                         (INT8 + '[quantization]\nscale_floor = "of"\n', "'off'"),
                         (INT8.replace("int8", "fp32") + '[quantization]\nmethod = "entropy"\n',
                          'need precision = "int8"')]:
        path = _profile(tmp_path, text)
        with pytest.raises(ConfigError) as err:
            load_profile(path)
        assert needle in str(err.value) and f"{path} [quantization]" in str(err.value)


def test_precedence_profile_recipe_argument(tmp_path):
    profile = load_profile(_profile(
        tmp_path, INT8 + '[quantization]\nmethod = "entropy"\nsamples = 50\nper_channel = false\n'))
    recipe = parse_recipe({"model": "cnn", "targets": ["x86-onnxruntime-int8"],
                           "quantization": {"method": "percentile", "samples": 40}},
                          source="r.toml")
    merged = _quantization(recipe, [profile], {"samples": 30})
    config = _quant_configs([profile], merged)["q"]
    assert (config.method, config.samples, config.per_channel) == ("percentile", 30, False)
    assert _quant_configs([profile], None)["q"].method == "entropy"
    whole = QuantConfig(method="minmax")
    assert _quant_configs([profile], _quantization(recipe, [profile], whole))["q"] is whole
    with pytest.raises(ConfigError, match="quantization=: unknown key 'methd'"):
        _quant_configs([profile], {"methd": "minmax"})


def test_recipe_quantization_is_validated(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('model = "cnn"\ntargets = ["x86-onnxruntime-int8"]\n'
                    '[quantization]\nmethod = "percentle"\n')
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert f"recipe {path} [quantization]" in str(err.value)
    assert "method = 'percentle'" in str(err.value)


@pytest.mark.slow
def test_recipe_quantization_table_builds_with_it(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('model = "cnn"\ntargets = ["x86-onnxruntime-int8"]\nepochs = 1\n'
                    'verify_samples = 20\n[quantization]\nmethod = "percentile"\nsamples = 32\n'
                    'latency_check = false\n')
    bundle = build_recipe(load_recipe(path), tmp_path / "b", cache=False, progress=False)
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    entry = manifest["targets"]["x86-onnxruntime-int8"]["quantization"]
    assert entry["config"]["method"] == "percentile"
    assert entry["config"]["samples"] == 32
    assert manifest["recipe"]["quantization"]["method"] == "percentile"


def test_profile_tolerances_switch_off_with_false(tmp_path):
    profile = load_profile(_profile(tmp_path, OV + '[tolerance]\nmax_abs = false\nmin_cosine = 1\n'
                                    '[accuracy]\nmax_drop = 2\n'))
    assert profile.tolerance.max_abs is None and profile.tolerance.min_cosine == 1.0
    assert profile.max_accuracy_drop == 2.0
    with pytest.raises(ConfigError, match="tolerance.min_cosine = 1.5 must be at most 1"):
        load_profile(_profile(tmp_path, OV + '[tolerance]\nmin_cosine = 1.5\n'))
