"""What only ExecuTorch does: the ``.pte`` byte checks, and the precision and delegation read
from the program (the registry-wide promises are in test_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import check_model_file, get_backend
from edgekit.backends.executorch import check_pte_file
from edgekit.errors import BundleError
from edgekit.quantize.config import QuantConfig

BACKEND = get_backend("executorch")
pytestmark = pytest.mark.skipif(
    BACKEND.available() is not None,
    reason=f"{BACKEND.available()}: pip install -c constraints.txt 'edgekit[executorch]'")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    gen = torch.Generator().manual_seed(1)
    calibration = [[torch.rand(1, 3, 8, 8, generator=gen).numpy()] for _ in range(8)]
    x = (torch.from_numpy(calibration[0][0]),)
    names = {"input_names": ["x"], "output_names": ["y"], "options": {}}
    fp32 = BACKEND.export(model, x, tmp_path_factory.mktemp("fp32"), **names)
    int8 = BACKEND.quantize(model, x, tmp_path_factory.mktemp("int8"), **names,
                            calibration=calibration, config=QuantConfig())
    head = BACKEND.quantize(model, x, tmp_path_factory.mktemp("keep"), **names,
                            calibration=calibration, config=QuantConfig(), keep_float=["head"])
    return model, fp32, int8, head


def test_precision_and_delegation_are_read_from_the_program(built):
    _, fp32, int8, head = built
    f, q, h = (a.info["executes"] for a in (fp32, int8, head))
    assert set(f["delegates"]) == {"XnnpackBackend"} and f["xnnpack_nodes"] > 0
    # Ops XNNPACK does not take run on ExecuTorch's kernels, named as the program names them
    # (the mean over two axes, with executorch 1.5.1).
    assert all("::" in op and n > 0 for op, n in f["non_delegated_ops"].items())
    assert f["quantized_tensors"] == 0 and f["precision"] == "fp32"
    assert q["quantized_tensors"] > 0 and q["precision"] == "int8"
    # The head kept in float: fewer quantized tensors, more float ones, still int8 overall.
    assert 0 < h["quantized_tensors"] < q["quantized_tensors"]
    assert h["float_tensors"] > q["float_tensors"]
    assert int8.info["quantization"]["float_modules"] == []
    assert head.info["quantization"]["float_modules"] == ["head"]
    sess = BACKEND.load(int8, threads=1, options={})
    assert sess.info["precision"] == "int8" and sess.info["executes"] == q
    # Threads: what the pool really has, next to what was asked.
    assert sess.info["threads_requested"] == 1 and sess.info["threads"] >= 1


def test_a_lone_file_names_its_tensors_by_position(built):
    model, fp32, _, _ = built
    seen = BACKEND.inspect(fp32.path)
    assert [s.name for s in seen.inputs] == ["input_0"]
    assert [s.name for s in seen.outputs] == ["output_0"]
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    (y,) = BACKEND.load(seen, threads=1, options={}).run([x])
    with torch.no_grad():
        np.testing.assert_allclose(y, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_truncated_and_mislabelled_programs_are_refused(built, tmp_path: Path):
    data = built[1].path.read_bytes()
    assert data[4:8] == b"ET12"
    cut = tmp_path / "cut.pte"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="cut.pte"):
        check_pte_file(cut)
    renamed = tmp_path / "renamed.pte"
    renamed.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    with pytest.raises(BundleError, match="TFLite flatbuffer"):
        check_model_file(renamed)
    header = bytearray(data)
    header[16:24] = (len(data) * 4).to_bytes(8, "little")  # program size past the end
    lying = tmp_path / "lying.pte"
    lying.write_bytes(bytes(header))
    with pytest.raises(BundleError, match="extended header"):
        BACKEND.check_file(lying)


def test_int8_of_a_tiny_valued_model_keeps_its_signal(tmp_path: Path):
    # the XNNPACK quantizer's own config clamps scales at 2**-12: this model's logits (~1e-7)
    # came out constant at 0; edgekit floors scales far lower (backends/_pt2e_scales.py)
    import json

    from test_quant_robust import Tiny

    from edgekit.pipeline import compress

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(5)
    data = [torch.rand(1, 3, 16, 16, generator=g) for _ in range(24)]
    target = "x86-executorch-int8"
    compress(Tiny().eval(), (data[0],), targets=[target], out_dir=tmp_path / "b",
             progress=False, calibration=data,
             quantization={"latency_check": False, "fallback": False})
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"][target]
    out = entry["quantization"]["heldout_fidelity"]["outputs"][0]
    assert out["sqnr_db"] > 25 and out["centred_cosine"] > 0.99, out
    assert entry["quantization"]["source_choice"]["kept"] == "scale_floor=on"
    assert entry["artifact_info"]["quantization"]["scale_floor"]["observers_below_clamp"] >= 3
