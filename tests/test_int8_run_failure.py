"""An int8 file that its own runtime cannot run: the stacked-weight MatMul ONNX Runtime's
quantizer scales per channel along the summed axis, and the message a build gives for such a
file (the node, the runtime's reason, a hint about the file rather than the model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.backends import get_backend
from edgekit.backends._common import runtime_reason
from edgekit.errors import ModelRunError
from edgekit.quantize.build import int8_run_failure

pytest.importorskip("onnxruntime")


# ``torch.bmm`` with a parameter expanded over the batch: once ONNX Runtime's pre-processing
# folds the Expand, MatMul's second input is a 3-D constant
from test_op_corpus import Bmm as StackedWeight  # noqa: E402


def _fp32(tmp_path):
    model = StackedWeight().eval()
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    backend = get_backend("onnxruntime")
    art = backend.export(model, (x,), tmp_path / "fp32", input_names=["x"],
                         output_names=["y"], options={})
    return model, backend, art, [[torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(
        i)).numpy()] for i in range(8)]


def test_stacked_matmul_weight_is_quantized_per_tensor_and_runs(tmp_path):
    import onnx

    from edgekit.backends.onnxruntime_int8 import quantize_onnx
    from edgekit.quantize.config import QuantConfig

    model, backend, art, batches = _fp32(tmp_path)
    out = tmp_path / "int8.onnx"
    info = quantize_onnx(art.root / art.files[0], out, input_names=["x"], batches=batches,
                         config=QuantConfig(fallback=False))
    assert len(info["per_tensor_weights"]) == 1
    proto = onnx.load(str(out))
    name = info["per_tensor_weights"][0]
    # the stacked weight's DequantizeLinear has one scale, not one per slice
    deq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
           and n.input[0].startswith(name)]
    scales = {i.name: i for i in proto.graph.initializer}
    assert deq and all(len(scales[n.input[1]].dims) == 0 for n in deq)
    import onnxruntime as ort

    got = ort.InferenceSession(str(out)).run(None, {"x": batches[0][0]})[0]
    ref = model(torch.from_numpy(batches[0][0])).detach().numpy()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_an_int8_file_its_runtime_cannot_run_names_the_node_and_the_reason(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgekit.backends.onnxruntime_int8 import _preprocess

    _, backend, art, batches = _fp32(tmp_path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"x": b[0]} for b in batches)

        def get_next(self):
            return next(self.it, None)

    # ONNX Runtime's own flow on the folded model: per-channel along MatMul's axis 1
    src, _ = _preprocess(art.root / art.files[0], tmp_path / "pre.onnx", tmp_path)
    bad = tmp_path / "default_int8.onnx"
    quantize_static(str(src), str(bad), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    broken = backend.inspect(bad)
    broken.info["quantization"] = {"quantizer": "quantize_static (QDQ)"}
    sess = backend.load(broken, threads=1, options={})
    with pytest.raises(ModelRunError) as caught:
        sess.run(batches[0])
    err = int8_run_failure("x86-onnxruntime-int8", broken, caught.value)
    assert "quantize_static (QDQ) wrote fails to run in onnxruntime at node" in err.message
    assert "(QLinearMatMul)" in err.message
    assert err.message.endswith("weight zero point must be a scalar, 1D tensor of size 1, "
                                "or last to second dimension is 1")
    assert "export it again" not in str(err) and "keep_float" in (err.hint or "")


def test_runtime_reason_keeps_the_runtime_sentence():
    text = ("Non-zero status code returned while running QLinearMatMul node. Name:'n' Status "
            "Message: /src/x.cc:80 virtual Status Compute() const Ok(a) was false. Bad zero "
            "point")
    assert runtime_reason(text) == "Bad zero point"
    assert runtime_reason("plain message") == "plain message"
    assert len(runtime_reason("x" * 1000)) == 400
