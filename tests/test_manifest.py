"""The typed manifest: one schema check, a byte-identical round trip, stage records in order."""

import copy
import json

import pytest
import torch

from edgekit.bundle import load_bundle, write_json
from edgekit.errors import BundleError
from edgekit.manifest import STAGE_KINDS, Manifest, StageRecord, add_stage
from edgekit.pipeline import compress

from conftest import tiny_net

ORT = "x86-onnxruntime-fp32"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("m") / "b"
    compress(tiny_net(), torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
             targets=[ORT], out_dir=root, progress=False,
             history=[{"stage": "train", "task": "t", "epochs": 1, "seconds": 3.2}])
    return root


def test_round_trip_of_a_real_bundle_is_byte_identical(built, tmp_path):
    text = (built / "manifest.json").read_bytes()
    manifest = Manifest.from_json(json.loads(text), built / "manifest.json")
    write_json(tmp_path / "again.json", manifest)
    assert (tmp_path / "again.json").read_bytes() == text
    bundle = load_bundle(built)
    entry = bundle.manifest.targets[ORT]
    assert entry.backend == "onnxruntime" and entry.precision == "fp32"
    assert entry.threads == 2 and entry.max_abs_diff < 1e-4
    assert entry.size_bytes == sum((built / f.path).stat().st_size for f in entry.files)
    assert bundle.manifest.model.input_names == ["input"]
    assert bundle.manifest.listed_paths() == {"manifest.json", "reference.npz",
                                              *(f.path for f in entry.files)}


def test_unknown_keys_survive_the_round_trip(built):
    data = json.loads((built / "manifest.json").read_text())
    data["future"] = {"x": 1}
    data["targets"][ORT]["note"] = "kept"
    data["targets"][ORT]["files"][0]["role"] = "main"
    assert Manifest.from_json(copy.deepcopy(data), "m.json").to_json() == data


def test_stages_are_recorded_in_order(built):
    m = load_bundle(built).manifest
    assert [h.kind for h in m.history] == ["train", "export", "verify"]
    assert m.history[0].data == {"task": "t", "epochs": 1}  # timings never enter
    assert m.stages("verify")[0].data["passed"] is True
    m.add_stage("quantize", target="t", backend="onnxruntime")
    assert m.history[-1].to_json() == {"stage": "quantize", "target": "t",
                                       "backend": "onnxruntime"}
    history: list[StageRecord] = []
    for kind in STAGE_KINDS:
        add_stage(history, kind, n=len(history))
    assert [(h.kind, h.data["n"]) for h in history] == list(zip(STAGE_KINDS, range(5), strict=True))
    with pytest.raises(ValueError, match="unknown stage 'deploy'"):
        add_stage(history, "deploy")


def _set(path, value):
    def mutate(m):
        *head, last = path
        for key in head:
            m = m[key]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value
    return mutate


T = ("targets", ORT)
VIOLATIONS = {
    "top level": ([], [1, 2], "the top level must be an object"),
    "schema_version": (["schema_version"], 2, "schema_version 2"),
    "name missing": (["name"], KeyError, "missing key 'name'"),
    "targets missing": (["targets"], KeyError, "missing key 'targets'"),
    "name type": (["name"], 3, "'name' must be a string"),
    "target type": ([*T], [], f"target '{ORT}' must be an object"),
    "backend missing": ([*T, "backend"], KeyError, f"target '{ORT}' lacks 'backend'"),
    "precision type": ([*T, "precision"], 8, f"target '{ORT}': 'precision' must be a string"),
    "files empty": ([*T, "files"], [], "'files' must be a non-empty list"),
    "file path": ([*T, "files", 0, "path"], "../x", "unsafe or incomplete file entry"),
    "file sha": ([*T, "files", 0, "sha256"], "", "incomplete file entry"),
    "inputs": ([*T, "inputs", 0, "shape"], [1, "2"], "'inputs' must be a list of"),
    "outputs": ([*T, "outputs"], {}, "'outputs' must be a list of"),
    "profile": ([*T, "profile"], [], "'profile' must be an object"),
    "verification": ([*T, "verification"], "ok", "'verification' must be an object"),
    "model": (["model"], [], "'model' must be an object"),
    "model inputs": (["model", "inputs"], [{"name": 1}], "'model': 'inputs' must be a list"),
    "reference": (["reference"], {"path": "/etc/passwd", "sha256": "0"}, "unsafe"),
    "history": (["history"], {}, "'history' must be a list"),
    "history record": (["history", 0], {"target": "t"}, "'stage' string"),
    "recipe": (["recipe"], "r", "'recipe' must be an object"),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_every_violation_names_the_file_and_the_key(case, built, tmp_path):
    path, value, needle = VIOLATIONS[case]
    data = json.loads((built / "manifest.json").read_text())
    data = value if not path else data
    if path:
        _set(path, value)(data)
    with pytest.raises(BundleError, match="m.json") as err:
        Manifest.from_json(data, tmp_path / "m.json")
    assert needle in str(err.value)
    # load_bundle checks through the same code
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as err:
        load_bundle(tmp_path)
    assert needle in str(err.value) and "manifest.json" in str(err.value)


def test_compress_refuses_history_without_stage(tmp_path):
    from edgekit.errors import UsageError

    with pytest.raises(UsageError, match="'stage' string"):
        compress(tiny_net(), torch.rand(1, 1, 8, 8), targets=[ORT], out_dir=tmp_path / "b",
                 progress=False, history=[{"ratio": 0.5}])
    assert not (tmp_path / "b").exists()
