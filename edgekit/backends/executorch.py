"""ExecuTorch ``.pte`` programs lowered to XNNPACK, run with the ExecuTorch Python runtime.

Export is ``torch.export`` -> ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``
-> ``to_executorch()``; int8 goes through PT2E with ExecuTorch's ``XNNPACKQuantizer`` first
(see :mod:`edgekit.backends.executorch_int8`).

Quirks handled here:

* A ``.pte`` stores no tensor names: a lone file's inputs and outputs are ``input_0``,
  ``output_0``, ... in the method's order (its shapes and dtypes are read from the program).
* What runs where is read from the file, never from what was asked: the program's flatbuffer
  is walked (:func:`check_pte_file`) for its delegate calls (XNNPACK segments) and kernel calls
  (ops left to ExecuTorch's portable kernels), and each XNNPACK payload for its quantized
  tensors; a program with quantized tensors executes in int8.
* XNNPACK's threadpool is process-wide and sized to the machine's cores. Resizing it
  (``_unsafe_reset_threadpool``) in a process that also runs PyTorch crashed the next
  ExecuTorch call here, so edgekit leaves it alone: a session's ``info["threads"]`` is the
  pool's real size, and ``info["threads_requested"]`` what the caller asked for.

Example::

    be = ExecuTorchBackend()
    art = be.export(model, (x,), out_dir, input_names=["x"], output_names=["y"], options={})
    sess = be.load(art, threads=2, options={})
    (y,) = sess.run([x.numpy()])
"""

from __future__ import annotations

import mmap
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._deps import require
from ..errors import BundleError, ExportError
from ._common import (
    CheckedSession,
    FeedChecker,
    bad_file,
    check_artifact_backend,
    check_export_args,
    check_threads,
    eval_mode,
    export_failure,
    first_line,
    int8_needs,
    list_files,
    missing_modules,
    package_versions,
    run_failure,
)
from ._pt2e_scales import source_flags
from .base import Artifact, TensorSpec

__all__ = ["ExecuTorchBackend", "ExecuTorchSession", "ProgramSummary", "check_pte_file"]

_NAME = "executorch"
_EXTRA = "executorch"
_IDENTIFIER = re.compile(rb"ET\d\d")
_XNNPACK = "XnnpackBackend"
#: ExecuTorch ScalarType codes -> numpy dtype names.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16",
                 6: "float32", 7: "float64", 11: "bool"}


# --------------------------------------------------------------------------- the file


@dataclass
class ProgramSummary:
    """What a ``.pte`` program executes, read from its bytes.

    ``delegates``: delegate calls per backend id (``XnnpackBackend`` for XNNPACK segments);
    ``kernels``: ops run by ExecuTorch's own kernels, outside any delegate;
    ``xnnpack_nodes``: XNNPACK node count; ``quantized_tensors`` / ``float_tensors``: XNNPACK
    values that are quantized (int8/int32 with scales) or plain.
    """

    methods: list[str] = field(default_factory=list)
    delegates: dict[str, int] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    xnnpack_nodes: int = 0
    quantized_tensors: int = 0
    float_tensors: int = 0

    @property
    def precision(self) -> str:
        """``int8`` when the program holds quantized tensors, else ``fp32``."""
        return "int8" if self.quantized_tensors else "fp32"

    def to_json(self) -> dict[str, Any]:
        return {"delegates": dict(self.delegates), "non_delegated_ops": dict(self.kernels),
                "xnnpack_nodes": self.xnnpack_nodes,
                "quantized_tensors": self.quantized_tensors,
                "float_tensors": self.float_tensors, "precision": self.precision}


def check_pte_file(path: Path) -> ProgramSummary:
    """The checks before the runtime opens a ``.pte`` (bytes only): the file identifier
    ``ET12`` at bytes 4..8, the extended header's program and segment sizes inside the file,
    and every table and vector the runtime reads (plans, operators, instructions, delegates,
    segments, the XNNPACK payloads) inside its bounds. Returns what the program executes."""
    from ..modelfile import FORMAT_NAMES, _sniff, model_file_stat

    path = Path(path)
    size = model_file_stat(path).st_size
    if size < 32:
        raise bad_file(path, f"ExecuTorch program (only {size} bytes)")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if not _IDENTIFIER.fullmatch(bytes(data[4:8])):
                found = _sniff(bytes(data[:512]))
                what = (f"it is {FORMAT_NAMES[found]}" if found not in ("unknown", "xml")
                        else f"identifier {bytes(data[4:8])!r}, expected b'ET12'")
                raise bad_file(path, f"ExecuTorch program ({what})")
            return _walk_program(data)
    except ValueError as exc:
        raise bad_file(path, "ExecuTorch program", exc) from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _walk_program(data: Any) -> ProgramSummary:
    """Walk the Program flatbuffer in ``data`` (the file's bytes, or a map of them;
    bounds-checked, ValueError saying where)."""
    from ..modelfile import _FB

    size = len(data)
    program_size, segment_base = size, 0
    if data[8:12] == b"eh00":  # extended header: program size, segment base and size
        length = int.from_bytes(data[12:16], "little")
        program_size = int.from_bytes(data[16:24], "little")
        segment_base = int.from_bytes(data[24:32], "little")
        segment_size = int.from_bytes(data[32:40], "little") if length >= 32 else 0
        if length < 24 or not 8 < program_size <= size:
            raise ValueError(f"extended header says {program_size} program bytes (header "
                             f"length {length}) in a file of {size}")
        if segment_base and not program_size <= segment_base <= size - segment_size:
            raise ValueError(f"segments at byte {segment_base} (+{segment_size}) lie outside "
                             f"the file ({size} bytes)")
    fb = _FB(data[:program_size])
    root = fb.u32(0, "root table offset")
    program = fb.table(root, "Program")
    summary = ProgramSummary()
    inline: list[tuple[int, int]] = []
    if 3 in program:  # backend_delegate_data: [BackendDelegateInlineData{data: [ubyte]}]
        for t in fb.tables(program[3], "Program.backend_delegate_data"):
            fields = fb.table(t, "delegate data")
            inline.append(fb.vector(fields[0], 1, "delegate data") if 0 in fields else (0, 0))
    segments: list[tuple[int, int]] = []
    if 4 in program:  # segments: [DataSegment{offset: uint64, size: uint64}]
        for t in fb.tables(program[4], "Program.segments"):
            fields = fb.table(t, "segment")
            off = fb.u64(fields[0], "segment offset") if 0 in fields else 0
            n = fb.u64(fields[1], "segment size") if 1 in fields else 0
            if segment_base + off + n > size:
                raise ValueError(f"segment at byte {segment_base + off} (+{n}) lies outside "
                                 f"the file ({size} bytes)")
            segments.append((segment_base + off, n))
    if 1 not in program:
        raise ValueError("the program has no execution plan")
    for plan_pos in fb.tables(program[1], "Program.execution_plan"):
        plan = fb.table(plan_pos, "ExecutionPlan")
        if 0 in plan:
            start, n = fb.vector(plan[0], 1, "plan name")
            summary.methods.append(bytes(data[start:start + n]).decode("utf-8", "replace"))
        ops = [_string(fb, data, fb.table(t, "operator"), 0)
               for t in (fb.tables(plan[6], "operators") if 6 in plan else [])]
        ids: list[str] = []
        for t in fb.tables(plan[7], "delegates") if 7 in plan else []:
            delegate = fb.table(t, "delegate")
            ids.append(_string(fb, data, delegate, 0))
            if 1 not in delegate:
                raise ValueError(f"delegate {ids[-1]!r} has no data reference")
            ref = fb.table(fb.u32(delegate[1], "data reference") + delegate[1], "data reference")
            location = data[ref[0]] if 0 in ref else 0
            index = fb.u32(ref[1], "data index") if 1 in ref else 0
            table = inline if location == 0 else segments
            if index >= len(table):
                raise ValueError(f"delegate {ids[-1]!r} points at data {index} of {len(table)}")
            if ids[-1] == _XNNPACK:
                _count_xnnpack(data, *table[index], summary)
        for chain in fb.tables(plan[5], "chains") if 5 in plan else []:
            fields = fb.table(chain, "chain")
            for ins in fb.tables(fields[2], "instructions") if 2 in fields else []:
                ifields = fb.table(ins, "instruction")
                kind = data[ifields[0]] if 0 in ifields else 0
                if kind not in (1, 2) or 1 not in ifields:
                    continue
                call_pos = ifields[1] + fb.u32(ifields[1], "instruction")
                call = fb.table(call_pos, "call")
                index = fb.i32(call[0], "call index") if 0 in call else 0
                names, counts = (ops, summary.kernels) if kind == 1 else (ids, summary.delegates)
                if not 0 <= index < len(names):
                    raise ValueError(f"an instruction calls {index}, of {len(names)}")
                counts[names[index]] = counts.get(names[index], 0) + 1
    return summary


def _string(fb: Any, data: Any, fields: dict[int, int], slot: int) -> str:
    if slot not in fields:
        return ""
    start, n = fb.vector(fields[slot], 1, "string")
    return bytes(data[start:start + n]).decode("utf-8", "replace")


def _count_xnnpack(data: Any, start: int, size: int, summary: ProgramSummary) -> None:
    """Add one XNNPACK payload's nodes and quantized/float values to ``summary``. The payload
    is an ``XH00`` header (flatbuffer offset and size) before an ``XNNGraph`` flatbuffer."""
    from ..modelfile import _FB

    blob = data[start:start + size]
    if blob[4:8] == b"XH00":
        off = int.from_bytes(blob[10:14], "little")
        n = int.from_bytes(blob[14:18], "little")
        if off + n > len(blob):
            raise ValueError(f"XNNPACK graph at byte {start + off} (+{n}) lies outside its "
                             f"segment ({size} bytes)")
        blob = blob[off:off + n]
    fb = _FB(blob)
    graph = fb.table(fb.u32(0, "XNNPACK root"), "XNNGraph")
    if 1 in graph:
        summary.xnnpack_nodes += fb.vector(graph[1], 4, "XNNGraph.xnodes")[1]
    kinds: Counter[int] = Counter()
    for t in fb.tables(graph[2], "XNNGraph.xvalues") if 2 in graph else []:
        fields = fb.table(t, "XValue")
        kinds[blob[fields[0]] if 0 in fields else 0] += 1
    summary.float_tensors += kinds[1]  # XNNTensorValue
    summary.quantized_tensors += kinds[2]  # XNNQuantizedTensorValue


def _lower(exported: Any, path: Path) -> None:
    """Lower an ExportedProgram to XNNPACK and write the ``.pte`` to ``path``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    path.write_bytes(program.to_executorch().buffer)


def _open_method(path: Path) -> Any:
    """The loaded ``forward`` method of ``path``, which :func:`check_pte_file` passed."""
    runtime = require("executorch.runtime", backend=_NAME, extra=_EXTRA)
    try:
        program = runtime.Runtime.get().load_program(
            path, verification=runtime.Verification.InternalConsistency)
        if "forward" not in program.method_names:
            raise ValueError(f"it has no forward method (methods: {sorted(program.method_names)})")
        return program.load_method("forward")
    except Exception as exc:
        raise bad_file(path, "ExecuTorch program", exc) from exc


def _specs(meta: Any, names: list[str] | None, kind: str) -> list[TensorSpec]:
    count = meta.num_inputs() if kind == "input" else meta.num_outputs()
    read = meta.input_tensor_meta if kind == "input" else meta.output_tensor_meta
    if names is not None and len(names) != count:
        raise ExportError(f"the program has {count} {kind}s, expected {len(names)} ({names})",
                          backend=_NAME)
    specs = []
    for i in range(count):
        info = read(i)
        code = int(info.dtype())
        specs.append(TensorSpec(names[i] if names else f"{kind}_{i}",
                                tuple(int(d) for d in info.sizes()),
                                _SCALAR_TYPES.get(code, f"scalar_type_{code}")))
    return specs


def _artifact(path: Path, out_dir: Path, input_names: list[str] | None,
              output_names: list[str] | None, info: dict[str, Any]) -> Artifact:
    """The artifact of the ``.pte`` at ``path``: specs from its method, precision and what
    runs where from its bytes; names positional when ``input_names``/``output_names`` are
    None."""
    summary = check_pte_file(path)
    meta = _open_method(path).metadata
    return Artifact(backend=_NAME, root=out_dir, files=list_files(out_dir, path.name),
                    inputs=_specs(meta, input_names, "input"),
                    outputs=_specs(meta, output_names, "output"),
                    precision=summary.precision,
                    info={**info, "executes": summary.to_json(), "layout": "NCHW (as in PyTorch)"})


# --------------------------------------------------------------------------- the session


def _pool_threads() -> int:
    """The size of ExecuTorch's process-wide threadpool (what XNNPACK runs on)."""
    from executorch.extension.pybindings import _C

    return int(_C._threadpool_get_thread_count())


class ExecuTorchSession(CheckedSession):
    """A loaded ``forward`` method; ``run`` feeds torch views of the checked numpy arrays."""

    backend = _NAME

    def __init__(self, method: Any, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 info: dict[str, Any], path: Path) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.info = info
        self._execute = method.execute
        self._path = path
        self._check = FeedChecker(inputs)

    def _call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A failing call raises :class:`ModelRunError`."""
        try:
            outs = self._execute([torch.from_numpy(x) for x in arrays])
        except Exception as exc:  # RuntimeError from the runtime, MemoryError
            raise run_failure(_NAME, exc, self._path) from exc
        return [o.numpy() for o in outs]


# --------------------------------------------------------------------------- the backend


class ExecuTorchBackend:
    """ExecuTorch with XNNPACK: fp32 and PT2E int8 ``.pte`` programs, CPU only."""

    name = _NAME
    extra = _EXTRA
    file_suffix = ".pte"
    #: A QAT graph prepared with LiteRT's quantizer is not XNNPACK's: int8 recalibrates.
    qat_graph = False
    #: No profile ``[options]``: XNNPACK takes the whole graph it supports.
    options_schema: dict[str, Any] = {}

    def available(self) -> str | None:
        if missing_modules(["executorch"]):
            return "Python package executorch not installed"
        return None

    def versions(self) -> dict[str, str]:
        return package_versions(["executorch", "torch", "torchao"])

    def export(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        out_dir: Path,
        *,
        input_names: list[str],
        output_names: list[str],
        options: dict[str, Any],
    ) -> Artifact:
        """fp32 ``model.pte``: every op XNNPACK supports in its delegate, the rest on
        ExecuTorch's portable kernels."""
        require("executorch.exir", backend=_NAME, extra=_EXTRA)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.pte"
        example_inputs = tuple(example_inputs)
        t0 = time.perf_counter()
        with eval_mode(model):
            check_export_args(model, example_inputs, input_names, output_names)
            try:
                _lower(torch.export.export(model, example_inputs), path)
            except OSError as exc:
                raise ExportError(f"writing {path} failed: {first_line(exc)}",
                                  backend=_NAME) from exc
            except Exception as exc:
                raise export_failure(_NAME, model, example_inputs, exc) from exc
        return _artifact(path, out_dir, input_names, output_names, {
            "export_seconds": round(time.perf_counter() - t0, 3),
            "exporter": "torch.export + to_edge_transform_and_lower(XnnpackPartitioner)"})

    def int8_available(self) -> str | None:
        return int8_needs(["executorch.exir", "torchao"])

    def quantize(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        out_dir: Path,
        *,
        input_names: list[str],
        output_names: list[str],
        options: dict[str, Any],
        calibration: list[list[np.ndarray]],
        config: Any,
        keep_float: list[str] | tuple[str, ...] = (),
        fp32: Artifact | None = None,
        prepared: Any = None,
    ) -> Artifact:
        """int8 ``model.pte`` through PT2E with ExecuTorch's ``XNNPACKQuantizer`` (symmetric
        int8, per-channel weights when ``config.per_channel``), calibrated on
        ``calibration``; modules in ``keep_float`` are left unannotated, so they run in
        float. ``fp32`` and ``prepared`` are not used: the graph is quantized, not a file."""
        require("executorch.exir", backend=_NAME, extra=_EXTRA)
        from .executorch_int8 import quantize_graph

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.pte"
        example_inputs = tuple(example_inputs)
        t0 = time.perf_counter()
        with eval_mode(model):
            check_export_args(model, example_inputs, input_names, output_names)
            try:
                graph, recipe = quantize_graph(model, example_inputs, calibration, config,
                                               keep_float)
                _lower(torch.export.export(graph, example_inputs), path)
            except Exception as exc:
                raise export_failure(_NAME, model, example_inputs, exc,
                                     stage="int8 conversion") from exc
        art = _artifact(path, out_dir, input_names, output_names, {
            "export_seconds": round(time.perf_counter() - t0, 3),
            "exporter": "PT2E XNNPACKQuantizer + to_edge_transform_and_lower(XnnpackPartitioner)",
            "quantization": {**recipe, "float_modules": list(keep_float)},
            **source_flags(recipe["scale_floor"]["observers_below_clamp"])})
        if art.precision != "int8":
            raise ExportError("the int8 program holds no quantized tensor: XNNPACK took none "
                              "of the quantized ops", backend=_NAME,
                              hint="use the fp32 target for this model")
        return art

    def int8_sources(self, config: Any, model: torch.nn.Module | None = None
                     ) -> list[tuple[str, dict[str, Any]]]:
        """PT2E with the XNNPACK quantizer: with ``scale_floor="auto"``, scales floored and
        clamped at its 2**-12, compared where the two differ
        (:mod:`edgekit.backends._pt2e_scales`)."""
        from ._pt2e_scales import floor_sources

        return floor_sources(config, "PT2E xnnpack")

    def int8_alternatives(self, config: Any, model: torch.nn.Module, *,
                          sources_compared: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """None: only layers kept in float (tried by the latency check for every runtime)."""
        return []

    def inspect(self, path: Path) -> Artifact:
        """A lone ``.pte``: shapes and dtypes from the ``forward`` method's metadata, names
        ``input_<i>``/``output_<i>`` (a program stores none), precision from its XNNPACK
        payloads."""
        path = Path(path)
        art = _artifact(path, path.parent, None, None, {"source": "file",
                                                    "names": "positional (.pte stores none)"})
        art.files = [path.name]
        return art

    def check_file(self, path: Path) -> None:
        """Identifier, header sizes and every table the runtime reads inside the file."""
        check_pte_file(Path(path))

    def device_unavailable_reason(self, device: str) -> str | None:
        """CPU only: edgekit lowers to XNNPACK, a CPU delegate."""
        if device == "cpu":
            return None
        return "edgekit lowers ExecuTorch programs to XNNPACK, which runs on the CPU only"

    def load_on_device(self, artifact: Artifact, device: str, *, threads: int,
                       options: dict[str, Any]) -> ExecuTorchSession:
        """The CPU session for ``cpu``; any other device is refused."""
        from ..errors import DeviceUnavailableError

        reason = self.device_unavailable_reason(device)
        if reason:
            raise DeviceUnavailableError(f"{artifact.path}: cannot run on {device}: {reason}")
        return self.load(artifact, threads=threads, options=options)

    def import_runtime(self) -> None:
        require("executorch.runtime", backend=_NAME, extra=_EXTRA)

    def load(self, artifact: Artifact, *, threads: int, options: dict[str, Any]
             ) -> ExecuTorchSession:
        threads = check_threads(threads)
        path = check_artifact_backend(artifact, _NAME)
        t0 = time.perf_counter()
        summary = check_pte_file(path)
        method = _open_method(path)
        meta = method.metadata
        got_in, got_out = _specs(meta, None, "input"), _specs(meta, None, "output")
        if len(got_in) != len(artifact.inputs) or len(got_out) != len(artifact.outputs):
            raise BundleError(f"{path}: the program has {len(got_in)} inputs and "
                              f"{len(got_out)} outputs, the artifact lists "
                              f"{len(artifact.inputs)} and {len(artifact.outputs)}")
        inputs = [TensorSpec(s.name, g.shape, g.dtype) for s, g in zip(artifact.inputs, got_in)]
        outputs = [TensorSpec(s.name, g.shape, g.dtype)
                   for s, g in zip(artifact.outputs, got_out)]
        info = {"runtime": _NAME, "version": package_versions(["executorch"])["executorch"],
                "device": "CPU", "precision": summary.precision, "threads": _pool_threads(),
                "threads_requested": threads,
                "threadpool": "process-wide, sized to the machine's cores (not resized: "
                              "resizing it beside PyTorch crashes)",
                "executes": summary.to_json(),
                "load_seconds": round(time.perf_counter() - t0, 3)}
        return ExecuTorchSession(method, inputs, outputs, info, path)
