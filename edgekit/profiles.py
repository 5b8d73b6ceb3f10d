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

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from .errors import BundleError, ConfigError, UnknownNameError, UsageError
from .fsio import check_name, open_regular
from .schema import Field, check_table

__all__ = ["Tolerance", "TargetProfile", "load_profile", "list_profiles", "resolve_targets",
           "PRECISIONS"]

PRECISIONS = ("fp32", "int8")
ARCHES = ("x86_64", "aarch64", "armv7l")
DEVICES = ("cpu", "cuda", "remote")
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
    threads: int = 2
    description: str = ""
    tolerance: Tolerance = field(default_factory=Tolerance)
    max_accuracy_drop: float = 1.0
    #: Backend-specific settings (e.g. inference_precision), checked by the backend's
    #: ``options_schema`` when the profile is read.
    options: dict[str, Any] = field(default_factory=dict)
    #: The ``[quantization]`` table (int8 profiles): QuantConfig fields this target sets; a
    #: recipe's ``[quantization]`` and ``compress(quantization=...)`` override them.
    quantization: dict[str, Any] = field(default_factory=dict)
    #: The ``[gate]`` table (int8 profiles): held-out fidelity thresholds of a build without a
    #: task (see :mod:`edgekit.quantize.gate`).
    gate: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data


#: Top-level keys of a profile (``backend``'s choices come from the registry when read).
_TOP_KEYS: dict[str, Any] = {
    "name": str, "description": str, "backend": str, "arch": ARCHES, "device": DEVICES,
    "precision": PRECISIONS, "threads": Field(int, low=1, high=256),
    "tolerance": dict, "accuracy": dict, "options": dict, "quantization": dict, "gate": dict,
}  # fmt: skip


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
    if "layout" in data:
        raise fail("layout is not supported; remove it",
                   hint="artifacts take inputs in the PyTorch model's layout (NCHW for images)")
    from .backends import BACKENDS

    where = f"target profile {source}"
    schema = {**_TOP_KEYS, "backend": tuple(sorted(BACKENDS))}
    check_table(data, schema, where=where)
    for key in ("name", "backend"):
        if key not in data:
            raise fail(f"missing required key {key!r}")
    try:
        check_name(data["name"], "name")
    except UsageError as exc:  # the name becomes the target's folder in every bundle
        raise fail(exc.message, hint=exc.hint) from None
    threads = data.get("threads", 2)
    tol = check_table(data.get("tolerance", {}), {
        "max_abs": Field(float, low=0, off=True),
        "min_cosine": Field(float, low=0, high=1, off=True),
        "min_top1_agreement": Field(float, low=0, high=1, off=True),
    }, where=where, prefix="tolerance.")
    acc = check_table(data.get("accuracy", {}), {"max_drop": Field(float, low=0)},
                      where=where, prefix="accuracy.")
    drop = acc.get("max_drop", 1.0)

    return TargetProfile(
        name=data["name"],
        backend=data["backend"],
        arch=data.get("arch", "x86_64"),
        device=data.get("device", "cpu"),
        precision=data.get("precision", "fp32"),
        threads=threads,
        description=data.get("description", ""),
        tolerance=Tolerance(**tol),
        max_accuracy_drop=float(drop),
        options=validate_options(data.get("options", {}), data["backend"],
                                 where=f"target profile {source} [options]"),
        quantization=_quantization_table(data, source),
        gate=_gate_table(data, source),
        source=source,
    )


def validate_options(options: Mapping[str, Any], backend: str, *, where: str) -> dict[str, Any]:
    """``options`` checked by ``backend``'s ``options_schema``: an unknown key (with the
    closest known one), a wrong type or value raises ConfigError naming ``where`` and the key."""
    from .backends import get_backend

    return check_table(options, get_backend(backend).options_schema, where=where)


def _quantization_table(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The profile's ``[quantization]`` table, checked like every quantization table."""
    table = data.get("quantization", {})
    if not table:
        return {}
    where = f"target profile {source} [quantization]"
    if data.get("precision", "fp32") != "int8":
        raise ConfigError(f"{where}: quantization settings need precision = \"int8\"",
                          hint="remove the [quantization] table or make the profile int8")
    from .quantize.config import QuantConfig

    QuantConfig.from_table(table, where)
    return dict(table)


def _gate_table(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The profile's ``[gate]`` table (held-out fidelity thresholds), checked."""
    table = data.get("gate", {})
    if not table:
        return {}
    where = f"target profile {source} [gate]"
    if data.get("precision", "fp32") != "int8":
        raise ConfigError(f"{where}: the fidelity gate needs precision = \"int8\"",
                          hint="remove the [gate] table or make the profile int8")
    from .quantize.gate import GATE_SCHEMA

    return check_table(table, GATE_SCHEMA, where=where, prefix="gate.")


def resolve_targets(
    targets: Sequence[str | Path | TargetProfile] | str | Path | TargetProfile,
) -> list[TargetProfile]:
    """Load profiles and check that this edgekit can build them and their runtime is installed:
    names valid and distinct, precision fp32 or int8, device cpu, backend (and its int8
    packages) importable; :class:`~edgekit.errors.EdgekitError` subclasses otherwise."""
    from .backends import get_backend
    from .errors import BackendMissingError, NotSupportedError

    if isinstance(targets, (str, Path, TargetProfile)):
        targets = [targets]
    if not targets:
        raise UsageError("no targets given", hint="pass at least one; `edgekit targets` lists them")
    profiles = [t if isinstance(t, TargetProfile) else load_profile(t) for t in targets]
    for profile in profiles:  # the name becomes the target's folder: never a path
        check_name(profile.name, "target name", where=profile.source or None)
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise UsageError(f"a target is named twice: {', '.join(names)}")
    for profile in profiles:
        if profile.precision not in ("fp32", "int8"):
            raise NotSupportedError(
                f"target {profile.name} asks for {profile.precision}; this edgekit version "
                "builds fp32 and int8 artifacts",
                hint=f"use an fp32 or int8 target, e.g. "
                f"{profile.name.replace(profile.precision, 'fp32')}",
            )
        if profile.device != "cpu":
            raise NotSupportedError(
                f"target {profile.name} is for device {profile.device!r}; builds run for cpu only"
            )
        backend = get_backend(profile.backend)
        reason = backend.available()
        if reason is not None:
            raise BackendMissingError(profile.backend, reason, backend.extra)
        if profile.precision == "int8" and not hasattr(backend, "quantize"):
            raise NotSupportedError(f"backend {profile.backend} has no int8 export "
                                    f"(target {profile.name})")
        if profile.precision == "int8":
            missing = backend.int8_available()
            if missing:
                raise BackendMissingError(profile.backend, missing, backend.extra)
    return profiles
