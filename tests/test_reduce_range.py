"""7-bit ONNX Runtime weights where its uint8 x int8 kernels saturate (x86-64 without VNNI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.backends.x86_saturation import cpu_flags, u8s8_saturates
from edgekit.quantize import QuantConfig

SATURATES, WHY = u8s8_saturates()


def test_the_decision_follows_the_machine_and_its_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") is None
    assert u8s8_saturates("x86_64", {"avx2"})[0] is True
    assert "without VNNI (AVX2)" in u8s8_saturates("x86_64", {"avx2"})[1]
    assert u8s8_saturates("x86_64", {"avx2", "avx512f", "avx512_vnni"})[0] is False
    assert u8s8_saturates("AMD64", {"avx2", "avx_vnni"})[0] is False
    assert u8s8_saturates("aarch64", {"asimd"})[0] is False


def _weight_ints(path) -> list[np.ndarray]:
    """The int8 weights of the file's weight DequantizeLinear nodes."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in proto.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.INT8]


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    from test_ranges import _data, _spiky

    from edgekit.backends import get_backend

    torch.set_num_threads(1)
    be = get_backend("onnxruntime")
    model, cal = _spiky(), _data(16, 0)
    ex = (torch.from_numpy(cal[0][0]),)
    root = tmp_path_factory.mktemp("reduce")
    fp32 = be.export(model, ex, root / "fp32", input_names=["x"], output_names=["y"], options={})

    def build(**config):
        art = be.quantize(model, ex, root / "-".join(f"{k}{v}" for k, v in config.items()),
                          input_names=["x"], output_names=["y"], options={}, calibration=cal,
                          config=QuantConfig(latency_check=False, **config), fp32=fp32)
        return art, be.load(art, threads=1, options={})

    return model, build


def test_reduced_weights_are_7bit_in_the_file_and_recorded(spiky):
    _model, build = spiky
    on, _ = build(reduce_range="on")
    off, _ = build(reduce_range="off")
    assert max(int(np.abs(w).max()) for w in _weight_ints(on.path)) <= 64
    assert max(int(np.abs(w).max()) for w in _weight_ints(off.path)) == 127
    assert on.info["quantization"]["reduce_range"]["applied"] is True
    assert off.info["quantization"]["reduce_range"] == {"applied": False, "setting": "off",
                                                        "machine": WHY}
    auto, _ = build()
    assert auto.info["quantization"]["reduce_range"]["applied"] is SATURATES
    adaround, _ = build(adaround=True, adaround_iterations=5)
    # bias correction and adaround target whichever grid the file gets
    assert adaround.info["quantization"]["reduce_range"]["applied"] is SATURATES


@pytest.mark.skipif(not SATURATES, reason=f"this CPU's int8 kernels do not saturate ({WHY})")
def test_where_kernels_saturate_seven_bits_keep_the_accuracy(spiky):
    from test_ranges import _sqnr

    model, build = spiky
    _, on = build(range_method="auto", reduce_range="on")
    _, off = build(range_method="auto", reduce_range="off")
    assert _sqnr(model, on) >= _sqnr(model, off) + 6.0, (_sqnr(model, on), _sqnr(model, off))
