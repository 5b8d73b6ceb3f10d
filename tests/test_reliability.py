"""Reliability and security (issue 8): untrusted models and data, faults mid-run, nothing lost.

The cases live in tests/test_reliability_*.py by group (model files, data, pruning,
interrupts and disk, remote, property tests, packing, archives, ...); this file holds the
checks that span the whole table. Every test carries
``@pytest.mark.reliability(case=N, behaviour=...)``; ``scripts/reliability_table.py`` runs
them and writes the README table from the outcomes. Cases that need root (tmpfs mounts) or
sshd skip with the reason when those are missing.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from reliability_helpers import ROOT, needs_onnx, rel

# =========================================================================== extras


@rel(case="deps", behaviour="dependency floors avoid the known model-file advisories: onnx "
     ">= 1.21, torch >= 2.6 (weights_only) in pyproject.toml, and the pins in constraints.txt "
     "satisfy them")
def test_dependency_floors():
    import tomllib
    from packaging.version import Version

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values()
                                   for r in extra]

    def floor(pkg: str) -> list[Version]:
        return [Version(r.split(">=")[1].split(",")[0]) for r in reqs
                if r.startswith(pkg + ">=")]

    assert floor("torch") and min(floor("torch")) >= Version("2.6")
    assert floor("onnx") and min(floor("onnx")) >= Version("1.21")
    assert not any(r.split("[")[0] in ("onnx", "torch") for r in reqs)  # never unbounded
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert Version(pins["onnx"]) >= Version("1.21")
    assert Version(pins["torch"].split("+")[0]) >= Version("2.6")


@needs_onnx
@rel(case="paths", behaviour="manifests carry no machine paths; manifests and bench reports "
     "carry no home folders, user names or secrets from the environment")
def test_no_machine_paths_or_secrets_in_outputs(tmp_path, monkeypatch):
    import getpass

    from edgekit.bench.harness import bench
    from edgekit.pipeline import compress

    monkeypatch.setenv("EDGEKIT_TEST_TOKEN", "s3cr3t-t0ken-value")
    torch.manual_seed(0)
    bundle = compress(nn.Linear(4, 3).eval(), (torch.randn(1, 4),),
                      targets=["x86-onnxruntime-fp32"], out_dir=tmp_path / "b",
                      input_names=["x"], output_names=["y"], progress=False)
    text = (bundle.root / "manifest.json").read_text()
    report = bench(bundle.root, runs=2, warmup=0, data="none", memory=False,
                   out_dir=tmp_path / "rep", formats=("json",), progress=False)
    assert report["status"] == "complete"
    tmp_root = tempfile.gettempdir().rstrip(os.sep) + os.sep
    assert str(tmp_path) not in text and tmp_root not in text  # the shipped manifest
    for blob in (text, (tmp_path / "rep" / "bench.json").read_text()):
        assert "s3cr3t" not in blob and "EDGEKIT_TEST_TOKEN" not in blob
        assert str(Path.home()) + "/" not in blob
        assert f"/{getpass.getuser()}/" not in blob


@rel(case="all", behaviour="every numbered case of the table has at least one reliability "
                          "test (all tests/test_reliability*.py files)")
def test_every_case_has_a_test():
    import ast

    sys.path.insert(0, str(ROOT / "scripts"))
    from reliability_table import CASES

    cases = set()
    for path in sorted((ROOT / "tests").glob("test_reliability*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "rel"
                    or isinstance(node, ast.Call)
                    and getattr(node.func, "attr", "") == "reliability"):
                for kw in node.keywords:
                    if kw.arg == "case" and isinstance(kw.value, ast.Constant):
                        cases.add(kw.value.value)
    numbered = {c for c in CASES if isinstance(c, int)}
    assert numbered <= cases, sorted(numbered - cases)
