"""Recovery (fine-tuning with distillation, iterative steps) and latency-targeted pruning."""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.errors import ConfigError, UsageError
from edgekit.models import build, get_spec
from edgekit.prune import measure_latency, prune, prune_and_fine_tune, prune_to_latency, replay
from edgekit.train import evaluate, fit


@pytest.fixture(scope="module")
def trained_cnn():
    spec = get_spec("cnn")
    task = spec.task()
    model = build("cnn")
    fit(model, task, epochs=3, progress=False)
    return model, task


@pytest.mark.slow
def test_iterative_prune_and_distill(trained_cnn, capsys):
    model, task = trained_cnn
    model = copy.deepcopy(model)
    before = evaluate(model, task.test, task)
    x = get_spec("cnn").example_inputs(1)
    res, report = prune_and_fine_tune(model, x, task, ratio=0.5, steps=2, epochs_per_step=1,
                                      final_epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "prune step 1/2" in err and "prune step 2/2" in err and "fine-tune step 2/2" in err
    assert report["before"] == pytest.approx(before)
    assert len(report["steps"]) == 2
    assert report["after_fine_tune"] == pytest.approx(evaluate(model, task.test, task))
    assert report["after_fine_tune"] > 80  # a 3-epoch cnn is ~95%; recovery keeps it working
    # two steps of 1 - sqrt(0.5) each reach about the widths one step of 0.5 gives (16, 32);
    # each step rounds its channel count down separately
    assert 14 <= model.conv.out_channels <= 18 and 28 <= model.fc.out_features <= 36
    fresh = replay(get_spec("cnn").factory(), res.history)
    fresh.load_state_dict(model.state_dict())
    xs = get_spec("cnn").example_inputs(4)
    torch.testing.assert_close(fresh(*xs), model(*xs), rtol=0, atol=0)


def test_prune_and_fine_tune_rejects_bad_targets():
    model, task = build("cnn"), get_spec("cnn").task()
    x = get_spec("cnn").example_inputs(1)
    with pytest.raises(UsageError):
        prune_and_fine_tune(copy.deepcopy(model), x, task, ratio=1.0)
    with pytest.raises(UsageError):
        prune_and_fine_tune(copy.deepcopy(model), x, task, ratio=0.5, steps=0)


@pytest.mark.slow
def test_latency_goal_not_met_says_best_reached():
    model = build("cnn")
    x = get_spec("cnn").example_inputs(1)
    assert measure_latency(model, x, "x86-onnxruntime-fp32", runs=5, warmup=1) > 0
    with pytest.raises(ConfigError, match=r"best reached was [0-9.]+ ms"):
        prune_to_latency(model, x, latency_ms=1e-6, max_steps=1, runs=5, progress=False)


@pytest.mark.slow
def test_latency_goal_already_met_prunes_nothing():
    model = build("cnn")
    x = get_spec("cnn").example_inputs(1)
    res, report = prune_to_latency(model, x, latency_ms=1e6, runs=5, progress=False)
    assert res.history["groups"] == [] and res.macs_after == res.macs_before
    assert len(report["latency_ms"]) == 1
    with pytest.raises(UsageError):
        prune_to_latency(model, x, latency_ms=0)


def test_unreachable_macs_target_in_steps_is_config_error():
    model = build("cnn")
    with pytest.raises(ConfigError, match="most reached"):
        prune(model, get_spec("cnn").example_inputs(1), macs_reduction=0.995)
