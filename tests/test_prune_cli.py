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
])
def test_recipe_prune_table_errors(tmp_path, table, msg):
    from edgekit.errors import ConfigError
    from edgekit.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(f'model = "cnn"\ntargets = ["x86-onnxruntime-fp32"]\n\n[prune]\n{table}\n')
    with pytest.raises(ConfigError, match=msg):
        load_recipe(path)
