"""TFLite's 16x8 mode for LiteRT builds: int16 activations, int8 weights, int64 biases.

litert-torch converts a PT2E graph whose activation specs are int16 into a 16x8 file
(:func:`wide_qconfig`); the gaps filled here:

* Its converter writes int32 biases, while TFLite's 16x8 kernels are specified with int64:
  CONV_2D runs and returns wrong numbers, DEPTHWISE_CONV_2D refuses to prepare.
  :func:`widen_16x8_biases` rewrites the file with the biases of CONV_2D, DEPTHWISE_CONV_2D,
  TRANSPOSE_CONV and FULLY_CONNECTED as int64, and recomputes from the graph's float biases
  those the converter saturated at int32 (tiny activations: input x weight scale ~1e-11).
* A ReLU6 fused into a 16x8 op needs 6 / scale to fit int32: :func:`floor_bounded_outputs`.
* It has no int16 HARD_SWISH: each Hardswish is rewritten in the exported graph by its
  definition, in ops it has (:func:`~.pt2e_rewrites.split_hard_activations`).
* Ops the converter has no int16 form of and no rewrite here (concatenation): a ConfigError
  naming the op and the source line (:func:`unsupported_int16`).
* It does not mix int8 and int16 activations in one graph (a layer made 16-bit alone comes out
  with int8 input and int16 output, which TFLite refuses), so on LiteRT 16-bit activations are
  whole-model: ``activations_16bit = "all"``, or ``"auto"`` (:func:`choose_16x8`). A count or a
  list of layers (ONNX Runtime's per-layer choice) is refused with that reason.

XNNPACK has no 16x8 kernels: the file runs on TFLite's built-in int16 kernels, several times
slower than int8 with XNNPACK (MobileNetV2: 27-62x), which ``"auto"`` measures before it keeps
one.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._pt2e_scales import SCALE_FLOOR

if TYPE_CHECKING:
    from ..quantize.config import QuantConfig

__all__ = ["INT16_EPS", "choose_16x8", "floor_bounded_outputs", "graph_biases",
           "unsupported_int16", "wide_mode", "wide_qconfig", "widen_16x8_biases"]

#: The smallest scale of the int16 output of a bounded activation (ReLU6, hardtanh, clamp):
#: 2**-28, so that its bound in steps (6 / scale) fits the int32 TFLite computes it in (a
#: smaller scale fails to prepare: ``no_integer_overflow_from_quantization``). Other int16
#: activations are floored at :data:`~edgekit.backends._pt2e_scales.SCALE_FLOOR` only (the
#: quantizers' 2**-12 clamp would undo the 16-bit grid of any tensor spanning under 16).
INT16_EPS = 2.0 ** -28
#: PT2E ops TFLite fuses into the producing op as a bounded activation.
_BOUNDED = ("aten.hardtanh.default", "aten.hardtanh_.default", "aten.relu6.default",
            "aten.relu6_.default", "aten.clamp.default")


def floor_bounded_outputs(gm: torch.fx.GraphModule) -> list[str]:
    """Give the int16 outputs of bounded activations in an annotated graph the
    :data:`INT16_EPS` floor (where the output shares another tensor's spec, as a ReLU6
    shares its input's, that spec); return the nodes changed."""
    import dataclasses

    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    def floored(spec: Any) -> Any:
        return dataclasses.replace(
            spec, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=INT16_EPS))

    changed = []
    for node in gm.graph.nodes:
        if str(node.target) not in _BOUNDED:
            continue
        owner, key = node, None  # the spec's holder: a node's output, or an input edge
        for _ in range(8):
            ann = owner.meta.get("quantization_annotation")
            spec = getattr(ann, "output_qspec", None) if key is None \
                else ann.input_qspec_map.get(key) if ann is not None else None
            if not isinstance(spec, SharedQuantizationSpec):
                break
            ref = spec.edge_or_node
            owner, key = (ref, None) if isinstance(ref, torch.fx.Node) else (ref[1], ref[0])
        if spec is None or getattr(spec, "dtype", None) != torch.int16:
            continue
        if key is None:
            ann.output_qspec = floored(spec)
        else:
            ann.input_qspec_map[key] = floored(spec)
        changed.append(node.name)
    return changed


def wide_mode(config: QuantConfig, *, qat: bool) -> str:
    """What ``config.activations_16bit`` asks of a LiteRT build: ``"off"``, ``"all"`` or
    ``"auto"``. A count or a layer list: ConfigError (whole-model only here). QAT graphs
    carry their own 8-bit fake-quantizers: ``"off"`` (the manifest says why)."""
    from ..errors import ConfigError

    want = config.activations_16bit
    if want in (0, (), "off") or qat:
        return "off"
    if want in ("all", "auto"):
        return str(want)
    raise ConfigError(
        f"quantization activations_16bit = {want!r}: LiteRT's 16-bit activations are "
        "whole-model (TFLite's 16x8 mode; its converter does not mix int8 and int16 "
        "activations in one graph)",
        hint="use activations_16bit = 'all' (every activation 16-bit) or 'auto' (16x8 kept "
        "where the 8-bit outputs are under extra['sqnr_16bit_db'] and it runs within "
        "extra['max_16bit_slowdown']); a count or a list of layers applies to ONNX Runtime")


def unsupported_int16(exc: Exception) -> Exception | None:
    """A ConfigError for a 16x8 conversion that failed on an op litert-torch's converter has
    no int16 form of (``'tfl.concatenation' op operand #0 must be ...``), naming the op and
    the PyTorch source line; None for any other failure."""
    from ..errors import ConfigError

    text = str(exc)
    op = re.search(r"'tfl\.(\w+)' op (?:operand|result) #\d+ must be", text)
    if op is None:
        return None
    at = re.search(r"([^\s:]+\.py:\d+):\d+: error", text)
    where = at.group(1).rpartition("site-packages/")[2] if at else ""  # no machine paths
    if where.startswith(os.getcwd() + os.sep):
        where = where[len(os.getcwd()) + 1:]
    return ConfigError(
        f"LiteRT 16x8 (activations_16bit = 'all'): litert-torch's converter has no int16 "
        f"tfl.{op.group(1)}" + (f" (the op at {where})" if where else ""),
        hint="build 8-bit activations (activations_16bit = 0), or 'auto', which keeps the "
        "8-bit file where 16x8 does not build; ONNX Runtime takes 16-bit activations per layer")


def wide_qconfig(qconfig: Any) -> Any:
    """litert's quantizer config for TFLite's 16x8 mode: every activation int16, symmetric
    (zero point 0, ``-32767..32767``, as TFLite's int16 kernels require), set by min-max
    (litert's histogram observer searches an 8-bit grid) with scales floored at
    :data:`~edgekit.backends._pt2e_scales.SCALE_FLOOR` (bounded activations' outputs at
    :data:`INT16_EPS`: :func:`floor_bounded_outputs`); the fixed ranges of Logistic /
    Softmax outputs on TFLite's int16 grid (scale 1/32768, zero point 0); int8 weights
    unchanged."""
    import dataclasses

    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import (
        FixedQParamsQuantizationSpec,
        QuantizationSpec,
    )

    act = QuantizationSpec(dtype=torch.int16, quant_min=-32767, quant_max=32767,
                           qscheme=torch.per_tensor_symmetric,
                           observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=SCALE_FLOOR))
    fixed = FixedQParamsQuantizationSpec(dtype=torch.int16, scale=1 / 32768, zero_point=0,
                                         quant_min=-32768, quant_max=32767,
                                         qscheme=torch.per_tensor_affine)
    return dataclasses.replace(qconfig, input_activation=act, output_activation=act,
                               fixed_qparams=fixed)


#: TFLite ops whose 16x8 kernels take int64 biases (TFLite's quantization spec); with int32
#: biases from the converter the CONV_2D kernel runs and returns wrong numbers (a two-conv
#: model: -6.8 dB SQNR against fp32, 44.7 dB with the biases widened) and DEPTHWISE_CONV_2D
#: refuses to prepare. TRANSPOSE_CONV's bias is input 3, the others' input 2.
_INT64_BIAS_OPS = {"CONV_2D": (0, 2), "DEPTHWISE_CONV_2D": (0, 2), "TRANSPOSE_CONV": (2, 3),
                   "FULLY_CONNECTED": (0, 2)}


def widen_16x8_biases(path: Any, float_biases: Sequence[np.ndarray] = ()) -> list[str]:
    """Rewrite the .tflite file at ``path`` with the int32 biases of its 16x8 compute ops
    (int16 data) as int64; return the bias tensors changed.

    The converter saturates a bias that does not fit int32 (a bias of 0.1 over a scale of
    input x weight scale under ~5e-11: tiny activations); such a bias is recomputed from its
    float values, found among ``float_biases`` (the PT2E graph's) as the one of that length
    whose other entries the file holds. A saturated bias with no such match: a
    QuantizationError naming the op, as the file would compute wrong outputs."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fu

    path = Path(path)
    model = fu.read_model(str(path))
    names = {getattr(fb.BuiltinOperator, k): k for k in _INT64_BIAS_OPS}
    changed: list[str] = []
    for graph in model.subgraphs:
        for op in graph.operators:
            code = fu.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            if code not in names:
                continue
            data, bias = _INT64_BIAS_OPS[names[code]]
            ins = list(op.inputs)
            if len(ins) <= bias or ins[bias] < 0:
                continue
            x, b = graph.tensors[ins[data]], graph.tensors[ins[bias]]
            if x.type != fb.TensorType.INT16 or b.type != fb.TensorType.INT32:
                continue
            buf = model.buffers[b.buffer]
            name = b.name.decode() if isinstance(b.name, bytes) else str(b.name)
            values = np.frombuffer(bytes(bytearray(buf.data)), dtype="<i4").astype("<i8")
            values = _unsaturated(values, np.asarray(b.quantization.scale, np.float64),
                                  float_biases, f"{names[code]} (bias {name!r})")
            buf.data = np.frombuffer(values.astype("<i8").tobytes(), dtype=np.uint8)
            b.type = fb.TensorType.INT64
            changed.append(name)
    if changed:
        tmp = path.with_suffix(".widening")
        fu.write_model(model, str(tmp))
        os.replace(tmp, path)
    return changed


_INT32 = (-(2 ** 31), 2 ** 31 - 1)


def graph_biases(gm: torch.fx.GraphModule) -> list[np.ndarray]:
    """The float biases of the convolutions and linear layers of a converted PT2E graph."""
    out = []
    for node in gm.graph.nodes:
        bias = node.args[2] if node.op == "call_function" and len(node.args) > 2 else None
        if not isinstance(bias, torch.fx.Node) or bias.op != "get_attr" or \
                not str(node.target).startswith(("aten.conv", "aten.linear")):
            continue
        val: Any = gm
        for part in str(bias.target).split("."):
            val = getattr(val, part, None)
        if isinstance(val, torch.Tensor) and val.is_floating_point():
            out.append(val.detach().double().numpy())
    return out


def _unsaturated(values: np.ndarray, scales: np.ndarray, float_biases: Sequence[np.ndarray],
                 where: str) -> np.ndarray:
    """``values`` (an int32 bias read as int64), with the entries the converter saturated
    recomputed from the matching float bias (see :func:`widen_16x8_biases`)."""
    from ..errors import QuantizationError

    full = np.isin(values, _INT32)
    if not full.any():
        return values
    scale = np.broadcast_to(scales if scales.size else np.ones(1), values.shape)
    for fb_ in float_biases:
        f = np.asarray(fb_, np.float64).reshape(-1)
        if f.shape != values.shape:
            continue
        exact = np.rint(f / scale)
        # the converter divides in float32: a relative tolerance, not one step
        near = np.abs(exact[~full] - values[~full]) <= np.maximum(1.0, 1e-6 * np.abs(
            values[~full]))
        if np.all(near) and \
                np.all(np.abs(exact[full]) >= _INT32[1]) and \
                np.all(np.sign(exact[full]) == np.sign(values[full])):
            return exact.astype(np.int64)
    raise QuantizationError(
        f"LiteRT 16x8: {where}: {int(full.sum())} bias value(s) do not fit int32 at its "
        "scale (input scale x weight scale), and the converter saturated them",
        hint="the layer's inputs are tiny (an untrained model?): build 8-bit activations "
        "(activations_16bit = 0), or 'auto', which keeps the 8-bit file when 16x8 fails")


Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class _Runner:
    """A float runner as a timing session (``run(feeds)``)."""

    def __init__(self, run: Runner) -> None:
        self.run = run


def _sqnr(model: torch.nn.Module, run: Runner,
          batches: Sequence[Sequence[np.ndarray]]) -> float:
    """SQNR (dB) of ``run``'s outputs against ``model``'s (all outputs, every batch); 300 for
    identical outputs (a finite number for the manifest's JSON)."""
    signal = noise = 0.0
    with torch.no_grad():
        for b in batches:
            ref = model(*(torch.from_numpy(np.asarray(a)) for a in b))
            for r, o in zip(ref if isinstance(ref, (tuple, list)) else (ref,), run(b)):
                r64 = np.asarray(r.detach().numpy(), np.float64).ravel()
                signal += float((r64 ** 2).sum())
                noise += float(((np.asarray(o, np.float64).ravel() - r64) ** 2).sum())
    if noise == 0.0:
        return 300.0
    return round(10.0 * float(np.log10(max(signal, 1e-300) / noise)), 2)


def choose_16x8(build: Callable[[Path, bool], Any], path: Path, model: torch.nn.Module,
                batches: Sequence[Sequence[np.ndarray]], config: QuantConfig,
                open_float: Callable[[Path], Runner]) -> tuple[Any, dict[str, Any]]:
    """``activations_16bit = "auto"`` on LiteRT: the 8-bit file at ``path`` (``build(path,
    False)``) is kept when its outputs' SQNR against ``model`` (the model handed to the
    quantizer, after edgekit's float transforms) on the first
    ``extra["range_batches"]`` (8) calibration batches reaches ``extra["sqnr_16bit_db"]``
    (30 dB); else the 16x8 file is built beside it and replaces it when it is more faithful
    and runs within ``extra["max_16bit_slowdown"]`` (1.10) x its median latency (one thread,
    interleaved, the first batch; timed on this machine whatever the target: XNNPACK's int8
    kernels against TFLite's built-in int16 ones, which XNNPACK lacks on every CPU).
    ``open_float(path)``: a one-thread float-I/O runner of a file. Returns (the result of the
    ``build`` kept, the record)."""
    threshold = config.extra_number("sqnr_16bit_db", 30.0)
    limit = config.extra_number("max_16bit_slowdown", 1.10)
    probe = list(batches)[: int(config.extra_number("range_batches", 8))]
    kept = build(path, False)
    record: dict[str, Any] = {"setting": "auto", "sqnr_threshold_db": threshold,
                              "max_slowdown": limit, "chosen": False,
                              "timed_on": platform.machine()}
    if not probe:
        record["reason"] = "no calibration batches to measure the 8-bit outputs on"
        return kept, record
    run8 = open_float(path)
    record["int8_sqnr_db"] = s8 = _sqnr(model, run8, probe)
    if s8 >= threshold:
        record["reason"] = f"8-bit outputs at {s8:.2f} dB SQNR, at or above {threshold:g} dB"
        return kept, record
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        wide_path = Path(tmp) / "model.tflite"
        try:
            wide = build(wide_path, True)
            run16 = open_float(wide_path)
        except Exception as exc:  # noqa: BLE001 - the 8-bit file stays, with the reason
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            record["reason"] = f"the 16x8 build failed: {type(exc).__name__}: {first}"
            return kept, record
        record["int16_sqnr_db"] = s16 = _sqnr(model, run16, probe)
        from ..measure.timing import time_interleaved

        runners: dict[str, Any] = {"int8": _Runner(run8), "16x8": _Runner(run16)}
        stats = time_interleaved(runners,
                                 {"int8": list(probe[0]), "16x8": list(probe[0])}, warmup=5,
                                 runs=max(5, min(int(config.latency_runs), 50)))
        ms8, ms16 = stats["int8"].median_ms, stats["16x8"].median_ms
        ratio = ms16 / ms8 if ms8 > 0 else float("inf")
        record.update(int8_ms=round(ms8, 4), int16_ms=round(ms16, 4), ratio=round(ratio, 3))
        if s16 <= s8:
            record["reason"] = f"16x8 no more faithful ({s16:.2f} vs {s8:.2f} dB)"
        elif ratio > limit:
            record["reason"] = (f"16x8 {ratio:.2f}x the 8-bit latency ({ms16:.4f} vs "
                                f"{ms8:.4f} ms), over the {limit:g}x limit")
        else:
            os.replace(wide_path, path)
            record["chosen"] = True
            record["reason"] = (f"16x8 at {s16:.2f} dB against {s8:.2f} dB, "
                                f"{ratio:.2f}x the 8-bit latency")
            return wide, record
    return kept, record
