"""Turn an artifact into a C source and header, to compile a model into firmware.

``embed_artifact("build/kws/x86-tflite-fp32/model.tflite", "gen/")`` writes ``gen/model_tflite.c``
and ``gen/model_tflite.h``: a 16-byte aligned ``const unsigned char`` array, its length, and
its sha256. Given a bundle and a target, the header also carries the model's input and output
names, shapes, dtypes and (where the manifest has them) quantization scale and zero point.

The output depends only on the artifact's bytes and the manifest: no dates, no paths, so the
same artifact always gives the same ``.c``/``.h`` bytes. Both files are written atomically
(temporary files created exclusively, never through a planted link), after every check passed.
The generated files are ASCII: a non-ASCII file name (``modèle.tflite``) gives an ASCII
identifier and stays escaped in comments and strings; tensor names from the manifest must be
printable; NaN/inf or non-numeric quantization parameters are refused naming the tensor.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, check_record, load_bundle
from .errors import BundleError, UsageError
from .fsio import atomic_write, check_tensor_name, iter_chunks
from .manifest import TargetEntry

__all__ = ["embed_artifact", "check_identifier", "sanitize_identifier"]

#: C (C11..C23) and C++ keywords, plus names the generated code uses itself.
C_KEYWORDS = frozenset("""
alignas alignof and and_eq asm atomic_cancel atomic_commit atomic_noexcept auto bitand bitor bool
break case catch char char8_t char16_t char32_t class compl concept const consteval constexpr
constinit const_cast continue co_await co_return co_yield decltype default delete do double
dynamic_cast else enum explicit export extern false float for friend goto if inline int long
mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public
reflexpr register reinterpret_cast requires restrict return short signed sizeof static
static_assert static_cast struct switch synchronized template this thread_local throw true try
typedef typeid typename typeof typeof_unqual union unsigned using virtual void volatile wchar_t
while xor xor_eq _Alignas _Alignof _Atomic _BitInt _Bool _Complex _Decimal128 _Decimal32
_Decimal64 _Generic _Imaginary _Noreturn _Static_assert _Thread_local main NULL
""".split())

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDENT = 63  # C99's guaranteed significant length of an internal identifier


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a usable C/C++ identifier, else raise UsageError saying why."""
    if not name:
        raise UsageError("identifier is empty", hint="pass a name like kws_model")
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c == "_"))})
    if bad:
        raise UsageError(
            f"identifier {name!r} is not valid C: it contains {' '.join(repr(c) for c in bad)} "
            "(only letters A-Z a-z, digits and _ are allowed)",
            hint=f"e.g. {sanitize_identifier(name)!r}",
        )
    if name[0].isdigit():
        raise UsageError(f"identifier {name!r} is not valid C: it starts with a digit",
                         hint=f"e.g. {sanitize_identifier(name)!r}")
    if name in C_KEYWORDS:
        raise UsageError(f"identifier {name!r} is not valid C: it is a C/C++ keyword or "
                         "reserved name", hint=f"e.g. {name}_model")
    if name.startswith("__") or re.match(r"_[A-Z]", name):
        raise UsageError(f"identifier {name!r} is reserved in C: names starting with two "
                         "underscores or an underscore and a capital letter belong to the "
                         "implementation", hint=f"e.g. {name.lstrip('_') or 'model'}")
    if len(name) > _MAX_IDENT:
        raise UsageError(f"identifier {name!r} is {len(name)} characters long; the limit is "
                         f"{_MAX_IDENT}")
    return name


def sanitize_identifier(text: str) -> str:
    """A valid C identifier derived from ``text`` (e.g. a file name): ``model.tflite`` ->
    ``model_tflite``, ``2-layer net`` -> ``m_2_layer_net``."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    name = re.sub(r"_+", "_", name) or "model"
    if name[0].isdigit():
        name = f"m_{name}"
    if name in C_KEYWORDS:
        name = f"{name}_model"
    return name[:_MAX_IDENT].rstrip("_") or "model"


def _c_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= ord(ch) < 127 and ch != "?":  # '?' avoids trigraphs
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
    return '"' + "".join(out) + '"'


def _c_comment(text: str) -> str:
    """``text`` safe inside a ``/* */`` comment of an ASCII file: non-ASCII and control
    characters as ``\\xNN``/``\\uNNNN`` escapes, and no ``*/`` that would end the comment."""
    return text.encode("ascii", "backslashreplace").decode("ascii") \
        .replace("*/", "*\\/").translate({c: f"\\x{c:02x}" for c in (*range(32), 127)})


#: the largest finite float32: a scale above it would silently become inf in the C header
_FLOAT32_MAX = 3.4028234663852886e38


def _quant_numbers(value: Any, what: str, *, integer: bool) -> list[float] | list[int]:
    """A quantization parameter (one number or a per-channel list) as a list of finite
    float32 scales or integer zero points; :class:`BundleError` naming ``what`` otherwise
    (NaN/inf would make a header that does not compile, or a model that cannot work)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise BundleError(f"{what} is an empty list", hint=_REBUILD)
    out: list[Any] = []
    for x in items:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise BundleError(f"{what} holds {x!r}, not a number", hint=_REBUILD)
        if not math.isfinite(x):
            raise BundleError(f"{what} is {x!r}: NaN/inf quantization parameters cannot be "
                              "embedded (a NaN/inf scale or zero point cannot dequantize)",
                              hint=_REBUILD)
        if integer:
            if x != int(x) or not -(2**31) <= x < 2**31:
                raise BundleError(f"{what} is {x!r}, not a 32-bit integer", hint=_REBUILD)
            out.append(int(x))
        else:
            if abs(x) > _FLOAT32_MAX:
                raise BundleError(f"{what} is {x!r}, outside the float32 range", hint=_REBUILD)
            out.append(float(x))
    return out


_REBUILD = ("the manifest's quantization parameters are damaged or hand-edited; rebuild the "
            "bundle (edgekit writes only finite ones)")


def _c_number(x: float) -> str:
    text = repr(float(x))
    if "e" not in text and "." not in text and "inf" not in text and "nan" not in text:
        text += ".0"
    return text + "f"


def _tensor_macros(prefix: str, kind: str, specs: Sequence[dict[str, Any]],
                   target: str) -> list[str]:
    lines = [f"#define {prefix}_NUM_{kind}S {len(specs)}"]
    for i, spec in enumerate(specs):
        p = f"{prefix}_{kind}_{i}"
        try:  # names from the manifest go into C strings (escaped); refuse NUL and controls
            check_tensor_name(spec.get("name"), f"{kind.lower()} {i} name",
                              where=f"target {target}", from_artifact=True)
        except UsageError as exc:
            raise BundleError(exc.message, hint=_REBUILD.replace("quantization parameters",
                                                                 "tensor names")) from None
        what = f"target {target}: {kind.lower()} {spec['name']!r} quantization"
        shape = [int(d) for d in spec["shape"]]
        elements = 1
        for d in shape:
            elements *= max(d, 0)
        lines += [
            f"#define {p}_NAME {_c_string(str(spec['name']))}",
            f"#define {p}_DTYPE {_c_string(str(spec['dtype']))}",
            f"#define {p}_RANK {len(shape)}",
            f"#define {p}_SHAPE {{{', '.join(str(d) for d in shape)}}}",
            f"#define {p}_ELEMENTS {elements}",
        ]
        for d, dim in enumerate(shape):
            lines.append(f"#define {p}_DIM_{d} {dim}")
        quant = spec.get("quantization") or {}
        if not isinstance(quant, dict):
            raise BundleError(f"{what} is {type(quant).__name__}, not a table", hint=_REBUILD)
        if "scale" in quant:
            scales = _quant_numbers(quant["scale"], f"{what} scale", integer=False)
            if isinstance(quant["scale"], list) and len(scales) > 1:
                lines.append(f"#define {p}_SCALES {{{', '.join(_c_number(s) for s in scales)}}}")
            else:
                lines.append(f"#define {p}_SCALE {_c_number(scales[0])}")
        if "zero_point" in quant:
            zps = _quant_numbers(quant["zero_point"], f"{what} zero point", integer=True)
            if isinstance(quant["zero_point"], list) and len(zps) > 1:
                lines.append(f"#define {p}_ZERO_POINTS {{{', '.join(str(z) for z in zps)}}}")
            else:
                lines.append(f"#define {p}_ZERO_POINT {zps[0]}")
    return lines


def _require_static(entry: TargetEntry, target: str) -> None:
    """Firmware needs every dimension fixed at compile time: ShapeError naming the tensor and
    the dimension otherwise (the header's _ELEMENTS would silently be wrong)."""
    from .errors import ShapeError

    for kind, specs in (("inputs", entry.inputs), ("outputs", entry.outputs)):
        for spec in specs:
            for d, dim in enumerate(spec.get("shape", [])):
                if not isinstance(dim, int) or dim < 0:
                    raise ShapeError(
                        f"target {target}: {kind[:-1]} {spec.get('name')!r} has a dynamic "
                        f"dimension {d} (shape {spec.get('shape')}); embedding for firmware needs "
                        "static shapes",
                        hint="export again with example inputs of the exact shape the device "
                        "uses (edgekit exports static shapes from the example inputs)")


def _write_atomic(path: Path, text: str) -> None:
    # an exclusively created temporary file (O_EXCL, random name), renamed over ``path``
    atomic_write(path, text.encode("ascii"))


#: Artifacts larger than this are refused unless ``max_bytes`` says otherwise (firmware models
#: are kilobytes to a few megabytes; the C source is about six times the artifact).
MAX_EMBED_BYTES = 64 * 2**20


def _hex_lines(src: Path, size: int, limit: int) -> tuple[list[str], str]:
    """The artifact as C initializer lines of 12 bytes, and its sha256, from one read in
    blocks (a FIFO or device refused, never more than ``limit`` bytes read)."""
    digest = hashlib.sha256()
    lines: list[str] = []
    rest, seen = b"", 0
    for block in iter_chunks(src, "artifact", size=12 << 16, max_bytes=limit):
        digest.update(block)
        seen += len(block)
        if seen > limit:
            break
        rest += block
        cut = len(rest) - len(rest) % 12
        lines += ["  " + ", ".join(f"0x{b:02x}" for b in rest[i:i + 12]) + ","
                  for i in range(0, cut, 12)]
        rest = rest[cut:]
    if rest:
        lines.append("  " + ", ".join(f"0x{b:02x}" for b in rest) + ",")
    if seen != size:
        raise BundleError(f"artifact {src} changed while it was read ({size} bytes, then "
                          f"{seen}): refused", hint="embed it again once nothing writes to it")
    return lines, digest.hexdigest()


def _resolve(
    path: Path, target: str | None, file: str | None
) -> tuple[Path, TargetEntry | None, str | None, str | None]:
    """(file to embed, manifest target entry, target name, bundle name)."""
    is_bundle = path.is_dir() or path.name == MANIFEST
    if not is_bundle:
        if target is not None or file is not None:
            raise UsageError(f"--target/--file need a bundle folder; {path} is a file")
        if not path.exists():
            raise UsageError(f"artifact {path} does not exist")
        return path, None, None, None
    bundle = load_bundle(path)
    if target is None:
        if len(bundle.targets) != 1:
            raise UsageError(f"bundle {bundle.root} has targets {', '.join(bundle.targets)}; "
                             "choose one with --target")
        target = bundle.targets[0]
    entry = bundle.target(target)
    records = entry.files
    if file is None:
        if len(records) > 1:
            others = ", ".join(r.path for r in records[1:])
            raise UsageError(
                f"target {target} has {len(records)} files ({records[0].path}, {others}); "
                "the main file alone cannot be loaded",
                hint="embed each file with --file, or use a single-file target such as a "
                ".tflite one",
            )
        rec = records[0]
    else:
        matches = [r for r in records if r.path == file or Path(r.path).name == file]
        if not matches:
            raise UsageError(f"target {target} has no file {file!r}; its files: "
                             f"{', '.join(r.path for r in records)}")
        rec = matches[0]
    check_record(bundle.root, rec)  # tampered or missing -> BundleError naming the file
    return bundle.root / rec.path, entry, target, bundle.name


def embed_artifact(
    path: str | Path,
    out_dir: str | Path,
    identifier: str | None = None,
    max_bytes: int | None = None,
    *,
    target: str | None = None,
    file: str | None = None,
) -> tuple[Path, Path]:
    """Write ``<identifier>.c`` and ``<identifier>.h`` for an artifact into ``out_dir``.

    ``path`` is an artifact file, or a bundle folder (then ``target`` picks the target when the
    bundle has several, and the header carries its I/O specs; the file is checked against the
    manifest's sha256 first). ``identifier`` defaults to one sanitised from the file name
    (plain file) or ``<bundle>_<target>`` (bundle); an explicit one must be valid C.
    ``max_bytes`` rejects larger artifacts. Returns ``(c_path, h_path)``.
    """
    src, entry, target, bundle_name = _resolve(Path(path), target, file)
    if not src.is_file():
        raise UsageError(f"artifact {src} is not a file")
    from .backends import check_model_file

    check_model_file(src)  # truncated, garbage or mislabelled -> BundleError naming the file
    if entry is not None:
        _require_static(entry, str(target))
    if identifier is None:
        base = f"{bundle_name}_{target}" if entry is not None else src.name
        identifier = sanitize_identifier(base)
    check_identifier(identifier)
    size = src.stat().st_size
    if max_bytes is not None and max_bytes <= 0:
        raise UsageError(f"--max-bytes must be positive, got {max_bytes}")
    limit = MAX_EMBED_BYTES if max_bytes is None else max_bytes
    if size > limit:
        raise UsageError(
            f"artifact {src.name} is {size:,} bytes, over the limit of {limit:,} bytes "
            f"by {size - limit:,}",
            hint="shrink the model (prune/quantize) or raise --max-bytes",
        )
    hex_lines, digest = _hex_lines(src, size, limit)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {out}: {exc.strerror}") from exc

    upper = identifier.upper()
    guard = f"EDGEKIT_{upper}_H_"
    header = [
        f"/* {identifier}.h: generated by `edgekit embed` from {_c_comment(src.name)}; do not "
        "edit. */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stddef.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {upper}_SIZE {size}u",
        f"#define {upper}_ALIGNMENT 16",
        f"#define {upper}_SHA256 {_c_string(digest)}",
        f"#define {upper}_FILE_NAME {_c_string(src.name)}",
    ]
    if entry is not None:
        header += [
            f"#define {upper}_BUNDLE {_c_string(str(bundle_name))}",
            f"#define {upper}_TARGET {_c_string(str(target))}",
            f"#define {upper}_BACKEND {_c_string(entry.backend)}",
            f"#define {upper}_PRECISION {_c_string(entry.precision)}",
            "",
            *_tensor_macros(upper, "INPUT", entry.inputs, str(target)),
            "",
            *_tensor_macros(upper, "OUTPUT", entry.outputs, str(target)),
        ]
    header += [
        "",
        f"/* The artifact's bytes, aligned to 16 bytes; {upper}_SIZE of them. */",
        f"extern const unsigned char {identifier}[];",
        f"extern const size_t {identifier}_size;",
        f"extern const char {identifier}_sha256[];",
        "",
        "#ifdef __cplusplus",
        "}  /* extern \"C\" */",
        "#endif",
        "",
        f"#endif  /* {guard} */",
        "",
    ]
    body = [
        f"/* {identifier}.c: generated by `edgekit embed` from {_c_comment(src.name)}; do not "
        "edit. */",
        f'#include "{identifier}.h"',
        "",
        "#if defined(__cplusplus)",
        "#define EDGEKIT_ALIGNAS_16 alignas(16)",
        "#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L",
        "#include <stdalign.h>",
        "#define EDGEKIT_ALIGNAS_16 alignas(16)",
        "#else",
        "#define EDGEKIT_ALIGNAS_16 __attribute__((aligned(16)))",
        "#endif",
        "",
        f"const size_t {identifier}_size = {size}u;",
        f"const char {identifier}_sha256[] = {upper}_SHA256;",
        "",
        f"EDGEKIT_ALIGNAS_16 const unsigned char {identifier}[{max(size, 1)}] = {{",
    ]
    body += hex_lines
    if not size:
        body.append("  0x00,  /* empty artifact: one padding byte, size is 0 */")
    body += ["};", ""]
    c_path, h_path = out / f"{identifier}.c", out / f"{identifier}.h"
    try:
        _write_atomic(h_path, "\n".join(header))
        _write_atomic(c_path, "\n".join(body))
    except OSError as exc:
        raise BundleError(f"cannot write {c_path.name}/{h_path.name} in {out}: {exc.strerror}") \
            from exc
    return c_path, h_path
