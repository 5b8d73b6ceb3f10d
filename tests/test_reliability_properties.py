"""Reliability case 14: property tests of the profile, recipe and manifest readers: any input
gives a loaded object or a named ConfigError/BundleError, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgekit.bundle import SCHEMA_VERSION, load_bundle
from edgekit.errors import (
    BundleError,
    ConfigError,
    UsageError,
)

from reliability_helpers import rel

# =========================================================================== case 14


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
