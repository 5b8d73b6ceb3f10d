"""Look at a model file before any runtime does: what it really is, and whether it holds together.

Runtimes are native code; given a truncated or hostile file some of them crash, hang or read
files they were never meant to read. Every path that hands a file to a runtime (``Backend.load``,
``edgekit bench`` on lone files, ``edgekit verify``, ``edgekit embed``) first calls the checks
here (through each backend's ``check_file``, see
:func:`edgekit.backends.check_model_file`), which read bytes only and raise
:class:`~edgekit.errors.BundleError` naming the file:

* :func:`sniff_format` tells the format from the bytes (TFLite flatbuffer ``TFL3``, OpenVINO IR
  XML, ONNX protobuf, and formats that are none of them: zip/PyTorch, pickle, gzip, tar, HDF5,
  images), so a file whose format does not match its extension is named as such.
* :func:`check_tflite_file` walks the flatbuffer's root table, vtable, vectors and buffers and
  checks every offset and length against the file size.
* :func:`check_onnx_external_data` checks each tensor stored outside an ``.onnx`` file: the
  location must stay inside the model's folder (no absolute paths, no ``..``, no symlink out of
  it) and offset + length must lie inside the data file, all before any byte of it is read.
* :func:`parse_ir_xml` parses OpenVINO IR XML with DTDs and entity declarations refused.

Nothing here imports a runtime (``onnx`` is imported by the ONNX check only).
"""

from __future__ import annotations

import mmap
import os
import struct
import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import BundleError
from .fsio import check_not_sparse, open_regular, regular_file

__all__ = [
    "FORMAT_NAMES", "SUFFIX_FORMATS", "sniff_format", "check_format",
    "check_tflite_file", "check_onnx_external_data", "parse_ir_xml", "model_file_stat",
    "MAX_MODEL_BYTES", "MAX_XML_BYTES", "MAX_PROTOBUF_BYTES",
]

#: Largest model or weights file edgekit reads (checked from stat, before reading).
MAX_MODEL_BYTES = 16 * 2**30
#: Largest OpenVINO IR .xml (parsed in memory; the weights live in the .bin).
MAX_XML_BYTES = 256 * 2**20
#: A protobuf (.onnx without external data) cannot be larger than 2 GiB.
MAX_PROTOBUF_BYTES = 2**31

#: Human names of the formats :func:`sniff_format` returns.
FORMAT_NAMES = {
    "onnx": "an ONNX model (protobuf)",
    "tflite": "a TFLite flatbuffer",
    "openvino": "an OpenVINO IR .xml file",
    "xml": "an XML file that is not OpenVINO IR",
    "zip": "a zip archive (e.g. a PyTorch .pt/.pt2 checkpoint)",
    "pickle": "a Python pickle",
    "gzip": "a gzip file (e.g. a packed bundle)",
    "tar": "a tar archive",
    "hdf5": "an HDF5 file (e.g. a Keras .h5 model)",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "json": "a JSON file",
    "empty": "an empty file",
    "unknown": "of no format edgekit recognises",
}

#: The format each model-file extension promises.
SUFFIX_FORMATS = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}
_SUFFIX_FOR = {"onnx": ".onnx", "tflite": ".tflite", "openvino": ".xml"}


def _bad(path: Path, what: str, hint: str = "the file is corrupt or truncated; export it again"
         ) -> BundleError:
    return BundleError(f"{path} is not a valid {what}", hint=hint)


def sniff_format(path: str | Path) -> str:
    """The file's format from its first bytes (a key of :data:`FORMAT_NAMES`)."""
    path = Path(path)
    try:
        with open_regular(path, "model file") as fh:  # a FIFO or device never blocks
            head = fh.read(512)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    return _sniff(head)


def _sniff(head: bytes) -> str:
    if not head:
        return "empty"
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        return "openvino" if b"<net" in head else "xml"
    if text[:1] in (b"{", b"["):
        return "json"
    # ModelProto fields are written in field order: ir_version (field 1, varint) comes first.
    if head[0] == 0x08:
        return "onnx"
    return "unknown"


def check_format(path: str | Path, expected: str | None = None) -> str:
    """Raise :class:`BundleError` when ``path`` is empty or its bytes are another known format
    than ``expected`` (default: the one its extension promises). Returns the sniffed format."""
    path = Path(path)
    expected = expected or SUFFIX_FORMATS.get(path.suffix.lower())
    found = sniff_format(path)
    if found == "empty":
        raise BundleError(f"{path} is empty (0 bytes)",
                          hint="the export or copy did not finish; export it again")
    ok = {expected, "unknown"} | ({"xml"} if expected == "openvino" else set())
    if expected is None or found in ok:
        return found
    want = FORMAT_NAMES.get(expected, expected)
    fix = (f"rename it to {path.stem}{_SUFFIX_FOR[found]}" if found in _SUFFIX_FOR
           else f"pass {want.split(' (')[0]} instead")
    raise BundleError(
        f"{path} is {FORMAT_NAMES[found]}, not {want} as its extension {path.suffix!r} says",
        hint=f"{fix}; edgekit tells the runtime from the extension and checks the bytes agree",
    )


# --------------------------------------------------------------------------- TFLite


class _FB:
    """Bounds-checked reads from a flatbuffer; every failure is a ValueError saying where."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def _need(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise ValueError(f"{what} at byte {pos} (+{n}) lies outside the file "
                             f"({self.size} bytes)")

    def u16(self, pos: int, what: str) -> int:
        self._need(pos, 2, what)
        return struct.unpack_from("<H", self.data, pos)[0]

    def u32(self, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        return struct.unpack_from("<I", self.data, pos)[0]

    def i32(self, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        return struct.unpack_from("<i", self.data, pos)[0]

    def u64(self, pos: int, what: str) -> int:
        self._need(pos, 8, what)
        return struct.unpack_from("<Q", self.data, pos)[0]

    def table(self, pos: int, what: str) -> dict[int, int]:
        """Field number -> absolute position of the field, for the table at ``pos``."""
        vt = pos - self.i32(pos, f"{what} table")
        vt_size = self.u16(vt, f"{what} vtable")
        t_size = self.u16(vt + 2, f"{what} vtable")
        if vt_size < 4 or vt_size % 2:
            raise ValueError(f"{what} vtable at byte {vt} has size {vt_size}")
        self._need(vt, vt_size, f"{what} vtable")
        self._need(pos, max(t_size, 4), f"{what} table")
        fields = {}
        for i in range((vt_size - 4) // 2):
            off = self.u16(vt + 4 + 2 * i, f"{what} vtable")
            if off:
                if off >= max(t_size, 4):
                    raise ValueError(f"{what} field {i} at offset {off} is past the table's "
                                     f"{t_size} bytes")
                fields[i] = pos + off
        return fields

    def vector(self, field_pos: int, elem: int, what: str) -> tuple[int, int]:
        """(start of elements, count) of the vector a uoffset field at ``field_pos`` points to."""
        start = field_pos + self.u32(field_pos, what)
        n = self.u32(start, f"{what} length")
        self._need(start + 4, n * elem, f"{what} ({n} elements)")
        return start + 4, n

    def tables(self, field_pos: int, what: str) -> list[int]:
        start, n = self.vector(field_pos, 4, what)
        return [start + 4 * i + self.u32(start + 4 * i, what) for i in range(n)]


def check_tflite_file(path: str | Path) -> None:
    """Check a ``.tflite`` flatbuffer's structure: identifier ``TFL3``, the root Model table and
    its vtable, the operator-code, subgraph, signature and buffer vectors, each buffer's data
    (inline, or ``offset``/``size`` past the flatbuffer for large models), all inside the file.
    Reads bytes only."""
    path = Path(path)
    size = model_file_stat(path).st_size
    if size < 16:
        raise _bad(path, f"TFLite flatbuffer (only {size} bytes)")
    try:
        with open_regular(path, "model file") as fh, \
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _check_tflite_bytes(path, data, len(data))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") \
            from exc


def _check_tflite_bytes(path: Path, data: Any, size: int) -> None:
    if data[4:8] != b"TFL3":
        found = _sniff(data[:512])
        if found not in ("unknown", "tflite"):
            raise _bad(path, f"TFLite flatbuffer (it is {FORMAT_NAMES[found]})")
        raise _bad(path, f"TFLite flatbuffer (identifier {data[4:8]!r}, expected b'TFL3')")
    fb = _FB(data)
    try:
        root = fb.u32(0, "root table offset")
        if root + 4 > size:
            raise ValueError(f"root table at byte {root}, file has {size}")
        model = fb.table(root, "Model")
        for field, name in ((1, "operator_codes"), (2, "subgraphs"), (6, "metadata"),
                            (7, "signature_defs")):
            if field in model:
                for t in fb.tables(model[field], f"Model.{name}"):
                    fb.table(t, f"Model.{name} entry")
        if 3 in model:  # description string
            fb.vector(model[3], 1, "Model.description")
        if 4 in model:
            for k, t in enumerate(fb.tables(model[4], "Model.buffers")):
                buf = fb.table(t, f"buffer {k}")
                if 0 in buf:
                    fb.vector(buf[0], 1, f"buffer {k} data")
                if 1 in buf and 2 in buf:
                    off, n = fb.u64(buf[1], f"buffer {k}"), fb.u64(buf[2], f"buffer {k}")
                    if off > 1 and off + n > size:
                        raise ValueError(f"buffer {k} holds {n} bytes at byte {off}, past the "
                                         f"end of the file ({size} bytes)")
    except ValueError as exc:
        raise _bad(path, f"TFLite flatbuffer ({exc})") from exc


# --------------------------------------------------------------------------- ONNX


def _tensors(graph: Any) -> Any:
    """Every TensorProto of a GraphProto: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _all_tensors(model: Any) -> Any:
    yield from _tensors(model.graph)
    for fn in getattr(model, "functions", ()):
        for node in fn.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
               14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1}


def _unsafe_location(location: str) -> str | None:
    """Why an external-data location may not be followed, or None."""
    if not location:
        return "an empty location"
    if "\0" in location:
        return "a NUL byte in the location"
    if (PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute()
            or PureWindowsPath(location).drive or location.startswith(("\\", "/"))):
        return "an absolute path"
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        return "a '..' component"
    return None


def check_onnx_external_data(model: Any, path: str | Path) -> list[Path]:
    """Check every externally stored tensor of ``model`` (a ModelProto read from ``path``
    without its external data) before any of it is read. Returns the data files."""
    path = Path(path)
    folder = path.parent.resolve()
    sizes: dict[Path, int] = {}
    for t in _all_tensors(model):
        if t.data_location != 1:  # TensorProto.EXTERNAL
            continue
        info = {e.key: e.value for e in t.external_data}
        where = f"{path}: tensor {t.name!r} stores its data externally"
        location = info.get("location", "")
        why = _unsafe_location(location)
        if why:
            raise BundleError(f"{where} at {location!r}: refused ({why}); external data must "
                              "be a relative path inside the model's folder",
                              hint="only load models from sources you trust; re-export with "
                              "its data next to the model")
        target = folder / location
        resolved = target.resolve()
        if not resolved.is_relative_to(folder):
            raise BundleError(f"{where} at {location!r}, which resolves to {resolved}, outside "
                              f"the model's folder {folder} (a symlink?): refused",
                              hint="copy the data file next to the model instead of linking it")
        if not os.path.lexists(resolved):
            raise BundleError(f"{where} in {location!r}, which is missing next to the model",
                              hint="keep the model and its .data file together")
        if resolved not in sizes:
            sizes[resolved] = model_file_stat(resolved, "external data file").st_size
        have = sizes[resolved]
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError as exc:
            raise BundleError(f"{where}: offset/length are not integers ({info})") from exc
        if length is None:
            n = 1
            for d in t.dims:
                n *= int(d)
            length = n * _ELEM_BYTES.get(t.data_type, 1)
        if offset < 0 or length < 0 or offset + length > have:
            raise BundleError(
                f"{where} at bytes {offset}..{offset + length} of {location!r}, but that file "
                f"has {have} bytes: refused before reading it",
                hint="the data file is truncated or belongs to another model; export again")
    return sorted(sizes)


# --------------------------------------------------------------------------- OpenVINO IR


def _refuse_dtd(*_args: Any) -> None:
    raise ValueError("DTD/entity declarations are not allowed in OpenVINO IR")


def parse_ir_xml(path: str | Path) -> ET.Element:
    """Parse an IR .xml with DTDs, entity declarations and external entities refused (no
    entity expansion at all); raises :class:`BundleError` naming the file."""
    path = Path(path)
    try:
        with open_regular(path, "OpenVINO IR file", max_bytes=MAX_XML_BYTES) as fh:
            data = fh.read()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    guard = xml.parsers.expat.ParserCreate()
    guard.StartDoctypeDeclHandler = _refuse_dtd
    guard.EntityDeclHandler = _refuse_dtd
    guard.ExternalEntityRefHandler = _refuse_dtd
    try:
        guard.Parse(data, True)
        root = ET.fromstring(data)
    except (ValueError, ET.ParseError, xml.parsers.expat.ExpatError) as exc:
        raise _bad(path, f"OpenVINO IR .xml file ({exc})") from exc
    return root


def model_file_stat(path: str | Path, what: str = "model file", *,
                    max_bytes: int = MAX_MODEL_BYTES) -> os.stat_result:
    """``stat`` of a model or weights file, refused (BundleError naming it) before a byte is
    read when it is a FIFO, device, folder, sparse or over ``max_bytes``."""
    return check_not_sparse(path, regular_file(path, what, max_bytes=max_bytes), what)
