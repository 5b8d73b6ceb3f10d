"""``edgekit prune``: zoo model -> pruned, fine-tuned, exported bundle."""

from __future__ import annotations

import json

import pytest
import torch

from edgekit.cli import main
from edgekit.models import get_spec
from edgekit.prune import replay


@pytest.mark.slow
def test_cli_prune_builds_a_bundle_with_history(tmp_path, capsys):
    out = tmp_path / "cnn"
    rc = main(["prune", "cnn", "-t", "x86-onnxruntime-fp32", "-o", str(out), "--ratio", "0.5",
               "--epochs", "1", "--fine-tune-epochs", "1", "--round-to", "8", "--json", "-q"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["macs"][1] < 0.5 * summary["macs"][0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["prune"]["ratio"] == 0.5
    rec = next(h for h in manifest["history"] if h["stage"] == "prune")
    assert rec["pruning"]["round_to"] == 8 and rec["macs_after"] == summary["macs"][1]
    model = replay(get_spec("cnn").factory(), [rec])
    assert model.conv.out_channels == 16
    assert manifest["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    model(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("args,msg", [
    (["--ratio", "1.5"], "strictly between 0 and 1"),
    (["--ratio", "0"], "strictly between 0 and 1"),
])
def test_cli_prune_bad_ratio(tmp_path, capsys, args, msg):
    rc = main(["prune", "cnn", "-t", "x86-onnxruntime-fp32", "-o", str(tmp_path / "b"),
               "--no-train", "--fine-tune-epochs", "0", "-q", *args])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_cli_prune_needs_a_goal(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "cnn", "-t", "x86-onnxruntime-fp32", "-o", str(tmp_path / "b")])
    assert exc.value.code == 2


@pytest.mark.slow
def test_recipe_prune_table(tmp_path):
    from edgekit.recipe import build_recipe, load_recipe

    path = tmp_path / "r.toml"
    path.write_text('model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\nepochs = 1\n\n'
                    '[prune]\nratio = 0.5\nfine_tune_epochs = 1\nround_to = 8\n')
    build_recipe(load_recipe(path), tmp_path / "out", cache=False, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["recipe"]["prune"]["ratio"] == 0.5
    rec = next(h for h in manifest["history"] if h["stage"] == "prune")
    assert replay(get_spec("cnn").factory(), [rec]).conv.out_channels == 16


@pytest.mark.parametrize("table,msg", [
    ("ratio = 1.5", "strictly between 0 and 1"),
    ("", "needs exactly one of"),
    ("ratio = 0.5\nmacs_reduction = 0.5", "needs exactly one of"),
    ("ratio = 0.5\nimportance = 'l7'", "importance 'l7'"),
    ("ratio = 0.5\nbogus = 1", "unknown key 'bogus'"),
    ("ratio = 0.5\nsteps = 0", "steps = 0"),
    ("ratio = 0.5\nattention = 'rows'", "attention 'rows' is not one of"),
])
def test_recipe_prune_table_errors(tmp_path, table, msg):
    from edgekit.errors import ConfigError
    from edgekit.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(f'model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\n\n[prune]\n{table}\n')
    with pytest.raises(ConfigError, match=msg):
        load_recipe(path)


_USER_MODULE = '''
from pathlib import Path

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(h.mean((2, 3)))


def build():
    net = Net()
    weights = Path(__file__).with_name("net_weights.pt")
    if weights.exists():
        net.load_state_dict(torch.load(weights))
    return net.eval()
'''


def _user_data(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 3, 8, 8)).astype("float32")
    x[np.arange(n), y] += 1.5  # the class brightens one colour channel
    return x, y


def _user_model(tmp_path, monkeypatch, name: str):
    """A user's trained model as module:factory, and train / val .npz files."""
    import importlib
    import sys

    import numpy as np

    (tmp_path / f"{name}.py").write_text(_USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    xt, yt = _user_data(240, 0)
    xv, yv = _user_data(90, 1)
    np.savez(tmp_path / "train.npz", x=xt, y=yt)
    np.savez(tmp_path / "val.npz", x=xv, y=yv)
    mod = importlib.import_module(name)
    torch.manual_seed(0)
    net = mod.Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):  # the user's own training
        opt.zero_grad()
        nn_loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(xt)),
                                                    torch.from_numpy(yt))
        nn_loss.backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "net_weights.pt")
    sys.modules.pop(name, None)
    return mod


@pytest.mark.slow
def test_cli_prunes_a_users_model_with_distillation_on_their_data(tmp_path, monkeypatch,
                                                                   capsys):
    mod = _user_model(tmp_path, monkeypatch, "userkit_net")
    out = tmp_path / "out"
    rc = main(["prune", "userkit_net:build", "--input-shape", "1x3x8x8", "--data", "train.npz",
               "--val-data", "val.npz", "--ratio", "0.5", "--fine-tune-epochs", "3",
               "-o", str(out), "--json", "-q"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metric"] == "top1" and summary["targets"] == ["x86-onnxruntime-fp32"]
    assert summary["before"] >= 90  # the user's trained model on their validation data
    assert summary["after_fine_tune"] >= summary["before"] - 5
    assert summary["macs"][1] < 0.4 * summary["macs"][0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["model"] == "userkit_net:build"
    assert manifest["recipe"]["prune"]["distill"] is True
    rec = next(h for h in manifest["history"] if h["stage"] == "prune")
    assert rec["test_after_fine_tune"] == round(summary["after_fine_tune"], 4)
    model = replay(mod.build(), [rec], (torch.zeros(1, 3, 8, 8),))
    assert model.conv.out_channels == 8 and model.conv2.out_channels == 8
    assert manifest["model"]["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("args,msg", [
    (["userkit_err:build", "--ratio", "0.5"], "needs --input-shape"),
    (["cnn", "--ratio", "0.5", "--data", "train.npz"], "--data is only for user models"),
    (["userkit_err:build", "--input-shape", "1x3x4x4", "--data", "train.npz", "--ratio", "0.5"],
     "'x' holds samples of shape \\(3, 8, 8\\), the model input is \\(3, 4, 4\\)"),
    (["userkit_err:build", "--input-shape", "1x3x8x8", "--ratio", "0.5",
      "--fine-tune-epochs", "2"], "needs --data to fine-tune on"),
])
def test_cli_user_model_errors(tmp_path, monkeypatch, capsys, args, msg):
    import re

    import numpy as np

    (tmp_path / "userkit_err.py").write_text(_USER_MODULE)
    monkeypatch.chdir(tmp_path)
    x, y = _user_data(20, 0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    rc = main(["prune", *args, "-o", str(tmp_path / "o"), "-q"])
    assert rc == 2
    assert re.search(msg, capsys.readouterr().err)
