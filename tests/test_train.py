"""edgekit.train: fit, evaluate, determinism, best-weight restore, hooks and distillation."""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.data import get_task
from edgekit.models import build, get_spec
from edgekit.train import distillation_loss, evaluate, fit, predict


def _small(task, n=256):
    task = copy.copy(task)
    task.train = task.train.subset(n)
    return task


def test_evaluate_untrained_cnn_is_near_chance_and_matches_predict():
    torch.manual_seed(0)
    model = build("cnn")
    task = get_task("digits8")
    acc = evaluate(model, task.test, task)
    assert 0.0 <= acc <= 40.0
    (logits,) = predict(model, task.test, batch_size=7)
    assert logits.shape == (360, 10)
    assert task.score([logits], task.test.targets.numpy(), []) == acc


def test_fit_is_deterministic_and_restores_best():
    task = _small(get_task("digits8"))
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build("cnn")
        h = fit(model, task, epochs=3, seed=5, progress=False)
        runs.append((h, evaluate(model, task.val, task), model.state_dict()))
    (h1, v1, s1), (h2, v2, s2) = runs
    assert h1["loss"] == h2["loss"] and h1["val"] == h2["val"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert len(h1["loss"]) == 3 and h1["metric"] == "top1"
    assert h1["best_val"] == max(h1["val"]) == v1
    assert h1["val"][h1["best_epoch"]] == h1["best_val"]
    assert h1["loss"][-1] < h1["loss"][0]


def test_fit_progress_bar_goes_to_stderr(capsys):
    task = _small(get_task("digits8"), 64)
    fit(build("cnn"), task, epochs=1, progress=True)
    cap = capsys.readouterr()
    assert cap.out == ""
    fit(build("cnn"), task, epochs=1, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_cnn_reaches_90_percent():
    torch.manual_seed(0)
    model = build("cnn")
    task = get_task("digits8")
    fit(model, task, epochs=8, progress=False)
    assert evaluate(model, task.test, task) > 90.0


def test_spec_fit_hook_takes_precedence():
    calls = []

    def hook(model, task, **kw):
        calls.append(kw)
        return {"hooked": True}

    spec = get_spec("cnn")
    from dataclasses import replace

    hooked = replace(spec, fit=hook)
    out = fit(build("cnn"), get_task("digits8"), spec=hooked, progress=False, seed=3)
    assert out == {"hooked": True}
    assert calls[0]["epochs"] == spec.default_epochs and calls[0]["seed"] == 3


def test_gan_uses_its_adversarial_hook():
    torch.manual_seed(0)
    model = build("gan")
    task = _small(get_task("gan"), 128)
    before = evaluate(model, task.val, task)
    h = fit(model, task, epochs=2, progress=False)
    assert len(h["val"]) == 2 and h["metric"] == "chamfer_mse"
    assert h["best_val"] == min(h["val"]) < before
    assert not model.training


def test_generic_fit_works_without_spec():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    task = _small(get_task("digits8"))
    h = fit(model, task, epochs=4, lr=0.05, progress=False)
    assert len(h["loss"]) == 4 and h["best_val"] > 50


def test_distillation_loss():
    task = get_task("digits8")
    logits = torch.randn(4, 10)
    assert float(distillation_loss(logits, logits, task)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, -logits, task)) > 0.1
    vae = get_task("vae")
    a = (torch.zeros(2, 1, 8, 8), torch.zeros(2, 8))
    b = (torch.ones(2, 1, 8, 8), torch.zeros(2, 8))
    assert float(distillation_loss(a, b, vae)) == pytest.approx(1.0)


def test_fit_with_teacher_moves_student_towards_teacher():
    task = get_task("digits8")
    torch.manual_seed(0)
    teacher = build("cnn")
    fit(teacher, task, epochs=3, progress=False)
    torch.manual_seed(1)
    student = build("cnn")
    # distill_weight=1: the labels are never used, only the teacher's soft outputs
    h = fit(student, task, epochs=3, progress=False, teacher=teacher, distill_weight=1.0)
    assert h["best_val"] > 60
    agree = (predict(student, task.val)[0].argmax(1) == predict(teacher, task.val)[0].argmax(1))
    assert agree.mean() > 0.7
