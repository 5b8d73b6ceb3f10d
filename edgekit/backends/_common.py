"""Helpers shared by the backends: specs, feed checking, missing packages, failed conversions.

Nothing here imports a runtime; each backend module imports its own heavy packages inside
functions (through :func:`edgekit._deps.require`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import (
    BundleError,
    DataError,
    EdgekitError,
    ExportError,
    ModelRunError,
    ShapeError,
    UsageError,
)
from .base import Artifact, TensorSpec

# --------------------------------------------------------------------------- packages


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The modules in ``modules`` that cannot be imported, without importing any of them."""
    missing = []
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:  # blocked (e.g. by a test) or failed earlier
                missing.append(name)
            continue
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def int8_needs(modules: Sequence[str]) -> str | None:
    """None when every module an int8 build needs imports, else "int8 needs <packages>"."""
    missing = [m.split(".")[0] for m in missing_modules(modules)]
    return f"int8 needs {', '.join(missing)}" if missing else None


def package_versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed distribution versions (from metadata; imports nothing)."""
    out: dict[str, str] = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# --------------------------------------------------------------------------- model / specs


def np_dtype_name(dtype: Any) -> str:
    """numpy dtype name of a torch dtype, numpy dtype or numpy scalar type."""
    if isinstance(dtype, torch.dtype):
        return str(torch.empty((), dtype=dtype).numpy().dtype)
    return str(np.dtype(dtype))


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """A model's outputs (a tensor, or nested tuples/lists/dicts of them, ``None`` entries
    skipped) as a flat list, in :func:`edgekit.model_outputs.output_leaves` order."""
    from ..model_outputs import not_tensors, output_leaves

    leaves = output_leaves(out)
    if bad := not_tensors(leaves):
        raise UsageError(f"model output {', '.join(bad)} is not a tensor (a tensor or a "
                         "tuple/list/dict of tensors is)")
    return [t for _, t in leaves]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode for the block and restore its training flags afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def check_export_args(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> list[torch.Tensor]:
    """Validate names against the inputs and the model's outputs; returns the reference outputs."""
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs)
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise UsageError(f"example input {i} is a {type(x).__name__}, not a torch.Tensor")
    if len(input_names) != len(example_inputs):
        raise UsageError(
            f"{len(input_names)} input names {list(input_names)} for "
            f"{len(example_inputs)} example inputs"
        )
    for kind, names in (("input", input_names), ("output", output_names)):
        if len(set(names)) != len(names):
            raise UsageError(f"{kind} names must be unique, got {list(names)}")
    with torch.no_grad():
        outs = flatten_outputs(model(*example_inputs))
    if len(output_names) != len(outs):
        raise UsageError(
            f"{len(output_names)} output names {list(output_names)} for a model with "
            f"{len(outs)} outputs"
        )
    return outs


#: protobuf's limit on one serialized message, so on an .onnx file without external data.
PROTOBUF_LIMIT = 2**31 - 1


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each tensor once), from their sizes alone:
    nothing is read or copied, so it also works for meta tensors."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def check_protobuf_size(model: torch.nn.Module, backend: str, *, external_data: bool,
                        what: str = "") -> int:
    """Before exporting: ExportError when the weights cannot fit one protobuf file and no
    external data is written. Returns the parameter bytes."""
    n = parameter_bytes(model)
    if not external_data and n > PROTOBUF_LIMIT:
        raise ExportError(
            f"the model holds {n / 2**30:.2f} GiB of parameters, over the 2 GiB limit of an "
            f"ONNX file without external data (protobuf){f'; {what}' if what else ''}",
            backend=backend,
            hint="export with external data (profile [options] external_data = true, the "
            "default for fp32 ONNX: weights go to model.onnx.data next to the model), or "
            "shrink the model first (prune, or fewer/smaller layers)",
        )
    return n


def list_files(out_dir: Path, main: str) -> list[str]:
    """Every file under ``out_dir`` (relative), the main one first."""
    rest = sorted(
        str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and p.name != main
    )
    return [main, *rest]


# --------------------------------------------------------------------------- sessions


class CheckedSession:
    """Base of edgekit's sessions: ``run`` checks the feeds (:class:`FeedChecker`: shapes,
    dtypes, torch tensors, NaN/inf) and then makes the runtime call (``_call``). ``timed``
    checks once and hands back the bare runtime call with the checked feeds, which
    :func:`edgekit.measure.timing.timed_call` uses: a latency measures the runtime, not
    edgekit's checks of its inputs."""

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict[str, Any]
    _check: FeedChecker

    def _call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, feeds: list[np.ndarray], *, allow_nonfinite: bool = False
            ) -> list[np.ndarray]:
        """Feeds in model order (numpy arrays or torch tensors; see :class:`FeedChecker`).
        NaN/inf inputs raise DataError unless ``allow_nonfinite``; a failing call raises
        :class:`ModelRunError` naming the node where the runtime says."""
        return self._call(self._check(feeds, allow_nonfinite=allow_nonfinite))

    def timed(self, feeds: list[np.ndarray]) -> tuple[BareCall, list[np.ndarray]]:
        return BareCall(self), self._check(feeds)


class BareCall:
    """The runtime call of a :class:`CheckedSession`, fed arrays it has already checked."""

    def __init__(self, session: CheckedSession) -> None:
        self.backend = session.backend
        self.inputs, self.outputs, self.info = session.inputs, session.outputs, session.info
        self._call = session._call

    def run(self, feeds: list[np.ndarray], **_: Any) -> list[np.ndarray]:
        return self._call(feeds)


class FeedChecker:
    """Checks and casts ``Session.run`` feeds against the artifact's input specs.

    Built once in ``load``; ``__call__`` is on the timed path, so it precomputes everything.

    * ``feeds`` is a list (or tuple) with one entry per model input, in model order; a single
      array, a dict or anything else is refused with :class:`UsageError`.
    * Each entry is a numpy array, a torch tensor or a nested list of numbers. Torch tensors are
      detached (``requires_grad`` is fine), moved to the CPU and made contiguous; a bfloat16 or
      float16 tensor for a float32 input is widened to float32 (lossless). Other casts are
      allowed within a kind (float64 -> float32 rounds like ``astype``; int64 -> int32 when the
      values fit); anything else raises :class:`ShapeError` naming the input, its position, its
      dtype and the expected one.
    * Float inputs holding NaN or +-inf raise :class:`DataError` naming the input and the count
      on every runtime (OpenVINO's CPU plugin would return finite outputs, the others NaN), unless
      ``allow_nonfinite=True``; then each runtime's own handling applies.
    """

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self._shapes = [tuple(s.shape) for s in specs]
        self._dtypes = [np.dtype(s.dtype) for s in specs]
        self._dynamic = [any(d < 0 for d in s.shape) for s in specs]
        self._n = len(specs)

    def __call__(self, feeds: Sequence[Any], *, allow_nonfinite: bool = False
                 ) -> list[np.ndarray]:
        if not isinstance(feeds, (list, tuple)):
            names = [s.name for s in self.specs]
            raise UsageError(
                f"Session.run takes a list with one array per model input {names}, got a "
                f"{type(feeds).__name__}",
                hint="wrap a single input in a list: session.run([x])")
        if len(feeds) != self._n:
            names = [s.name for s in self.specs]
            raise ShapeError(f"expected {self._n} inputs {names}, got {len(feeds)}")
        out = []
        for i, x in enumerate(feeds):
            if not isinstance(x, np.ndarray):
                x = self._to_array(i, x)
            if x.shape != self._shapes[i] and not (
                self._dynamic[i] and self._fits(x.shape, self._shapes[i])
            ):
                s = self.specs[i]
                raise ShapeError(
                    f"input {s.name!r}: expected shape {list(s.shape)}, got {list(x.shape)}",
                    hint="artifacts have static shapes; export again with example inputs of "
                    "this shape",
                )
            if x.dtype != self._dtypes[i]:
                x = self._cast(i, x)
            if not allow_nonfinite and x.dtype.kind in "fc" and not np.isfinite(x.sum()):
                self._check_finite(i, x)
            out.append(x)
        return out

    def _where(self, i: int) -> str:
        s = self.specs[i]
        return f"input {s.name!r} (position {i}, {s.dtype} of shape {list(s.shape)})"

    def _to_array(self, i: int, x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            t = x.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            if t.is_complex() or t.is_quantized or t.layout != torch.strided:
                raise ShapeError(f"{self._where(i)}: got a {t.dtype} {t.layout} tensor, which "
                                 "does not convert", hint="pass a dense real-valued tensor")
            if t.dtype in (torch.bfloat16, torch.float16) and self._dtypes[i] == np.float32:
                t = t.float()  # widening: lossless
            elif t.dtype == torch.bfloat16:  # numpy has no bfloat16
                raise ShapeError(
                    f"{self._where(i)}: got a torch.bfloat16 tensor, expected "
                    f"{self._dtypes[i]}", hint="convert it first, e.g. x.to(torch.float32)")
            return t.contiguous().numpy()
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:  # ragged lists, objects numpy cannot hold
            raise ShapeError(f"{self._where(i)}: got a {type(x).__name__} that is not an "
                             f"array ({first_line(exc)})",
                             hint="pass a numpy array or a torch tensor") from None
        if arr.dtype.kind not in "biuf":
            raise ShapeError(f"{self._where(i)}: got a {type(x).__name__} ({arr.dtype}), "
                             "not an array of numbers",
                             hint="pass a numpy array or a torch tensor")
        return arr

    def _check_finite(self, i: int, x: np.ndarray) -> None:
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:  # (a finite array whose sum overflowed lands here with bad == 0)
            nan = int(np.count_nonzero(np.isnan(x)))
            raise DataError(
                f"input {self.specs[i].name!r} (position {i}) holds {bad} non-finite value(s) "
                f"of {x.size} ({nan} NaN, {bad - nan} inf); runtimes disagree on those "
                "(OpenVINO returns finite outputs, the others NaN)",
                hint="clean the input, or pass allow_nonfinite=True to Session.run to feed them "
                "anyway")

    @staticmethod
    def _fits(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
        return len(got) == len(want) and all(w < 0 or g == w for g, w in zip(got, want))

    def _cast(self, i: int, x: np.ndarray) -> np.ndarray:
        want = self._dtypes[i]
        name = self.specs[i].name
        if not np.can_cast(x.dtype, want, casting="same_kind"):
            raise ShapeError(
                f"input {name!r} (position {i}): expected dtype {want}, got {x.dtype}, which "
                "does not convert safely",
                hint=f"convert it first, e.g. x.astype(np.{want})",
            )
        if want.kind in "iu" and x.size:
            info = np.iinfo(want)
            lo, hi = x.min(), x.max()
            if lo < info.min or hi > info.max:
                raise ShapeError(
                    f"input {name!r}: values in [{lo}, {hi}] do not fit the artifact's "
                    f"{want} input (range [{info.min}, {info.max}])"
                )
        return np.ascontiguousarray(x, dtype=want)


def check_artifact_backend(artifact: Artifact, backend: str) -> Path:
    if artifact.backend != backend:
        raise UsageError(f"artifact is for backend {artifact.backend!r}, not {backend!r}")
    path = artifact.path
    if not path.is_file():
        raise BundleError(f"artifact file {path} does not exist")
    from ..modelfile import check_format

    check_format(path)  # empty, or another format than the extension says -> BundleError
    return path


#: The most threads a session may ask for (10000 made runtimes abort the process).
MAX_THREADS = 256


def check_threads(threads: int) -> int:
    """``threads`` if it is an integer in 1..:data:`MAX_THREADS`, else :class:`UsageError`."""
    if not isinstance(threads, int) or isinstance(threads, bool) or not \
            1 <= threads <= MAX_THREADS:
        raise UsageError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}",
                         hint="use about as many threads as the machine has cores")
    return threads


def bad_file(path: Path, what: str, exc: BaseException | None = None) -> BundleError:
    """A :class:`BundleError` naming a file the runtime should not be given."""
    detail = f": {first_line(exc)}" if exc is not None else ""
    return BundleError(
        f"{path} is not a valid {what}{detail}",
        hint="the file is corrupt or truncated; export it again",
    )


# --------------------------------------------------------------------------- failures

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# aten.erfinv.default, prims.erf_inv, aten::special_erfinv
_OP = re.compile(r"\b(aten|prims)(?:\.|::)([A-Za-z0-9_]+)")
# OpenVINO's PyTorch frontend: "__module.inner.conv/aten::linalg_det"
_OV_MODULE = re.compile(r"__module\.([A-Za-z0-9_.]+)/(aten::[A-Za-z0-9_]+)")


def first_line(exc: BaseException | None, limit: int = 300) -> str:
    text = _ANSI.sub("", str(exc) if exc is not None else "").strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _error_text(exc: BaseException) -> str:
    parts, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(_ANSI.sub("", str(cur)))
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def _said(text: str, limit: int = 300) -> str:
    """The converter's most telling line: the first one naming an op, else the first line."""
    lines = [ln.strip(" -|") for ln in text.splitlines() if ln.strip(" -|")]
    line = next((ln for ln in lines if _OP.search(ln)), lines[0] if lines else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _norm(op: str) -> str:
    """Op base name without namespace/overload/prefix noise: special_erfinv, erf_inv -> erfinv."""
    name = op.lower()
    for prefix in ("special_", "linalg_", "_linalg_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.strip("_").replace("_", "")


def _node_op(target: Any) -> tuple[str, str] | None:
    m = _OP.match(str(target))
    return (m.group(1), m.group(2)) if m else None


def _layer_of(node: Any) -> tuple[str, str] | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", "?")
    path = re.sub(r"^L__self___?", "", str(path)).replace("L['self'].", "") or "<root>"
    return path, cls_name


def _exported(model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> Any:
    """``torch.export`` of ``model`` (non-strict) for mapping a converter's failure to a layer;
    None where the graph cannot be captured at all (nothing to map)."""
    try:
        return torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception:
        return None


def _find_in_graph(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], ops: list[str],
    within: str | None = None,
) -> tuple[str, str, str, str] | None:
    """(op target, module path, class name, node name) of the first graph node matching one of
    ``ops``; first among the nodes of module ``within`` (where the converter named the module
    the op failed in), then anywhere."""
    ep = _exported(model, example_inputs)
    if ep is None:
        return None
    graphs = [ep.graph]
    try:
        graphs.append(ep.run_decompositions().graph)
    except Exception:
        pass
    for scope in ([within] if within else []) + [None]:
        for exact in (True, False):
            for op in ops:
                for graph in graphs:
                    for node in graph.nodes:
                        if node.op != "call_function":
                            continue
                        parsed = _node_op(node.target)
                        if parsed is None:
                            continue
                        hit = parsed[1] == op if exact else _norm(parsed[1]) == _norm(op)
                        layer = _layer_of(node) or ("<root>", type(model).__name__)
                        if hit and (scope is None or layer[0] == scope
                                    or layer[0].startswith(scope + ".")):
                            return str(node.target), layer[0], layer[1], node.name
    return None


def export_failure(
    backend: str,
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    exc: BaseException,
    *,
    stage: str = "conversion",
) -> ExportError:
    """Map a converter's exception to an :class:`ExportError` naming the op and the layer.

    The op is taken from the converter's message (``aten.xxx``, ``prims.xxx``, ``aten::xxx``)
    and looked up in a ``torch.export`` graph of the model; the matching node's
    ``nn_module_stack`` gives the module path and class.
    """
    text = _error_text(exc)
    ops: list[str] = []
    for m in _OP.finditer(text):
        if m.group(2) not in ops:
            ops.append(m.group(2))
    ov_layer = _OV_MODULE.search(text)
    found = _find_in_graph(model, example_inputs, ops,
                           ov_layer.group(1) if ov_layer else None) if ops else None
    op = layer = cls = node = None
    if found:
        op, layer, cls, node = found
    elif ov_layer:
        layer, op = ov_layer.group(1), ov_layer.group(2)
    elif ops:
        op = ops[0]
    named = next((f"{m.group(1)}.{m.group(2)}" for m in _OP.finditer(text)), None)
    if op:
        conv = f" (the converter calls it {named})" if named and named not in op else ""
        msg = f"{op} is not supported by the {backend} converter{conv}"
        if layer:
            msg += f"; it is used in layer {layer!r}" + (f" ({cls})" if cls else "")
            if node:
                msg += f", graph node {node!r}"
        msg += f"; converter said: {_said(text)}"
        hint = (
            f"rewrite layer {layer!r} without {op}, or use another backend"
            if layer
            else f"avoid {op} in the model, or use another backend"
        )
    else:
        msg = f"{stage} failed: {type(exc).__name__}: {first_line(exc)}"
        hint = "run torch.export.export(model, example_inputs) to check the model exports"
    return ExportError(msg, backend=backend, op=op, layer=layer, hint=hint)


# LiteRT's converter: "<file>:110:0: error: 'tfl.transpose' op quantization parameters violate
# the same scale constraint: !quant.uniform<...> vs. !quant.uniform<...>"
_SAME_SCALE = re.compile(r"(?:(\S+?):(\d+):\d+: )?error: 'tfl\.(\w+)' op quantization "
                         r"parameters violate the same scale constraint")


#: The aten ops a LiteRT op is converted from, where the names differ.
_TFL_FROM = {"transpose": ("transpose", "permute", "t"),
             "reshape": ("view", "reshape", "unsqueeze", "squeeze", "flatten", "expand"),
             "stridedslice": ("slice", "select", "narrow"), "slice": ("slice", "narrow"),
             "concatenation": ("cat", "concat"), "gather": ("index", "gather", "select"),
             "pad": ("pad", "constantpadnd")}


def _layers_at_source(model: torch.nn.Module, example_inputs: tuple[Any, ...], file: str,
                      line: int, tfl_op: str) -> list[tuple[str, str]]:
    """(module path, class name) of each layer whose ``torch.export`` graph holds a node traced
    from ``file``:``line``, in graph order: the nodes that convert to ``tfl_op`` where the line
    has any, else every node on it."""
    ep = _exported(model, example_inputs)
    if ep is None:
        return []
    graph = ep.graph
    where = f'File "{file}", line {line},'
    names = _TFL_FROM.get(_norm(tfl_op), (_norm(tfl_op),))
    on_line = [n for n in graph.nodes if where in (n.meta.get("stack_trace") or "")]
    same_op = [n for n in on_line if (op := _node_op(n.target)) and _norm(op[1]) in names]
    found: list[tuple[str, str]] = []
    for node in same_op or on_line:
        layer = _layer_of(node) or ("<root>", type(model).__name__)
        if layer not in found:
            found.append(layer)
    return found


def same_scale_failure(backend: str, model: torch.nn.Module, example_inputs: tuple[Any, ...],
                       exc: BaseException) -> ExportError | None:
    """An :class:`ExportError` for LiteRT's int8 converter refusing an op whose input and
    output the quantizer put on different grids (a layout op must keep one scale), naming the
    op, the model's source line and its layer; None for any other failure."""
    text = _error_text(exc)
    m = _SAME_SCALE.search(text)
    if m is None:
        return None
    file, line, tfl = m.group(1), m.group(2), m.group(3).upper()
    layers = _layers_at_source(model, example_inputs, file, int(line), tfl) if file else []
    where = f" traced from {file}:{line}" if file else ""
    layer = layers[0][0] if layers else None
    msg = (f"LiteRT's int8 converter refused the {tfl}{where}: it must read and write one int8 "
           "scale, and litert's quantizer gave its input and output different ones")
    if layers:
        msg += f"; it is used in layer {layer!r} ({layers[0][1]})"
        if len(layers) > 1:
            msg += f" and {len(layers) - 1} other layer(s)"
    msg += f"; converter said: {_said(m.group(0))}"
    hint = ("quantize this model with the ONNX Runtime or OpenVINO int8 targets, which have no "
            "such constraint, or keep LiteRT in float (fp32/fp16)")
    return ExportError(msg, backend=backend, op=f"tfl.{tfl.lower()}", layer=layer, hint=hint)


# litert-torch's layout pass: "Attempting to convert non-NHWC compatible node to NHWC:
# dequantize_per_tensor_1" (the int8 input of an op it moved to NHWC)
_NHWC = re.compile(r"Attempting to convert non-NHWC compatible node to NHWC: "
                   r"(dequantize_per_tensor|\w+?)(?:_(\d+))?\b")


def layout_failure(backend: str, converted: Any, exc: BaseException) -> ExportError | None:
    """An :class:`ExportError` for litert-torch's layout pass refusing the int8 input of an op
    (``F.normalize(x, dim=1)`` on a 4-D tensor), naming the ops that read it and their layer,
    found in ``converted`` (the converted PT2E graph handed to litert-torch: its
    ``dequantize_per_tensor_default_N`` is the pass's ``dequantize_per_tensor_N``); None for
    any other failure."""
    text = _error_text(exc)
    m = _NHWC.search(text)
    if m is None:
        return None
    base, index = m.group(1), m.group(2)
    names = {f"{base}_default" + (f"_{index}" if index else ""), m.group(0).split(": ")[-1]}
    node = next((n for n in getattr(getattr(converted, "graph", None), "nodes", [])
                 if n.name in names), None)
    readers: list[tuple[str, tuple[str, str] | None]] = []
    for user in node.users if node is not None else []:
        op = _node_op(user.target)
        readers.append((f"{op[0]}.{op[1]}" if op else str(user.target), _layer_of(user)))
    layers = list(dict.fromkeys(layer for _, layer in readers if layer))
    ops = ", ".join(dict.fromkeys(op for op, _ in readers if op != "output"))
    msg = "litert-torch's layout pass (NCHW to NHWC) could not place an int8 tensor"
    if ops:
        msg += f" read by {ops}"
    if layers:
        where = [f"{p!r} ({c})" if p != "<root>" else f"the model's own forward ({c})"
                 for p, c in layers]
        msg += f" in {', '.join(where)}"
    msg += f"; converter said: {_said(m.group(0))}"
    layer = next((p for p, _ in layers if p != "<root>"), None)
    hint = ("quantize this model with the ONNX Runtime or OpenVINO int8 targets, or keep LiteRT "
            "in float (fp32 converts)"
            + (f", or keep layer {layer!r} in float (quantization={{'keep_float': "
               f"[{layer!r}]}})" if layer else ""))
    return ExportError(msg, backend=backend, op=ops or None, layer=layer, hint=hint)


# --------------------------------------------------------------------------- run-time failures


# onnxruntime: "running ConstantOfShape node. Name:'huge_fill' Status Message: ..."
_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
# OpenVINO CPU plugin: "Node huge_range of type Range"
_OV_NODE = re.compile(r"Node (\S+) of type (\w+)")
_ALLOC = re.compile(r"bad_alloc|failed to allocate|out of memory|cannot allocate|"
                    r"allocation failed|std::length_error", re.IGNORECASE)
_BYTES = re.compile(r"(?:buffer of size|allocate) (\d+)")


def _size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def runtime_reason(message: str) -> str:
    """The runtime's own reason at the end of its message, without ONNX Runtime's source
    location and failed condition (``.../quantize_linear_matmul.cc:80 ... was false. QLinearMatmul :
    weight zero point must be ...``)."""
    text = message.split("Status Message:")[-1].strip()
    text = text.split(" was false. ", 1)[-1] if " was false. " in text else text
    return text if len(text) <= 400 else text[:397] + "..."


def run_failure(backend: str, exc: BaseException, path: Path | str | None, *,
                guess: tuple[str, str] | None = None, stage: str = "run") -> EdgekitError:
    """Map a runtime's exception (or MemoryError) while loading or running a model to a
    :class:`ModelRunError` naming the node (op type and name, from the runtime's message, else
    ``guess``) and saying when the model allocates more memory than there is."""
    if isinstance(exc, EdgekitError):
        return exc
    text = _error_text(exc)
    op = node = None
    m = _ORT_NODE.search(text)
    if m:
        op, node = m.group(1), m.group(2)
    elif (m := _OV_NODE.search(text)) is not None:
        node, op = m.group(1), m.group(2)
    elif guess is not None:
        op, node = guess
    where = f" at node {node!r} ({op})" if node else ""
    what = f"{path}" if path is not None else "the model"
    sizes = [int(b) for b in _BYTES.findall(text)]
    requested = max(sizes) if sizes else None
    if isinstance(exc, MemoryError) or _ALLOC.search(text):
        asked = f" (it asked for {_size(requested)})" if requested else ""
        return ModelRunError(
            f"{what}: {backend} ran out of memory{where}: the model allocates too much at "
            f"{stage} time{asked}",
            backend=backend, op=op, node=node, requested_bytes=requested,
            hint=(f"check the shapes node {node!r} builds (a ConstantOfShape/Range/Expand with "
                  "a huge or input-dependent size?)" if node else
                  "check the shapes the model builds (ConstantOfShape/Range/Expand with huge "
                  "sizes?)") + "; a model that needs more memory than the machine has cannot "
                  "run here")
    return ModelRunError(
        f"{what}: {backend} failed to {stage} the model{where}: {_said(text)}",
        backend=backend, op=op, node=node,
        hint="check the inputs against the model's specs; if they fit, the model itself is "
        "broken: export it again")
