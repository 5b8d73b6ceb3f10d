"""edgekit search / sweep: the space, reports, resume logic and errors without Ray; one point
built and timed in this process; a real two-node Ray cluster on this machine (slow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgekit.errors import ConfigError, UsageError
from edgekit.search.report import Budget, choose, pareto, target_report, write_reports
from edgekit.search.runner import Progress
from edgekit.search.space import (
    Choice,
    Range,
    SearchSpace,
    default_space,
    parse_space_arg,
    quant_keys,
)

TARGET = "x86-onnxruntime-int8"


# ---------------------------------------------------------------- space


def test_default_space_takes_quantization_keys_from_the_table_schema(monkeypatch):
    from edgekit.quantize import config
    from edgekit.schema import Field

    space = default_space(max_threads=2)
    assert space["prune_ratio"] == Range(0.0, 0.7)
    assert space["threads"] == Choice((1, 2))
    assert space["quant.method"] == Choice(tuple(config.METHODS))
    assert space["quant.per_channel"] == Choice((False, True))
    # keys that steer how a build measures are never searched
    assert "quant.latency_check" not in quant_keys() and "quant.samples" not in space
    # a key added to the table later is searchable without a change to the space
    monkeypatch.setitem(config.TABLE_SCHEMA, "new_knob", Field(bool))
    assert quant_keys()["new_knob"] == (False, True)
    dims = SearchSpace.from_dict({"quant.new_knob": [True]}).dims
    assert dims["quant.new_knob"] == Choice((True,))
    if "smoothquant_alpha" in config.TABLE_SCHEMA:  # numeric keys: over the values given
        dims = SearchSpace.from_dict({"quant.smoothquant_alpha": [0.3, 0.8]}).dims
        assert dims["quant.smoothquant_alpha"] == Choice((0.3, 0.8))
        assert "quant.smoothquant_alpha" not in default_space()


@pytest.mark.parametrize("given, words", [
    ({"quant.methd": ["minmax"]}, ["unknown search space key 'quant.methd'",
                                   "did you mean 'quant.method'"]),
    ({"prune_ratio": "0..0.9"}, ["'prune_ratio'", "outside 0..0.7"]),
    ({"prune_ratio": "a..b"}, ["bad range 'a..b'"]),
    ({"quant.method": ["minmax", "bogus"]}, ["value 'bogus' is not one of", "'entropy'"]),
    ({"threads": [0]}, ["'threads'", "value 0 is not a positive whole number"]),
    ({"importance": ["magic"]}, ["value 'magic' is not one of"]),
    ({"importance": "0..1"}, ["takes a list of values, not a range"]),
    ({"quant.smoothquant_alpha": [0.5, 1.5]}, ["search space 'quant.smoothquant_alpha'",
                                               "1.5"]),
    ({"quant.samples": [10]}, ["unknown search space key 'quant.samples'"]),
    ({"option.performance_hint": ["FAST"]}, ["search space 'option.performance_hint'",
                                             "'FAST' is not one of"]),
])
def test_space_refuses_bad_keys_and_values(given, words):
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_dict(given)
    for w in words:
        assert w in str(err.value)


def test_active_dimensions_depend_on_the_target():
    space = SearchSpace.from_dict({})
    fp32 = space.active("onnxruntime", "fp32")
    assert not any(k.startswith("quant.") for k in fp32) and "prune_ratio" in fp32
    ort = space.active("onnxruntime", "int8")
    assert "quant.activation_type" in ort and "quant.openvino_source" not in ort
    ov = space.active("openvino", "int8")
    assert "quant.openvino_source" in ov and "quant.activation_type" not in ov
    hints = SearchSpace.from_dict({"option.performance_hint": ["LATENCY", "THROUGHPUT"]})
    assert "option.performance_hint" in hints.active("openvino", "fp32")
    assert "option.performance_hint" not in hints.active("onnxruntime", "fp32")


def test_the_default_build_is_the_first_point_where_the_space_holds_it():
    from edgekit.profiles import load_profile

    ort = load_profile("x86-onnxruntime-int8")
    point = SearchSpace.from_dict({}, max_threads=4).default_point(ort)
    assert point["prune_ratio"] == 0.0 and point["threads"] == ort.threads
    assert point["quant.method"] == "minmax" and point["quant.per_channel"] is True
    assert point["quant.equalize"] == "auto" and point["quant.smoothquant"] is False
    assert "quant.openvino_source" not in point  # not a dimension of this target
    # a range without 0 and a fixed dimension are left to the sampler
    narrow = SearchSpace.from_dict({"prune_ratio": "0.2..0.4", "threads": [1]})
    assert "prune_ratio" not in narrow.default_point(ort)
    assert "threads" not in narrow.default_point(ort)


def test_suggest_draws_within_the_space_and_fixes_single_values():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.from_dict({"prune_ratio": "0.1..0.4", "threads": [2],
                                   "quant.method": ["minmax", "entropy"]})
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        point = space.suggest(trial, "onnxruntime", "int8")
        assert 0.1 <= point["prune_ratio"] <= 0.4
        assert point["quant.method"] in ("minmax", "entropy")
        assert point["threads"] == 2 and "threads" not in trial.params  # fixed: not asked
        study.tell(trial, [1.0, 1.0, 1.0])


def test_layers_kept_in_float_are_searched_as_sets():
    from edgekit.profiles import load_profile
    from edgekit.search.space import split_point

    space = SearchSpace.from_dict(parse_space_arg(["quant.keep_float=none,head,conv+head"]))
    assert space.dims["quant.keep_float"] == Choice(("none", "head", "conv+head"))
    assert split_point({"quant.keep_float": "conv+head"})[3] == {"keep_float": ["conv", "head"]}
    assert split_point({"quant.keep_float": "none"})[3] == {"keep_float": []}
    # the default build keeps nothing in float: "none" is its value, asked first
    assert space.default_point(load_profile(TARGET))["quant.keep_float"] == "none"
    with pytest.raises(ConfigError, match="is not a set of layers"):
        SearchSpace.from_dict({"quant.keep_float": ["+"]})


def test_parse_space_arg():
    got = parse_space_arg(["prune_ratio=0..0.5", "threads=1,2", "quant.per_channel=true,false",
                           "quant.method=minmax,entropy"])
    assert got == {"prune_ratio": "0..0.5", "threads": [1, 2],
                   "quant.per_channel": [True, False], "quant.method": ["minmax", "entropy"]}
    with pytest.raises(ConfigError, match="bad --space 'threads'"):
        parse_space_arg(["threads"])


# ---------------------------------------------------------------- report


def _row(n: int, lat: float, acc: float, size: int, state: str = "complete") -> dict[str, Any]:
    return {"trial": n, "state": state, "point": {"prune_ratio": 0.1 * n},
            "latency_ms": lat, "accuracy": acc, "drop": 90.0 - acc, "size_bytes": size,
            "build_node": {"node_ip": "10.0.0.2"}, "time_node": {"node_ip": "10.0.0.1"},
            "bundle": f"/b/{n}", "error": None}


def test_pareto_front_in_three_objectives():
    rows = [_row(0, 1.0, 90.0, 100), _row(1, 2.0, 89.0, 200),  # 1 dominated by 0
            _row(2, 0.5, 80.0, 100), _row(3, 3.0, 91.0, 300),
            _row(4, 1.0, 90.0, 50), _row(5, 0.1, 99.0, 1, state="fail")]
    assert pareto(rows, higher_is_better=True) == [2, 3, 4]  # 0 dominated by 4 (smaller)
    # a lower-is-better metric flips the quality axis
    assert 2 not in pareto([_row(2, 1.0, 80.0, 100), _row(6, 1.0, 70.0, 100)], False)


def test_choice_is_the_fastest_within_budget_else_the_closest():
    rows = [_row(0, 1.0, 89.5, 100), _row(1, 0.6, 88.0, 100), _row(2, 0.8, 89.2, 100)]
    chosen, closest = choose(rows, Budget(max_drop=1.0))
    assert chosen is not None and chosen["trial"] == 2 and closest is None
    chosen, closest = choose(rows, Budget(max_drop=1.0, max_latency_ms=0.9))
    assert chosen["trial"] == 2
    chosen, closest = choose(rows, Budget(max_drop=0.1))
    assert chosen is None and closest["trial"] == 0  # smallest excess: drop 0.5 over 0.1
    b = Budget(max_drop=1.0, max_size_bytes=50, max_latency_ms=0.5)
    assert b.violations(rows[1]) == pytest.approx({"drop": 1.0, "size": 1.0, "latency": 0.2})


def test_the_choice_is_made_on_the_side_by_side_timing_where_there_is_one(tmp_path):
    # trial 1 timed fastest during the search (while other trials built); timed again side by
    # side with trials 0 and 2, it is the slowest: trial 2 is chosen
    rows = [_row(0, 1.0, 89.5, 100), _row(1, 0.6, 89.4, 100), _row(2, 0.8, 89.2, 100),
            _row(3, 0.1, 70.0, 100)]  # over the budget: never timed again, never chosen
    again = {"latency_ms": {0: 0.9, 1: 0.95, 2: 0.7}}
    t = target_report(TARGET, rows, Budget(max_drop=1.0), higher_is_better=True,
                      metric="top1", base_metric=90.0, retimed=again)
    assert t["chosen"] == 2 and t["retimed"] == {"trials": [0, 1, 2], "error": None}
    assert [r["retimed_ms"] for r in t["trials"]] == [0.9, 0.95, 0.7, None]
    report = {"model": "cnn", "metric": "top1", "base_metric": 90.0,
              "budget": Budget(1.0).to_json(), "targets": {TARGET: t}}
    write_reports(report, tmp_path, png=False)
    md = (tmp_path / "search.md").read_text()
    assert "Chosen: trial 2 (fastest within the budget, timed again side by side with the " \
           "other points within it: trials 0, 1, 2)" in md
    assert "| 2 | 0.8 | 0.7 | 89.2 |" in md and "| 3 | 0.1 | - | 70 |" in md
    # without the side-by-side timing (it failed), the trial timings decide, and it says so
    t = target_report(TARGET, rows, Budget(max_drop=1.0), higher_is_better=True,
                      metric="top1", base_metric=90.0, retimed={"error": "board offline"})
    assert t["chosen"] == 1
    write_reports({**report, "targets": {TARGET: t}}, tmp_path, png=False)
    assert "Timing the points again failed (board offline)" in \
        (tmp_path / "search.md").read_text()


def test_target_report_says_when_no_point_meets_the_budget(tmp_path):
    rows = [_row(0, 1.0, 85.0, 100), _row(1, 0.5, 80.0, 60), _row(2, 9.9, 1, 1, "fail")]
    t = target_report(TARGET, rows, Budget(max_drop=1.0), higher_is_better=True,
                      metric="top1", base_metric=90.0)
    assert t["chosen"] is None and t["closest"] == 0 and not t["within_budget"]
    assert t["pareto"] == [0, 1] and t["complete"] == 2 and t["failed"] == 1
    assert "no point meets the budget (drop <= 1)" in t["message"]
    assert "closest is trial 0" in t["message"] and "over by drop 400.0%" in t["message"]
    report = {"model": "cnn", "metric": "top1", "base_metric": 90.0,
              "budget": Budget(1.0).to_json(), "targets": {TARGET: t}}
    files = write_reports(report, tmp_path)
    assert json.loads((tmp_path / "search.json").read_text())["targets"][TARGET]["closest"] == 0
    md = (tmp_path / "search.md").read_text()
    assert "| 1 | 0.5 | - | 80 | +10 | 60 | yes | prune_ratio=0.1 | 10.0.0.2 | 10.0.0.1 |" in md
    assert t["message"] in md
    if f"pareto-{TARGET}.png" in files:
        assert (tmp_path / f"pareto-{TARGET}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_eta_from_this_runs_pace(capsys):
    now = [100.0]
    prog = Progress(total=4, done=1, enabled=True, clock=lambda: now[0])  # 1 from a past run
    assert prog.eta_s() is None and prog.line() == "1/4 trials (25%), ETA -"
    now[0] += 10.0
    prog.step("trial 1", ok=True)
    assert prog.eta_s() == pytest.approx(20.0)  # 10 s per trial, 2 left
    prog.step("trial 2", ok=False)
    assert "2/4 trials (50%), 1 failed, ETA 0m20s" in capsys.readouterr().err


# ---------------------------------------------------------------- resume (Optuna, no Ray)


def test_interrupted_trials_are_failed_and_asked_again_completed_ones_kept(tmp_path):
    pytest.importorskip("optuna")
    from edgekit.search import study as st

    space = SearchSpace.from_dict({"quant.method": ["minmax", "entropy", "percentile"]})
    s1 = st.open_study(tmp_path, TARGET, higher_is_better=True, seed=3)
    done = s1.ask()
    p_done = space.suggest(done, "onnxruntime", "int8")
    build = {"accuracy": 88.0, "drop": 1.5, "size_bytes": 1234, "node": {"node_id": "a"},
             "out": "/b/0"}
    st.record_result(s1, done, p_done, build, {"latency_ms": 0.25, "node": {"node_id": "b"}})
    killed = s1.ask()  # still running when the search is killed
    p_killed = space.suggest(killed, "onnxruntime", "int8")
    del s1

    s2 = st.open_study(tmp_path, TARGET, higher_is_better=True, seed=3)
    assert st.recover(s2) == 1
    trials = {t.number: t for t in s2.get_trials()}
    assert trials[done.number].state.name == "COMPLETE"
    assert trials[done.number].values == [0.25, 88.0, 1234]
    assert trials[done.number].user_attrs["time_node"] == {"node_id": "b"}
    assert trials[killed.number].state.name == "FAIL"
    assert "interrupted" in trials[killed.number].user_attrs["error"]
    again = s2.ask()
    assert space.suggest(again, "onnxruntime", "int8") == p_killed  # the point is redone
    assert st.in_db(tmp_path) == [TARGET]
    assert s2.directions[1].name == "MAXIMIZE"
    assert st.objectives(False) == ["minimize", "minimize", "minimize"]


# ---------------------------------------------------------------- bad input, before Ray


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_address_fails_fast_with_the_address():
    from edgekit.search.scheduler import check_address

    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(UsageError) as err:
        check_address(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 5
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in str(err.value)
    assert "ray start --head" in str(err.value)
    with pytest.raises(UsageError, match="bad Ray address 'nohost'"):
        check_address("nohost")


def test_timing_resources_and_an_offline_device():
    from edgekit.search.scheduler import Cluster, timing_resource

    assert timing_resource(None) == "timing:local"
    assert timing_resource("pi@rpi4.local:2222") == "board:rpi4.local"
    cluster = Cluster(address="10.0.0.5:6379", started_here=False,
                      resources={"CPU": 4.0, "timing:local": 1.0, "board:jetson": 1.0})
    cluster.check_resource("timing:local", TARGET)  # offered: no error
    assert cluster.cpus == 4
    with pytest.raises(UsageError) as err:
        cluster.check_resource("board:rpi4.local", "arm64-tflite-int8")
    msg = str(err.value)
    assert "target arm64-tflite-int8: no node of the Ray cluster offers the timing resource " \
        "'board:rpi4.local' (offered: board:jetson, timing:local)" in msg
    assert """--resources '{"board:rpi4.local": 1}'""" in msg


@pytest.mark.parametrize("argv, words", [
    (["--space", "bogus=1"], ["unknown search space key 'bogus'"]),
    (["--space", "quant.method=fast"], ["value 'fast' is not one of"]),
    (["-t", "nosuch-target"], ["unknown target 'nosuch-target'"]),
    (["--device", "x86-onnxruntime-fp32=pi@rpi4"], ["devices given for x86-onnxruntime-fp32"]),
    (["--trials", "0"], ["trials must be >= 1"]),
    (["--data", "train.npz"], ["data given for the zoo model cnn", "module:factory"]),
])
def test_cli_search_refuses_bad_input_with_exit_code_2(tmp_path, capsys, argv, words):
    from edgekit.cli import main

    rc = main(["search", "cnn", "-t", TARGET, "-o", str(tmp_path / "s"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    for w in words:
        assert w in err
    assert not (tmp_path / "s" / "study.db").exists()


_USER_MODULE = """
from pathlib import Path

import torch
from torch import nn


def build():
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                      nn.Linear(16 * 4 * 4, 10))
    m.load_state_dict(torch.load(Path(__file__).with_name("digitsnet.pt"), weights_only=True))
    return m
"""


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A trained user model (``digitsnet:build`` in its own folder) and its data as .npz:
    scikit-learn's digits, 1x8x8, integer labels."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("user")
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    np.savez(root / "train.npz", x=x[:1400], y=y[:1400])
    np.savez(root / "val.npz", x=x[1400:], y=y[1400:])
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 10))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    torch.save(m.state_dict(), root / "digitsnet.pt")
    (root / "digitsnet.py").write_text(_USER_MODULE)
    return root


def test_search_source_checks_user_models_and_their_data(tmp_path, user_model, monkeypatch):
    from edgekit.errors import DataError
    from edgekit.search.source import ModelSource

    monkeypatch.chdir(user_model)
    data = user_model / "train.npz"
    with pytest.raises(UsageError, match="needs its data") as e:
        ModelSource.resolve("digitsnet:build", input_shapes=["1x1x8x8"])
    assert "--data train.npz" in (e.value.hint or "")
    with pytest.raises(UsageError, match="needs its input shapes"):
        ModelSource.resolve("digitsnet:build", data=data)
    with pytest.raises(UsageError, match="a user model comes trained"):
        ModelSource.resolve("digitsnet:build", input_shapes=["1x1x8x8"], data=data, epochs=2)
    with pytest.raises(DataError, match=r"holds samples of shape \(1, 8, 8\)"):
        ModelSource.resolve("digitsnet:build", input_shapes=["1x1x9x9"], data=data)
    with pytest.raises(UsageError, match="cannot import module 'nosuchmodule'"):
        ModelSource.resolve("nosuchmodule:build", input_shapes=["1x1x8x8"], data=data)
    with pytest.raises(UsageError, match="data given for the zoo model cnn"):
        ModelSource.resolve("cnn", data=data)
    src = ModelSource.resolve("digitsnet:build", input_shapes=["1x1x8x8"], data="train.npz",
                              val_data="val.npz")
    assert src.data == str(data) and src.import_path == str(user_model) and src.epochs == 0
    # a recipe of a user model: its shapes, its folder importable, the data given beside it
    recipe = tmp_path / "r.toml"
    shutil.copy(user_model / "digitsnet.py", tmp_path)
    shutil.copy(user_model / "digitsnet.pt", tmp_path)
    recipe.write_text('model = "digitsnet:build"\ninput_shapes = ["1x1x8x8"]\n'
                      'targets = ["x86-onnxruntime-fp32"]\n')
    with pytest.raises(UsageError, match="needs its data"):
        ModelSource.resolve(recipe)
    src = ModelSource.resolve(recipe, data=data)
    assert src.input_shapes == ["1x1x8x8"] and src.import_path == str(tmp_path)
    recipe.write_text('model = "cnn"\ntargets = ["x86-onnxruntime-int8"]\nepochs = 2\n'
                      '[quantization]\nmethod = "entropy"\n')
    src = ModelSource.resolve(recipe)
    assert (src.model, src.epochs, src.quantization) == ("cnn", 2, {"method": "entropy"})


def test_a_user_model_point_is_pruned_on_its_data_and_scored_on_it(tmp_path, user_model,
                                                                    monkeypatch):
    import torch

    from edgekit.profiles import load_profile
    from edgekit.search.source import ModelSource
    from edgekit.search.trial import build_point, prepare_base

    torch.set_num_threads(1)
    monkeypatch.chdir(user_model)
    src = ModelSource.resolve("digitsnet:build", input_shapes=["1x1x8x8"],
                              data="train.npz", val_data="val.npz", fine_tune_epochs=1)
    monkeypatch.chdir(tmp_path)  # the factory is found through the recorded import path
    base = prepare_base(src, tmp_path, progress=False)
    assert base["metric"] == "top1" and base["epochs"] == 0 and base["test"] > 80
    built = build_point({"source": src.to_json(), "base": base, "point": {
        "prune_ratio": 0.25, "importance": "l2", "threads": 1},
        "profile": load_profile("x86-onnxruntime-fp32"), "out": str(tmp_path / "t0")})
    assert built["status"] == "built", built.get("error")
    assert built["drop"] == pytest.approx(base["test"] - built["accuracy"])
    manifest = json.loads((tmp_path / "t0" / "manifest.json").read_text())
    assert manifest["name"] == "build"
    prune = next(h for h in manifest["history"] if h["stage"] == "prune")
    assert prune["macs_after"] < prune["macs_before"]
    assert prune["test_before"] == pytest.approx(base["test"], abs=1e-3)


def test_sweep_grid_is_checked_as_recipes():
    from edgekit.search.sweep import combinations

    raw = {"model": "cnn", "targets": [TARGET], "epochs": 0}
    combos = combinations(raw, {"quantization.method": ["minmax", "entropy"],
                                "prune.ratio": [0.25, 0.5]})
    assert len(combos) == 4
    values, data = combos[3]
    assert values == {"quantization.method": "entropy", "prune.ratio": 0.5}
    assert data["quantization"] == {"method": "entropy"} and data["prune"] == {"ratio": 0.5}
    assert raw == {"model": "cnn", "targets": [TARGET], "epochs": 0}  # not modified
    with pytest.raises(ConfigError, match=r"sweep combination \{'prune.ratio': 1.5\}"):
        combinations(raw, {"prune.ratio": [1.5]})
    with pytest.raises(ConfigError, match="non-empty list"):
        combinations(raw, {"epochs": 3})
    with pytest.raises(UsageError, match="grid is empty"):
        combinations(raw, {})


# ---------------------------------------------------------------- one point, in this process


def test_build_and_time_one_point_without_ray(tmp_path):
    import torch

    from edgekit.bundle import load_bundle
    from edgekit.profiles import load_profile
    from edgekit.search.trial import (
        ModelSource,
        build_point,
        prepare_base,
        retime_points,
        time_point,
    )

    torch.set_num_threads(1)
    src = ModelSource.resolve("cnn", epochs=1)
    base = prepare_base(src, tmp_path, progress=False)
    assert base["metric"] == "top1" and 0 < base["test"] <= 100
    assert prepare_base(src, tmp_path, progress=False) == base  # reused, not retrained
    point = {"prune_ratio": 0.25, "importance": "l2", "threads": 1, "quant.method": "entropy",
             "option.graph_optimization_level": "basic"}
    built = build_point({"source": src.to_json(), "base": base, "profile": load_profile(TARGET),
                         "point": point, "out": str(tmp_path / "t0")})
    assert built["status"] == "built", built.get("error")
    assert built["drop"] == pytest.approx(base["test"] - built["accuracy"])
    entry = load_bundle(tmp_path / "t0").target(TARGET)
    files = sum((tmp_path / "t0" / f.path).stat().st_size for f in entry.files)
    assert built["size_bytes"] == files and built["threads"] == 1
    manifest = json.loads((tmp_path / "t0" / "manifest.json").read_text())
    assert manifest["recipe"]["search_point"] == point
    assert manifest["targets"][TARGET]["quantization"]["config"]["method"] == "entropy"
    profile = manifest["targets"][TARGET]["profile"]
    assert profile["threads"] == 1
    assert profile["options"]["graph_optimization_level"] == "basic"
    prune = next(h for h in manifest["history"] if h["stage"] == "prune")
    assert prune["pruning"]["target"] == [{"ratio": 0.25}]
    assert prune["macs_after"] < prune["macs_before"]
    # timed from the packed bytes, as on a node that does not share this folder
    timed = time_point({"out": str(tmp_path / "elsewhere"), "bundle": built["bundle"],
                        "target": TARGET, "threads": 1, "runs": 20, "warmup": 2})
    assert timed["status"] == "timed", timed.get("error")
    assert timed["latency_ms"] > 0 and timed["latency"]["n"] == 20
    # timed again side by side: one point from its folder, one from its packed bytes
    again = retime_points({"target": TARGET, "runs": 20, "warmup": 2, "points": [
        {"trial": 0, "out": str(tmp_path / "t0"), "bundle": built["bundle"]},
        {"trial": 1, "out": str(tmp_path / "elsewhere"), "bundle": built["bundle"]}]})
    assert again["status"] == "timed", again.get("error")
    assert sorted(again["latency_ms"]) == [0, 1] and min(again["latency_ms"].values()) > 0


# ---------------------------------------------------------------- a real two-node Ray cluster


def _free_port() -> int:
    return _closed_port()


def _env() -> dict[str, str]:
    # A loopback test cluster: no token authentication (Ray 2.60 enables it by default when
    # ~/.ray/auth_token exists, and `ray start --address` would then fail to join).
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_NUM_THREADS": "1"}


def _ours(temp_dir: str) -> list[Any]:
    """Every process of the test cluster: those naming its temp dir, and their children."""
    import psutil

    found: dict[int, Any] = {}
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and temp_dir in " ".join(p.cmdline()):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except psutil.Error:
            continue
    return list(found.values())


def _kill(procs: list[Any]) -> None:
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=15)


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="ray is not installed (edgekit[distributed])")
    pytest.importorskip("optuna", reason="optuna is not installed (edgekit[distributed])")
    import psutil

    ray_cli = str(Path(sys.executable).with_name("ray"))
    temp_dir = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: unix socket paths
    port = _free_port()
    common = ["--num-cpus", "1", "--object-store-memory", "80000000", "--disable-usage-stats",
              "--node-ip-address", "127.0.0.1"]
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--temp-dir",
                        temp_dir, "--include-dashboard", "false", "--resources",
                        '{"node_a": 1, "timing:local": 1}', *common],
                       env=_env(), check=True, capture_output=True, timeout=120)
        subprocess.run([ray_cli, "start", "--address", f"127.0.0.1:{port}", "--resources",
                        '{"node_b": 1}', *common],
                       env=_env(), check=True, capture_output=True, timeout=120)

        def worker_raylet() -> Any:
            for p in _ours(temp_dir):
                try:
                    if any("static_resource_list=node_b" in a for a in p.cmdline()):
                        return p
                except psutil.Error:
                    continue
            return None

        yield SimpleNamespace(address=f"127.0.0.1:{port}", temp_dir=temp_dir,
                              worker_raylet=worker_raylet)
    finally:
        _kill(_ours(temp_dir))
        left = _ours(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"stray Ray processes: {[p.pid for p in left]}"


def _complete(out: Path, state: str = "COMPLETE") -> dict[int, Any]:
    """Trials in OUT/study.db in one state, read the way a second process would."""
    import optuna

    if not (out / "study.db").is_file():
        return {}
    try:
        study = optuna.load_study(study_name=TARGET, storage=f"sqlite:///{out / 'study.db'}")
    except (KeyError, Exception):  # not created yet, or the database is being written
        return {}
    return {t.number: t for t in study.get_trials()
            if t.state == getattr(optuna.trial.TrialState, state)}


def _search_cmd(out: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgekit", "search", "cnn", "-t", TARGET, "-o", str(out),
            "--trials", "6", "--epochs", "1", "--runs", "20", "--space", "threads=1",
            "--address", address, *extra]


def _wait_for(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_node_search_survives_a_lost_node_and_a_killed_run(cluster, tmp_path):
    out = tmp_path / "search"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(_search_cmd(out, cluster.address), env=_env(), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        def both_nodes_built() -> bool:
            nodes = {tuple(t.user_attrs["build_node"]["node_resources"])
                     for t in _complete(out).values()}
            return len(nodes) >= 2 or driver.poll() is not None
        _wait_for(both_nodes_built, 240, "trials built on both nodes")
        before = {n: (t.values, t.user_attrs["build_node"]) for n, t in _complete(out).items()}
        assert before, (tmp_path / "driver.log").read_text()[-3000:]
        raylet = cluster.worker_raylet()
        assert raylet is not None and driver.poll() is None, \
            "the search ended before the worker node could be killed"
        _kill([raylet, *raylet.children(recursive=True)])  # the worker node is lost
        _wait_for(lambda: len(_complete(out)) > len(before) or driver.poll() is not None,
                  240, "a trial finished after the worker node was lost")
        assert driver.poll() is None, "the search ended before it could be killed"
        after_loss = len(_complete(out))
        driver.send_signal(signal.SIGKILL)  # the search itself is killed mid-run
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    mid = _complete(out)
    in_flight = set(_complete(out, "RUNNING"))  # asked but not told when the search was killed
    assert len(mid) >= after_loss > len(before)  # the search went on without the worker
    for n, (values, node) in before.items():  # nothing completed was lost
        assert mid[n].values == values and mid[n].user_attrs["build_node"] == node

    resumed = subprocess.run(_search_cmd(out, cluster.address, "--json"), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.startswith("{"), (resumed.stdout[:2000], resumed.stderr[-2000:])
    report = json.loads(resumed.stdout)
    t = report["targets"][TARGET]
    assert t["complete"] == 6 and t["chosen"] is not None and t["verified"] is True
    within = [r for r in t["trials"] if r["state"] == "complete" and r["drop"] <= 1.0]
    if len(within) >= 2:  # the points within the budget were timed again, side by side
        fastest = sorted(within, key=lambda r: (r["latency_ms"], r["trial"]))[:8]
        assert t["retimed"]["trials"] == sorted(r["trial"] for r in fastest)
        chosen = next(r for r in within if r["trial"] == t["chosen"])
        assert chosen["retimed_ms"] == min(r["retimed_ms"] for r in within
                                           if r["retimed_ms"] is not None)
    else:  # nothing to compare side by side: not timed again, the trial timing decides
        assert t["retimed"] is None and all(r["retimed_ms"] is None for r in t["trials"])
    done = [r for r in t["trials"] if r["state"] == "complete"]
    for n, (values, _node) in before.items():
        assert next(r for r in done if r["trial"] == n)["latency_ms"] == values[0]
    builders = {tuple(r["build_node"]["node_resources"]) for r in done}
    assert ("node_a", "timing:local") in builders and ("node_b",) in builders, builders
    for r in done:  # latency trials ran only on the node with the timing resource
        assert r["time_node"]["node_resources"] == ["node_a", "timing:local"]
        assert r["time_node"]["assigned"].get("timing:local") == 1.0
        assert "timing:local" not in r["build_node"]["assigned"]
    failed = [r for r in t["trials"] if r["state"] == "fail"]
    assert all(r["error"] for r in failed)
    for n in in_flight:  # in flight at the kill: marked interrupted, its point asked again
        assert "interrupted" in next(r for r in failed if r["trial"] == n)["error"]
    assert (out / "best" / TARGET / "manifest.json").is_file()
    assert (out / "search.md").is_file() and (out / "search.json").is_file()

    # the same study under a budget no point meets: the front is still reported, exit 1
    short = subprocess.run(_search_cmd(out, cluster.address, "--max-latency", "0.000001"),
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert short.returncode == 1, short.stderr[-3000:]
    assert "no point meets the budget" in short.stderr and "the closest is trial" in short.stderr
    again = json.loads((out / "search.json").read_text())["targets"][TARGET]
    assert again["complete"] == 6 and again["pareto"] and again["closest"] is not None
    assert not (out / "best" / TARGET).exists()


@pytest.mark.slow
def test_sweep_on_the_cluster_resumes_from_its_results(cluster, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "cnn"\ntargets = ["{TARGET}"]\nepochs = 0\n')
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "edgekit", "sweep", str(recipe), "-o", str(out), "--grid",
           "quantization.method=minmax,entropy", "--runs", "20", "--address",
           cluster.address, "--json"]
    first = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads(first.stdout)["combinations"]
    assert [r["values"]["quantization.method"] for r in rows] == ["minmax", "entropy"]
    for r in rows:
        t = r["targets"][TARGET]
        assert t["latency_ms"] > 0 and t["size_bytes"] > 0 and 0 <= t["accuracy"] <= 100
        assert "timing:local" in t["time_node"]["node_resources"]
    lines = (out / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 2
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    assert (out / "sweep.jsonl").read_text().splitlines() == lines  # nothing rebuilt
    assert json.loads(second.stdout)["combinations"] == rows
    assert "| quantization.method=entropy | x86-onnxruntime-int8 |" in \
        (out / "sweep.md").read_text()


@pytest.mark.slow
def test_embedded_ray_search_through_the_python_api(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed (edgekit[distributed])")
    pytest.importorskip("optuna", reason="optuna is not installed (edgekit[distributed])")
    import psutil

    import edgekit

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    out = tmp_path / "s"
    kwargs: dict[str, Any] = dict(targets=[TARGET], out_dir=out, trials=2, epochs=1, runs=20,
                                  space={"threads": [1], "prune_ratio": "0..0.3"},
                                  max_drop=100.0, progress=False)
    report = edgekit.search("cnn", **kwargs)  # no address: Ray embedded on this machine
    t = report["targets"][TARGET]
    assert t["complete"] == 2 and t["verified"] is True
    done = [r for r in t["trials"] if r["state"] == "complete"]
    # the budget admits every point here: all are timed again side by side, and the fastest
    # of those timings is chosen
    assert all(r["retimed_ms"] is not None for r in done)
    fastest = min(done, key=lambda r: r["retimed_ms"])
    assert t["chosen"] == fastest["trial"]
    first = min(done, key=lambda r: r["trial"])
    assert first["point"]["prune_ratio"] == 0.0  # the default build is asked first
    for r in done:
        assert 0 <= r["point"]["prune_ratio"] <= 0.3 and r["point"]["threads"] == 1
        assert "timing:local" in r["time_node"]["node_resources"]
    # run again: the study is complete, nothing is rebuilt, the same trials are reported
    again = edgekit.search("cnn", **kwargs)["targets"][TARGET]
    assert [(r["trial"], r["latency_ms"]) for r in again["trials"]] == \
        [(r["trial"], r["latency_ms"]) for r in t["trials"]]
    assert sorted(p.name for p in (out / "trials" / TARGET).iterdir()) == ["0000", "0001"]
    # the embedded Ray is gone with the search
    time.sleep(2)
    left = [c for c in psutil.Process().children(recursive=True)
            if "ray" in " ".join(c.cmdline())]
    assert not left, [c.cmdline()[:2] for c in left]


@pytest.mark.slow
def test_cli_search_of_a_user_model_with_its_data(tmp_path, user_model):
    """``edgekit search module:factory --data``: Ray's workers rebuild the user's model from
    its folder, prune it on the user's data and score it there; the chosen point's bundle is
    verified and named after the factory."""
    pytest.importorskip("ray", reason="ray is not installed (edgekit[distributed])")
    pytest.importorskip("optuna", reason="optuna is not installed (edgekit[distributed])")
    out = tmp_path / "s"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "edgekit", "search", "digitsnet:build", "--input-shape",
           "1x1x8x8", "--data", "train.npz", "--val-data", "val.npz", "-t", TARGET,
           "--trials", "2", "--space", "threads=1", "--space", "prune_ratio=0.2..0.4",
           "--runs", "20", "--max-drop", "100", "-o", str(out), "--json", "--quiet"]
    run = subprocess.run(cmd, cwd=user_model, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    t = report["targets"][TARGET]
    assert report["model"] == "digitsnet:build" and t["complete"] == 2 and t["verified"]
    done = [r for r in t["trials"] if r["state"] == "complete"]
    assert any(r["point"]["prune_ratio"] >= 0.2 for r in done)
    assert all(r["accuracy"] > 50 for r in done)  # scored on val.npz, pruned and fine-tuned
    manifest = json.loads((out / "best" / TARGET / "manifest.json").read_text())
    assert manifest["name"] == "build"
    assert manifest["recipe"]["search_point"] == next(
        r["point"] for r in done if r["trial"] == t["chosen"])


def test_a_study_file_opened_by_two_processes_at_once_is_retried(tmp_path, monkeypatch):
    # a second process (a report, the test's own reader) opening the new file while the
    # search writes its schema version makes one of them fail on the version row
    optuna = pytest.importorskip("optuna", reason="optuna is not installed")
    from sqlalchemy.exc import IntegrityError

    from edgekit.search import study as st

    calls = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise IntegrityError("INSERT INTO alembic_version", {}, Exception(
                    "UNIQUE constraint failed: alembic_version.version_num"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    study = st.open_study(tmp_path, "t", higher_is_better=True)
    assert len(calls) == 2 and study.study_name == "t" and st.in_db(tmp_path) == ["t"]
    calls.clear()
    monkeypatch.setattr(st, "STORAGE_TRIES", 1)  # no retry left: the error is the runtime's
    with pytest.raises(IntegrityError):
        st.open_study(tmp_path, "t", higher_is_better=True)
