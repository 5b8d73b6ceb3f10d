"""Quantization settings: ``compress(..., quantization=...)`` over a recipe's ``[quantization]``
over a target profile's ``[quantization]`` (each checked by :data:`TABLE_SCHEMA`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..backends._pt2e_scales import SCALE_FLOORS
from ..backends._ranges import RANGE_METHODS
from ..errors import ConfigError, UsageError
from ..schema import Field, check_table, is_choice

__all__ = ["QuantConfig", "METHODS", "TABLE_SCHEMA"]

#: Calibration methods: min-max, percentile (clips the outer 0.01%), entropy (KL histogram).
METHODS = ("minmax", "percentile", "entropy")
ACTIVATION_TYPES = ("auto", "uint8", "int8")
IO_TYPES = ("float", "int8")
OPENVINO_SOURCES = ("auto", "nncf", "qdq")
PRESETS = ("auto", "mixed", "performance")
#: How cross-layer equalization treats ReLU6 (see edgekit.quantize.transforms.equalize).
RELU6_MODES = ("clamp", "skip")
FALLBACK_ORDERS = ("runtime", "sensitivity")
#: ``equalize``: on, off, or ``"auto"`` (built with and without, the more faithful kept).
EQUALIZE = (False, True, "auto")
SOFTMAX_RANGES = (True, False, "narrow")
REDUCE_RANGE = ("auto", "on", "off")
INT8_SCOPES = ("all", "layers", "auto")
#: The words ``activations_16bit`` takes besides a count or a list of layer names.
WIDE_WORDS = ("all", "auto")


def equalizes(config: QuantConfig) -> bool:
    """Whether a build with ``config`` equalizes (``"auto"`` builds equalized first)."""
    return config.equalize is not False


def check_activations_16bit(value: Any) -> str | None:
    """What is wrong with an ``activations_16bit`` value (None when it is fine): a count
    >= 0, a list of layer names, ``"all"`` or ``"auto"``."""
    usage = "a count, a list of layer names, 'all' or 'auto'"
    if isinstance(value, bool):
        return f"activations_16bit must be {usage}, got {value!r}"
    if isinstance(value, int):
        return None if value >= 0 else f"activations_16bit = {value} must be at least 0"
    if isinstance(value, str):
        return None if value in WIDE_WORDS else (
            f"activations_16bit = {value!r} is not 'all' or 'auto' (or a count, or a list of "
            "layer names)")
    if isinstance(value, (list, tuple)):
        bad = [v for v in value if not isinstance(v, str) or not v]
        return None if not bad else (
            f"activations_16bit must list layer names (non-empty strings), got {bad!r}")
    return f"activations_16bit must be {usage}, got {type(value).__name__} {value!r}"


@dataclass(frozen=True)
class QuantConfig:
    """How int8 artifacts are built.

    * ``method``: calibration method, one of :data:`METHODS` (ONNX Runtime's calibrator, and
      so OpenVINO's ``qdq`` source; NNCF and PT2E use their own observers).
    * ``samples``: calibration samples taken at most.
    * ``per_channel``: per-output-channel weight scales (fixes the depthwise-conv collapse).
    * ``activation_type``: ONNX Runtime activation type; ``"auto"`` = uint8, which ORT's x86
      kernels prefer (int8 activations were slower than fp32 on two models, BASELINE.md).
    * ``io``: TFLite model inputs/outputs, ``"float"`` (quantize inside the model) or
      ``"int8"`` (the caller quantizes with the tensor's scale / zero point).
    * ``keep_float``: PyTorch module names kept in float on every runtime.
    * ``fallback``: with a task, keep the most sensitive layers in float until the profile's
      accuracy budget is met (at most ``max_fallback`` layers). Off, no layer is kept in float
      for accuracy (the runtime's other all-int8 realisations, per-tensor ranges chosen by
      error among them, are still tried when the gate fails), and of a runtime's passing int8
      sources those that execute the fewest layers in float (read from the artifacts) are
      chosen among: NNCF leaves squeeze-excitation blocks in float by its own defaults,
      edgekit's QDQ source does not.
    * ``fallback_order``: which layers the fallback keeps in float first: ``"runtime"`` (the
      default: the culprits read from the failing artifact's own tensors, each with the layer
      that reads its output and the one it reads, then the PyTorch-side sensitivity order;
      at each number of float layers this order is tried, then the PyTorch-side one) or
      ``"sensitivity"`` (the PyTorch-side order alone: one layer fake-quantized at a time).
    * ``openvino_source``: ``"nncf"`` (nncf.quantize on the OpenVINO model), ``"qdq"`` (read
      the ONNX Runtime QDQ model) or ``"auto"`` (the default: build both, gate both, and keep
      the one that passes; when both pass, the faster, timed against each other on this
      machine, unless the other is more faithful at a median within what its gain allows:
      held-out SQNR 1 dB higher within 1.10x of the faster's, 6 dB higher within 1.5x, with a
      task a higher score within 1.10x (``build.SOURCE_TRADES``, ``build.truer_source``);
      where a timing here would not be the target's, the more faithful one). Why
      both: neither wins everywhere - in benchmarks/results/suite/ NNCF misses the accuracy
      budget on resnet8 and image_audio where the QDQ model passes, and where both pass each
      is the faster on some models (QDQ: cnn, lstm, ds_cnn, image_text; NNCF: mobilenet_v2,
      transformer, gan).
    * ``preset``: NNCF preset, ``"auto"`` = MIXED for models with recurrent layers, else
      PERFORMANCE.
    * ``latency_check``: after the accuracy gate, time the int8 artifact against the same
      model's fp32 artifact on the same runtime (interleaved, batch of the example inputs). When
      int8 is below ``min_speedup`` x fp32, try the runtime's cheap alternatives (ONNX Runtime:
      the other activation type; OpenVINO: the other source and preset; then, with
      ``fallback`` on, single layers kept in float, smallest first, none holding over a
      quarter of the weights) - at most
      ``latency_variants`` rebuilds, each through the same accuracy gate - and keep the
      fastest. If none reaches ``min_speedup``, the int8 artifact stays, the
      manifest says so and a :class:`~edgekit.quantize.Int8SlowerWarning` names the faster
      choice. Skipped for targets of another CPU architecture than this machine's (the timing
      would not be the target's). Sessions are loaded at the target's thread count and
      timed interleaved (median of the rounds; a variant must be 3% faster to be preferred).
      Timings can differ run to run, so what they chose is recorded in the manifest
      (``quantization.decisions``) and, with a build cache (``compress(cache=...)``, recipe
      builds), reused by a rebuild of the same inputs, which then gives the same bytes.
    * ``latency_runs`` / ``latency_max_seconds``: timed rounds per measurement, and its cap in
      seconds.
    * ``equalize``, ``bias_correction``, ``smoothquant``: float-domain transforms applied to a
      copy of the model before it is exported for int8 (:mod:`edgekit.quantize.transforms`):
      cross-layer equalization with bias absorption (``equalize_relu6``: ``"clamp"`` equalizes
      through ReLU6 with per-channel bounds, ``"skip"`` leaves those pairs alone), empirical
      bias correction onto the per-channel symmetric int8 grid (skipped with per-tensor
      weights), SmoothQuant with ``smoothquant_alpha``. The manifest's ``quantization.transforms``
      records what each did. Defaults from benchmarks/results/quantization.md (every layer
      int8, 300 calibration samples, SQNR against PyTorch fp32 on the test split): equalize +
      bias correction on, SQNR vs no transform on ds_cnn +2.7 / +0.2 / +0.0 dB (ONNX Runtime /
      OpenVINO / LiteRT), resnet8 +0.2 / +0.1 / +1.0, cnn +0.8 / +0.8 / +0.5, MobileNetV2 with
      ReLU6 pairs skipped +1.4 / -0.2 / +0.1 (equalizing through ReLU6 with clamps: +0.0 /
      -0.2 / +1.4 and a 5-8% larger file, hence ``"skip"``); SmoothQuant off: within 0.3 dB
      on the zoo transformer (its post-norm layers leave only the final LayerNorm -> head).
      ``equalize = "auto"`` (the default) builds the chosen int8 source a second time from
      the model transformed without equalization, where equalization changed a layer, and
      keeps the more faithful (``quantization.equalize_choice`` in the manifest says which
      and why; see ``Int8Build.choose_equalization``): on the trained MobileNetV2 twin
      equalization lowered the held-out SQNR on all three runtimes (by 0.19-0.41 dB) and
      cost its LiteRT file 1.22 points of accuracy (benchmarks/results/ptq_drop,
      benchmarks/results/equalize_auto). The second build costs time (that model on ONNX
      Runtime: 59 s against 26 s). ``true`` or ``false`` builds once.
    * ``adaround``: learned rounding of conv/linear weights onto the per-channel weight grid
      (:mod:`edgekit.quantize.transforms.adaround`; ``adaround_iterations`` optimisation
      steps per layer), written back on the grid so that each runtime's quantizer reproduces
      the integers; it runs after equalization, and bias correction then skips the layers it
      rounded. The manifest records each layer's output error with round to nearest and with
      the learned rounding (``quantization.transforms.adaround_layers``).
    * ``int8_bias_correction`` (off by default): bias correction on the QDQ model's own
      arithmetic (:mod:`edgekit.backends.onnx_bias_correction`; ONNX Runtime targets:
      OpenVINO's ``qdq`` source records it as skipped, its kernels' arithmetic differs): each
      Conv / Gemm's int32 bias moves by the mean shift its accumulator shows against fp32 on
      the calibration data, layer by layer, a correction kept only where the model's outputs
      came closer to fp32; the whole is fitted on three quarters of the calibration batches
      and kept only if the outputs on the last quarter are closer too. The manifest records it
      (``quantization.int8_bias_correction``). It costs about two passes of the int8 model
      over the batches per Conv / Gemm layer. Measured in
      benchmarks/results/int8_bias_correction: top-1 closer to fp32 on three trained twins;
      SQNR +1.0 dB on MobileNetV3 with ``range_method = "auto"`` and -3.4 dB without it (with
      ranges left to the runtime, the corrected min-max build passes the gate, so the ranges
      chosen by error are not tried), within 0.3 dB on ResNet-18 and MobileNetV2.
    * ``range_method``: how activation ranges are set, one of ``RANGE_METHODS``:
      ``"runtime"`` (the default) leaves them to the runtime's calibrator (``method``);
      ``"minmax"``, ``"percentile"`` (``extra["percentile"]``, 99.99), ``"mse"``,
      ``"entropy"`` set every tensor by that method and ``"auto"`` chooses per tensor the
      one of lowest error of the consuming layer's output
      (:mod:`edgekit.backends._ranges`; ONNX Runtime, and OpenVINO's ``qdq`` source, which
      reads that model). The manifest records the choices (``ranges.chosen``: tensors per
      method).
    * ``softmax_ranges``: a Softmax input whose calibrated range an attention mask (or
      another far tail) stretches to over twice what the softmax needs is quantized on the
      range it needs: from the lowest row maximum minus ``ln(row length) + 10`` up to the
      calibrated maximum (:mod:`edgekit.backends.onnx_softmax_ranges`; ONNX Runtime, and
      OpenVINO's ``qdq`` source). On by default: a min-max range over ``[-1e4, 12]`` leaves
      one level for every real score. Where even that grid moves the softmax's outputs more
      than their own 8-bit grid does (simulated on the calibration data) and an elementwise
      op makes the input (the mask's Add), ONNX Runtime builds it both narrowed and in float
      (the Add and the Softmax) and keeps the build closer to fp32 on the calibration data
      (``softmax_float_choice`` in the manifest); ``"narrow"`` always narrows.
    * ``reduce_range``: ONNX Runtime weights on 7 bits (``-64..64``): ``"auto"`` (the
      default) where ONNX Runtime's uint8 x int8 kernels saturate on this machine (x86-64
      without VNNI: :mod:`edgekit.backends.x86_saturation`), ``"on"``, ``"off"``. Bias
      correction and ``adaround`` target the grid the weights get. The manifest records the
      decision and why (``quantization.reduce_range``).
    * ``activations_16bit``: activations quantized to 16 bits. ONNX Runtime (QDQ): a count
      (the most sensitive data inputs of Conv/Gemm/MatMul layers, lowest 8-bit SQNR first),
      a list of PyTorch layer names (their data inputs), ``"all"`` (every such input) or
      ``"auto"`` (those under ``extra["sqnr_16bit_db"]`` = 30 dB, at most
      ``extra["max_16bit"]`` = 4, kept only while the model runs within
      ``extra["max_16bit_slowdown"]`` = 1.10 x the all-8-bit latency, measured). LiteRT:
      TFLite's 16x8 mode, whole-model (:mod:`edgekit.backends.tflite_16x8`): ``"all"``, or
      ``"auto"`` (built where the 8-bit outputs are under ``sqnr_16bit_db`` and kept when
      more faithful within ``max_16bit_slowdown``); a count or a list is a ConfigError there.
      ``0`` (the default): none. The manifest lists the 16-bit tensors or layers read back
      from the file (ONNX Runtime ``ranges.activations_16bit``, LiteRT
      ``activations_16bit.int16_layers``).
    * ``scale_floor``: the smallest scale of PT2E observers (LiteRT, ExecuTorch)
      (:mod:`edgekit.backends._pt2e_scales`). The quantizers' own configs clamp scales at
      2**-12, which puts a weight channel under 0.031 or an activation spanning under 0.062
      on a coarser grid than its range and quantizes a tensor of ~1e-4 or less to zero;
      ``"on"`` floors them at 2**-60 instead, ``"off"`` keeps the clamp, ``"auto"`` (the
      default) builds both where the clamp changes a scale and keeps the more faithful on
      the held-out data (no timing: both run the same ops; one build where the clamp
      changes no scale: the same file). The manifest records both (``source_choice``).
      benchmarks/results/mobilenet_fidelity.md: a randomly initialised MobileNetV2's int8
      logits are no longer constant; no change on the trained zoo models.
    * ``integer_ops`` (on by default): rewrite the graph before the runtime's quantizer so
      that ops it would leave on float data run on int8 data. LiteRT: residual adds,
      concatenations and pools litert's quantizer fails to find under ``torch.export``'s
      non-strict tracing, and hardsigmoid / hardswish written out in ADD / MUL, which
      XNNPACK runs in int8; for 16x8, Hardswish models build
      (:mod:`edgekit.backends.pt2e_rewrites`). ONNX Runtime (and OpenVINO reading its QDQ
      model), 8-bit builds: HardSigmoid / HardSwish written out as Add, Clip and Mul,
      spatial ReduceMean as GlobalAveragePool (:mod:`edgekit.backends.onnx_rewrites`). The
      manifest's ``float_ops`` lists the ops still on float data, read from the file (LiteRT)
      or from what the runtime executes (ONNX Runtime, OpenVINO). benchmarks/results/
      ``{litert,onnxruntime,openvino}_integer.md`` measure it against the default flows.
    * ``int8_scope`` (ONNX Runtime, OpenVINO's ``qdq`` source, LiteRT): which tensors get a
      QuantizeLinear / DequantizeLinear pair. ``"all"``: every op ONNX Runtime's quantizer
      quantizes (adds, concatenations, pools, layout ops, softmax...).
      ``"layers"``: only the inputs of the weight and matrix layers (Conv, ConvTranspose,
      Gemm, MatMul) and a convolution's output; a Gemm's or MatMul's output stays float (ONNX
      Runtime runs it as an integer product with a float result), and the residual adds,
      norms and softmax between them run in float. A transformer's residual stream then keeps
      a token whose values are far smaller than the others' (a vision transformer's class
      token) off a grid sized for the others, which the norm after it would magnify.
      ``"auto"`` (the default): for a model with a layer-norm module (``nn.LayerNorm``, or a
      class named ``*LayerNorm`` / ``*RMSNorm``), both are built as two int8 sources and the
      source choice keeps the faster, unless the other is more faithful within the slowdown
      its gain allows (``SOURCE_TRADES``); elsewhere ``"all"``. Measured side by side in
      ``benchmarks/results/int8_scope/scope_latency.md``: ``"layers"`` is 4-28 dB closer to
      fp32 on eight transformers and faster on most of them, but 64% slower on MobileViT's
      ONNX Runtime file and 26% on ConvNeXt's OpenVINO one, where it gains nothing.
      LiteRT (PT2E, 8-bit): ``"layers"`` annotates only the weight layers (their inputs,
      weights and outputs; a FULLY_CONNECTED writes int8 that is dequantized for the float
      ops after it); ``"auto"`` annotates every op, and ``"layers"`` is the first alternative
      where a layer-norm model misses its gate; 16x8 and QAT builds annotate every op. Every
      weight layer stays int8 either way (read back from the file).
    """

    method: str = "minmax"
    samples: int = 300
    per_channel: bool = True
    activation_type: str = "auto"
    io: str = "float"
    keep_float: tuple[str, ...] = ()
    fallback: bool = True
    max_fallback: int = 8
    fallback_order: str = "runtime"
    openvino_source: str = "auto"
    preset: str = "auto"
    latency_check: bool = True
    latency_runs: int = 200
    latency_max_seconds: float = 2.0
    min_speedup: float = 0.97
    latency_variants: int = 6
    equalize: bool | str = "auto"
    equalize_relu6: str = "skip"
    bias_correction: bool = True
    int8_bias_correction: bool = False
    smoothquant: bool = False
    smoothquant_alpha: float = 0.5
    adaround: bool = False
    adaround_iterations: int = 300
    range_method: str = "runtime"
    softmax_ranges: bool | str = True
    reduce_range: str = "auto"
    activations_16bit: int | str | tuple[str, ...] = 0
    scale_floor: str = "auto"
    integer_ops: bool = True
    int8_scope: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {"method": METHODS, "range_method": RANGE_METHODS,
                  "activation_type": ACTIVATION_TYPES, "io": IO_TYPES,
                  "openvino_source": OPENVINO_SOURCES,
                  "preset": PRESETS, "equalize_relu6": RELU6_MODES,
                  "reduce_range": REDUCE_RANGE, "scale_floor": SCALE_FLOORS,
                  "equalize": EQUALIZE, "softmax_ranges": SOFTMAX_RANGES,
                  "int8_scope": INT8_SCOPES}
        for key, allowed in checks.items():
            if not is_choice(getattr(self, key), allowed):
                raise UsageError(f"quantization {key} {getattr(self, key)!r} is not one of "
                                 f"{list(allowed)}")
        if int(self.samples) < 1:
            raise UsageError(f"quantization samples must be >= 1, got {self.samples}")
        if int(self.latency_runs) < 1 or float(self.latency_max_seconds) <= 0:
            raise UsageError("quantization latency_runs must be >= 1 and latency_max_seconds > 0, "
                             f"got {self.latency_runs} and {self.latency_max_seconds}")
        if float(self.min_speedup) <= 0:
            raise UsageError(f"quantization min_speedup must be > 0, got {self.min_speedup}")
        if not 0.0 <= float(self.smoothquant_alpha) <= 1.0:
            raise UsageError("quantization smoothquant_alpha must be in [0, 1], got "
                             f"{self.smoothquant_alpha}")
        if int(self.adaround_iterations) < 1:
            raise UsageError("quantization adaround_iterations must be >= 1, got "
                             f"{self.adaround_iterations}")
        if int(self.latency_variants) < 0:
            raise UsageError("quantization latency_variants must be >= 0, got "
                             f"{self.latency_variants}")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        problem = check_activations_16bit(self.activations_16bit)
        if problem is not None:
            raise UsageError(f"quantization {problem}")
        if isinstance(self.activations_16bit, list):
            object.__setattr__(self, "activations_16bit", tuple(self.activations_16bit))

    @classmethod
    def coerce(cls, value: QuantConfig | Mapping[str, Any] | None) -> QuantConfig:
        if value is None:
            return cls()
        if isinstance(value, QuantConfig):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise UsageError(f"unknown quantization key(s) {sorted(unknown)}; known: "
                                 f"{sorted(known)}")
            return cls(**dict(value))
        raise UsageError("quantization must be a QuantConfig or a dict, "
                         f"got {type(value).__name__}")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str,
                   base: QuantConfig | None = None) -> QuantConfig:
        """``base`` (default: the defaults) with the keys of a ``[quantization]`` table set.

        ``where`` names the table in errors (``"recipe r.toml [quantization]"``); every key
        is checked by :data:`TABLE_SCHEMA` (:class:`~edgekit.errors.ConfigError` naming the
        key: unknown with the closest known one, wrong type, out of range).
        """
        if "activations_16bit" in table:  # a union type: checked here, before the schema
            problem = check_activations_16bit(table["activations_16bit"])
            if problem is not None:
                raise ConfigError(f"{where}: {problem}")
        values = check_table(table, TABLE_SCHEMA, where=where)
        return replace(base if base is not None else cls(), **values)

    def extra_number(self, key: str, default: float) -> float:
        """``extra[key]`` (``default`` when absent), a positive number; UsageError if not."""
        value = self.extra.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise UsageError(
                f"quantization extra {key!r} must be a positive number, got {value!r}")
        return float(value)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        if isinstance(self.activations_16bit, tuple):
            d["activations_16bit"] = list(self.activations_16bit)
        return d


#: Every QuantConfig field as a key of a ``[quantization]`` table (profile, recipe, or the
#: ``quantization=`` dict), with its type and allowed values.
TABLE_SCHEMA: dict[str, Field] = {
    "method": Field(str, choices=METHODS),
    "samples": Field(int, low=1),
    "per_channel": Field(bool),
    "activation_type": Field(str, choices=ACTIVATION_TYPES),
    "io": Field(str, choices=IO_TYPES),
    "keep_float": Field(list, item=str),
    "fallback": Field(bool),
    "max_fallback": Field(int, low=0),
    "fallback_order": Field(str, choices=FALLBACK_ORDERS),
    "openvino_source": Field(str, choices=OPENVINO_SOURCES),
    "preset": Field(str, choices=PRESETS),
    "latency_check": Field(bool),
    "latency_runs": Field(int, low=1),
    "latency_max_seconds": Field(float, low=0, low_open=True),
    "min_speedup": Field(float, low=0, low_open=True),
    "latency_variants": Field(int, low=0),
    "equalize": Field(object, choices=EQUALIZE),
    "equalize_relu6": Field(str, choices=RELU6_MODES),
    "bias_correction": Field(bool),
    "int8_bias_correction": Field(bool),
    "smoothquant": Field(bool),
    "smoothquant_alpha": Field(float, low=0, high=1),
    "adaround": Field(bool),
    "adaround_iterations": Field(int, low=1),
    "range_method": Field(str, choices=RANGE_METHODS),
    "softmax_ranges": Field(object, choices=SOFTMAX_RANGES),
    "reduce_range": Field(str, choices=REDUCE_RANGE),
    "activations_16bit": Field(object),  # a count, a list of layer names, "all" or "auto"
    "scale_floor": Field(str, choices=SCALE_FLOORS),
    "integer_ops": Field(bool),
    "int8_scope": Field(str, choices=INT8_SCOPES),
    "extra": Field(dict),
}
