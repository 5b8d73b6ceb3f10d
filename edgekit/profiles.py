"""Target profiles: one validated TOML file per deployment target.

A profile says which backend builds the artifact, for which CPU architecture and precision,
with how many threads, and how close to the PyTorch reference the result must be::

    >>> from edgekit.profiles import load_profile
    >>> load_profile("x86-onnxruntime-fp32").backend
    'onnxruntime'

Bundled profiles live in the top-level ``targets/`` folder (the ``edgekit.targets`` package);
a path to a ``.toml`` file of the same shape works wherever a name does. A profile's ``name``
becomes its target's folder in every bundle, so it must be a plain name
(:func:`edgekit.fsio.check_name`: letters, digits, ``.``, ``_``, ``-``, ``+``, at most 128
characters, never a path or a reserved bundle file name); the file is refused before any work.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import BundleError, ConfigError, UnknownNameError, UsageError
from .fsio import check_name, open_regular

__all__ = ["Tolerance", "TargetProfile", "load_profile", "list_profiles", "PRECISIONS"]

PRECISIONS = ("fp32", "int8")
ARCHES = ("x86_64", "aarch64", "armv7l")
DEVICES = ("cpu", "cuda", "remote")
LAYOUTS = ("nchw", "nhwc")
#: a profile is a few hundred bytes; refuse anything far larger before reading it
MAX_PROFILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Tolerance:
    """Limits an artifact must meet; ``None`` switches a check off.

    ``min_top1_agreement`` applies only to outputs marked as classifier logits.
    """

    max_abs: float | None = 1e-4
    min_cosine: float | None = 0.999
    min_top1_agreement: float | None = 0.99

    @classmethod
    def coerce(cls, value: Tolerance | Mapping[str, Any] | None) -> Tolerance:
        if value is None:
            return cls()
        if isinstance(value, Tolerance):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise UsageError(
                    f"unknown tolerance key(s) {sorted(unknown)}; known: {sorted(known)}"
                )
            return cls(**{k: (None if v is None else float(v)) for k, v in value.items()})
        raise UsageError(f"tolerance must be a Tolerance or a dict, got {type(value).__name__}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



@dataclass(frozen=True)
class TargetProfile:
    name: str
    backend: str
    arch: str = "x86_64"
    device: str = "cpu"
    precision: str = "fp32"
    layout: str = "nchw"
    threads: int = 2
    description: str = ""
    tolerance: Tolerance = field(default_factory=Tolerance)
    max_accuracy_drop: float = 1.0
    #: Backend-specific settings, passed to the backend untouched (e.g. inference_precision).
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data


_TOP_KEYS = {
    "name": str, "description": str, "backend": str, "arch": str, "device": str,
    "precision": str, "layout": str, "threads": int,
    "tolerance": dict, "accuracy": dict, "options": dict,
}  # fmt: skip
_CHOICES = {"precision": PRECISIONS, "arch": ARCHES, "device": DEVICES, "layout": LAYOUTS}


def _bundled_dir() -> Path:
    return Path(str(resources.files("edgekit.targets")))


def list_profiles() -> list[str]:
    """Names of the bundled target profiles."""
    return sorted(p.stem for p in _bundled_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path) -> TargetProfile:
    """Load and validate a bundled profile by name, or any profile file by path."""
    text_path = str(name_or_path)
    if text_path.endswith(".toml") or "/" in text_path:
        path = Path(text_path)
        try:
            with open_regular(path, "target profile file", max_bytes=MAX_PROFILE_BYTES) as fh:
                blob = fh.read()
        except (BundleError, OSError, ValueError) as exc:
            reason = exc.message if isinstance(exc, BundleError) else \
                f"target profile file {str(path)!r} cannot be read: {exc}"
            raise ConfigError(reason, hint="pass the path of a .toml target profile") from None
    else:
        check_name(text_path, "target")  # a name, never a path: UsageError before any lookup
        path = _bundled_dir() / f"{text_path}.toml"
        if not path.is_file():
            raise UnknownNameError("target", text_path, list_profiles())
        blob = path.read_bytes()
    try:
        raw = blob.decode("utf-8")
        data = tomllib.loads(raw)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"target profile {path} is not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"target profile {path} is not valid TOML: {exc}",
            hint="fix the syntax at the line and column named above",
        ) from exc
    return parse_profile(data, source=str(path))


def parse_profile(data: dict[str, Any], *, source: str = "<dict>") -> TargetProfile:
    """Validate a profile's parsed TOML; every problem names the file and the key."""

    def fail(msg: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"target profile {source}: {msg}", hint=hint)

    if not isinstance(data, dict):
        raise fail("the top level must be a table")
    for key, value in data.items():
        if key not in _TOP_KEYS:
            raise fail(f"unknown key {key!r}", hint=f"allowed keys: {', '.join(sorted(_TOP_KEYS))}")
        want = _TOP_KEYS[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise fail(f"{key!r} must be a {want.__name__}, got {type(value).__name__} {value!r}")
    for key in ("name", "backend"):
        if key not in data:
            raise fail(f"missing required key {key!r}")
    try:
        check_name(data["name"], "name")
    except UsageError as exc:  # the name becomes the target's folder in every bundle
        raise fail(exc.message, hint=exc.hint) from None
    for key, choices in _CHOICES.items():
        if key in data and data[key] not in choices:
            raise fail(f"{key} = {data[key]!r} is not one of {', '.join(choices)}")
    from .backends import BACKENDS

    if data["backend"] not in BACKENDS:
        raise fail(
            f"backend = {data['backend']!r} is not one of {', '.join(sorted(BACKENDS))}"
        )
    threads = data.get("threads", 2)
    if not 1 <= threads <= 256:
        raise fail(f"threads = {threads} must be between 1 and 256")

    tol_raw = data.get("tolerance", {})
    tol_fields = {f: float for f in Tolerance.__dataclass_fields__}
    tol: dict[str, float | None] = {}
    for key, value in tol_raw.items():
        if key not in tol_fields:
            raise fail(f"unknown key tolerance.{key}", hint=f"allowed: {', '.join(tol_fields)}")
        if value is False:  # `max_abs = false`: this check is off
            tol[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise fail(f"tolerance.{key} must be a non-negative number (or false to switch "
                       f"the check off), got {value!r}")
        tol[key] = float(value)
    for key in ("min_cosine", "min_top1_agreement"):
        if tol.get(key) is not None and tol[key] > 1:
            raise fail(f"tolerance.{key} = {tol[key]} must be at most 1")

    acc = data.get("accuracy", {})
    for key in acc:
        if key != "max_drop":
            raise fail(f"unknown key accuracy.{key}", hint="allowed: max_drop")
    drop = acc.get("max_drop", 1.0)
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not drop >= 0:
        raise fail(f"accuracy.max_drop must be a non-negative number, got {drop!r}")

    return TargetProfile(
        name=data["name"],
        backend=data["backend"],
        arch=data.get("arch", "x86_64"),
        device=data.get("device", "cpu"),
        precision=data.get("precision", "fp32"),
        layout=data.get("layout", "nchw"),
        threads=threads,
        description=data.get("description", ""),
        tolerance=Tolerance(**tol),
        max_accuracy_drop=float(drop),
        options=dict(data.get("options", {})),
        source=source,
    )
