"""Training recipes (optimizer, rate, warm-up, weight decay per model) and the trained-weights
cache key that follows them."""

import pytest
import torch

from edgekit.errors import ConfigError
from edgekit.models import build
from edgekit.train import DEFAULT_RECIPE, _schedule, training_fingerprint, training_recipe


class _Net(torch.nn.Module):
    DEFAULT_LR = 2e-3

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)


def test_recipe_precedence_and_validation():
    m = _Net()
    assert training_recipe(m) == {**DEFAULT_RECIPE, "lr": 2e-3}
    m.TRAIN_RECIPE = {"optimizer": "adamw", "lr": 5e-4, "warmup": 0.1}
    r = training_recipe(m, lr=None, batch_size=16)
    assert r["optimizer"] == "adamw" and r["lr"] == 5e-4 and r["warmup"] == 0.1
    assert r["batch_size"] == 16  # an argument wins over the model's recipe
    m.TRAIN_RECIPE = {"optimiser": "adam"}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optimiser'\]"):
        training_recipe(m)
    m.TRAIN_RECIPE = {"optimizer": "lamb"}
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        training_recipe(m)


def test_warmup_then_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _schedule(opt, total=100, warmup=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[:10] == sorted(lrs[:10])  # linear ramp up
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[-1] < 0.01


def test_adamw_skips_decay_on_biases_and_norms():
    from edgekit.train import _optimizer

    m = _Net()
    params = list(m.parameters())
    opt = _optimizer(params, m, {**DEFAULT_RECIPE, "optimizer": "adamw", "weight_decay": 0.05})
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [m.fc.weight.shape]
    assert len(plain["params"]) == 3  # fc.bias, norm.weight, norm.bias


def test_fingerprint_follows_the_recipe():
    m = _Net()
    a = training_fingerprint(m)
    m.TRAIN_RECIPE = {"lr": 1e-4}
    b = training_fingerprint(m)
    assert a["recipe"] != b["recipe"] and a["train_code"] == b["train_code"]
    assert len(a["train_code"]) == 16 and a["fit_hook"] is None
    gan = training_fingerprint(build("gan"))  # the GAN trains with its own loop
    assert gan["fit_hook"] is not None


def test_batch_norm_recalibration_replaces_lagging_running_stats():
    from edgekit.data.task import Split
    from edgekit.train import recalibrate_batch_norm

    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.1)
    model = torch.nn.Sequential(conv, bn)
    x = torch.randn(64, 1, 6, 6) * 3 + 1
    split = Split((x,), torch.zeros(64, dtype=torch.long))
    bn.running_mean.fill_(100.0)  # stale statistics of other weights
    model.eval()
    assert recalibrate_batch_norm(model, split, samples=64, batch_size=16) == 64
    with torch.no_grad():
        feats = conv(x)
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, feats.var(dim=(0, 2, 3)), rtol=0.05)
    assert bn.momentum == 0.1 and not model.training  # restored
    assert recalibrate_batch_norm(torch.nn.Linear(2, 2), split, 64) == 0


@pytest.mark.slow
def test_trained_cache_retrains_when_the_recipe_changes(monkeypatch, tmp_path):
    import edgekit.train
    from benchmarks import common

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_fit(model, task, **kw):
        calls.append(training_recipe(model))
        return {}

    monkeypatch.setattr(edgekit.train, "fit", fake_fit)
    common.trained("resnet8", epochs=1)
    common.trained("resnet8", epochs=1)
    assert len(calls) == 1  # cached
    cls = type(build("resnet8"))
    monkeypatch.setattr(cls, "TRAIN_RECIPE", {"optimizer": "sgd", "lr": 0.05}, raising=False)
    _, meta = common.trained("resnet8", epochs=1)
    assert len(calls) == 2 and calls[1]["optimizer"] == "sgd"
    assert meta["training"]["recipe"]["lr"] == 0.05
    assert len(list(tmp_path.glob("bench/resnet8-1e-*.pt"))) == 2
