"""Every zoo model x every int8 target: PTQ builds, the file holds int8 weights and the artifact
runs on its runtime - or the build fails with an edgekit error naming the op / layer (the
table below says which combinations and why).

Untrained, seeded weights; batch-norm running statistics are reset on the calibration data
first (no training step: an untrained MobileNetV2's logits are ~1e-9, which quantizes to a
constant and says nothing about op support). 4 calibration samples, no task, no parity
limits (NaN or constant outputs still fail), no fallback, no latency check: this is about op
coverage, not accuracy or speed (~4 min on a loaded 2-core machine)."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.models import get_spec, list_models
from edgekit.pipeline import compress
from edgekit.profiles import Tolerance, load_profile

ORT, OV, TFL = "x86-onnxruntime-int8", "x86-openvino-int8", "arm64-tflite-int8"
TARGETS = (ORT, OV, TFL)
SAMPLES = 4

#: (model, target) -> (regex the edgekit error must match, naming the op / layer; why).
#: Empty: every zoo model quantizes on every runtime (measured). Add a row, with the reason,
#: when a combination genuinely cannot be quantized.
EXPECTED_FAILURES: dict[tuple[str, str], tuple[str, str]] = {}

#: No parity limits: untrained weights and 4 calibration samples say nothing about accuracy
#: (an untrained MobileNetV2 reaches cosine 0.63). NaN / constant outputs still fail the build
#: (edgekit.quantize.build.check_outputs_sane); accuracy is tested in test_quant_build.py.
LOOSE = Tolerance(max_abs=None, min_cosine=None, min_top1_agreement=None)
NO_GATE = {"min_centred_cosine": False, "min_sqnr_db": False, "min_top1_agreement": False}

#: Least fraction of the weight elements stored as 8-bit integers in the file.
MIN_INT8_FRACTION = 0.5

#: (model, target) -> (layer left in float, why): the artifact builds and runs, but that layer's
#: weights stay float (measured: 3% of lstm's weights are int8 on LiteRT, only the head).
FLOAT_LAYERS: dict[tuple[str, str], tuple[str, str]] = {
    ("lstm", TFL): ("lstm", "litert-torch's PT2E quantizer has no int8 LSTM: the recurrent "
                    "layer is converted in float, only the linear head is int8"),
}


def _model(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.factory()
    calib = spec.task().train
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batch below
        model.train()
        with torch.no_grad():
            model(*(t[:SAMPLES] for t in calib.inputs))
    return spec, model.eval(), calib


def _int8_fraction(target, folder):
    """Fraction of weight elements stored as int8/uint8, read from the file itself."""
    if target == ORT:
        import onnx

        proto = onnx.load(str(folder / "model.onnx"))
        sizes = {}
        for init in proto.graph.initializer:
            n = int(np.prod(init.dims)) if init.dims else 1
            sizes[init.data_type] = sizes.get(init.data_type, 0) + n
        q = sizes.get(onnx.TensorProto.INT8, 0) + sizes.get(onnx.TensorProto.UINT8, 0)
        f = sizes.get(onnx.TensorProto.FLOAT, 0)
    elif target == OV:
        xml = (folder / "model.xml").read_text()
        q = f = 0
        for etype, shape in re.findall(r'<data element_type="(\w+)" shape="([\d, ]*)"', xml):
            n = int(np.prod([int(d) for d in shape.split(",") if d.strip()]))
            if etype in ("i8", "u8"):
                q += n
            elif etype == "f32":
                f += n
    else:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(folder / "model.tflite"))
        q = f = 0
        for t in interp.get_tensor_details():
            if len(t["shape"]) < 2:
                continue
            try:  # constant tensors (weights) have their data in the file
                interp.get_tensor(t["index"])
            except ValueError:
                continue
            n = int(np.prod(t["shape"]))
            if np.dtype(t["dtype"]) == np.int8:
                q += n
            elif np.dtype(t["dtype"]) == np.float32:
                f += n
    return q / max(q + f, 1), q


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_int8(name, target, tmp_path):
    spec, model, calib = _model(name)
    inputs = spec.example_inputs(1)
    out = tmp_path / "b"

    def build():
        # Untrained weights: what is checked is that int8 builds, not its fidelity.
        profile = dataclasses.replace(load_profile(target), tolerance=LOOSE, gate=NO_GATE)
        return compress(model, inputs, targets=[profile], out_dir=out,
                        input_names=list(spec.input_names), output_names=list(spec.output_names),
                        calibration=calib,
                        quantization={"samples": SAMPLES, "fallback": False,
                                      "latency_check": False},
                        progress=False)

    if (name, target) in EXPECTED_FAILURES:
        pattern, _why = EXPECTED_FAILURES[(name, target)]
        with pytest.raises(EdgekitError, match=pattern):
            build()
        return
    bundle = build()
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["targets"][target]
    assert entry["precision"] == "int8"
    assert entry["runtime"]["precision"].startswith("int8")
    fraction, count = _int8_fraction(target, out / target)
    assert count > 0, (name, target)  # some weights are int8 in every artifact
    if (name, target) in FLOAT_LAYERS:
        assert fraction < MIN_INT8_FRACTION, ("now mostly int8: drop the FLOAT_LAYERS row",
                                              name, target, fraction)
    else:
        assert fraction >= MIN_INT8_FRACTION, (name, target, fraction, count)
    # the artifact runs on its runtime on the example inputs, shaped like the model's outputs
    session = bundle.load(target)
    got = session.run([t.numpy() for t in inputs])
    with torch.no_grad():
        ref = model(*inputs)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
    assert all(np.isfinite(g).all() for g in got)
