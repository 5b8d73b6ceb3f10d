"""The typed ``manifest.json``: what a bundle holds, checked in one place.

:class:`Manifest` is the whole file (schema version, name, tool versions, recipe, the model's
I/O specs, the reference data's :class:`FileRecord`, one :class:`TargetEntry` per target and
the :class:`StageRecord` history). :meth:`Manifest.from_json` is the only schema check: every
violation is a :class:`~edgekit.errors.BundleError` naming the file and the key.
:meth:`Manifest.to_json` gives back the same JSON (key names and layout unchanged; keys it
does not know are kept), so old bundles still read and a build's bytes do not change.

Free-form parts stay dicts (the profile, ``artifact_info``, ``runtime``, ``verification``,
``quantization``, tensor specs that may carry quantization parameters); the numbers read in
several places have accessors (:attr:`TargetEntry.max_abs_diff`, :attr:`TargetEntry.threads`).

Example::

    manifest = Manifest.from_json(json.loads(text), "build/cnn/manifest.json")
    manifest.targets["x86-onnxruntime-fp32"].backend          # 'onnxruntime'
    manifest.add_stage("verify", target="x86-onnxruntime-fp32", passed=True, batches=51)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import BundleError

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "STAGE_KINDS",
    "FileRecord",
    "Manifest",
    "ModelRecord",
    "StageRecord",
    "TargetEntry",
    "add_stage",
    "listed_paths",
    "stage_records",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: The stages that append a record to a manifest's history, in pipeline order.
STAGE_KINDS = ("train", "prune", "quantize", "export", "verify")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_spec(spec: Any) -> bool:
    return (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list)
            and all(_int(d) for d in spec["shape"]))


def _specs(value: Any, where: str, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(_valid_spec(s) for s in value):
        raise BundleError(f"{where}: {key!r} must be a list of {{name, shape (list of "
                          "integers), dtype}")
    return list(value)


def _table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {key!r} must be an object")
    return value


def _rest(data: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in set(known)}


@dataclass
class FileRecord:
    """One file a bundle lists: its path inside the bundle, sha256 and size in bytes."""

    path: str
    sha256: str
    bytes: int | None = None
    #: other keys of the record (the reference file's ``pairs``), kept as they are.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, rec: Any, where: str) -> FileRecord:
        """Check one file entry: a relative path that stays inside the bundle, a sha256."""
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) \
                or not isinstance(rec.get("sha256"), str) or not rec.get("sha256"):
            raise BundleError(f"{where}: incomplete file entry {rec!r}")
        text = rec["path"]
        rel = Path(text)
        if (not text or "\0" in text or "\\" in text or rel.is_absolute() or ".." in rel.parts
                or text.strip() in (".", "")):
            raise BundleError(f"{where}: unsafe or incomplete file entry {rec!r}")
        size = rec.get("bytes")
        if not _int(size):  # absent, or not a size: kept as it is, never trusted
            return cls(text, rec["sha256"], None, _rest(rec, ("path", "sha256")))
        return cls(text, rec["sha256"], size, _rest(rec, ("path", "sha256", "bytes")))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256}
        if self.bytes is not None:
            out["bytes"] = self.bytes
        return out | self.extra


@dataclass
class StageRecord:
    """One stage's entry in the history: its ``kind`` and what it recorded (plain JSON)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, rec: Any, where: str) -> StageRecord:
        if not isinstance(rec, dict) or not isinstance(rec.get("stage"), str):
            raise BundleError(f"{where}: each 'history' record must be an object with a "
                              f"'stage' string, got {rec!r}")
        return cls(rec["stage"], _rest(rec, ("stage",)))

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.kind, **self.data}


def add_stage(history: list[StageRecord], kind: str, **data: Any) -> StageRecord:
    """Append one stage's record to ``history`` (``kind`` one of :data:`STAGE_KINDS`): how
    training, pruning, quantization, export and verification all record what they did."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage {kind!r}; stages: {', '.join(STAGE_KINDS)}")
    record = StageRecord(kind, data)
    history.append(record)
    return record


def stage_records(history: Iterable[StageRecord | Mapping[str, Any]],
                  where: str = "history") -> list[StageRecord]:
    """Stage records from records or their JSON (``{"stage": ..., ...}``), in order."""
    return [h if isinstance(h, StageRecord)
            else StageRecord.from_json(dict(h) if isinstance(h, Mapping) else h, where)
            for h in history]


@dataclass
class TargetEntry:
    """One target of a bundle: the artifact's files and I/O specs, and how it was built."""

    backend: str
    precision: str
    files: list[FileRecord]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    #: the target profile as built (``TargetProfile.to_json()``); None in hand-made bundles.
    profile: dict[str, Any] | None = None
    artifact_info: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[tuple[str, ...]] = ("profile", "artifact_info", "runtime",
                                            "verification", "quantization")

    @classmethod
    def from_json(cls, entry: Any, file: str, target: str) -> TargetEntry:
        """Check one target's entry of the manifest ``file``."""
        where = f"{file}: target {target!r}"
        if not isinstance(entry, dict):
            raise BundleError(f"{where} must be an object")
        for key in ("backend", "precision", "files", "inputs", "outputs"):
            if key not in entry:
                raise BundleError(f"{where} lacks {key!r}")
        for key in ("backend", "precision"):
            if not isinstance(entry[key], str):
                raise BundleError(f"{where}: {key!r} must be a string")
        if not isinstance(entry["files"], list) or not entry["files"]:
            raise BundleError(f"{where}: 'files' must be a non-empty list")
        optional = {k: _table(entry[k], where, k) for k in cls._OPTIONAL
                    if entry.get(k) is not None}
        return cls(
            backend=entry["backend"], precision=entry["precision"],
            files=[FileRecord.from_json(r, file) for r in entry["files"]],
            inputs=_specs(entry["inputs"], where, "inputs"),
            outputs=_specs(entry["outputs"], where, "outputs"),
            extra=_rest(entry, ("backend", "precision", "files", "inputs", "outputs",
                                *cls._OPTIONAL)) | {k: None for k in cls._OPTIONAL
                                                    if k in entry and entry[k] is None},
            **optional,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.backend, "precision": self.precision,
            "files": [f.to_json() for f in self.files],
            "inputs": self.inputs, "outputs": self.outputs,
        }
        for key in self._OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out | self.extra

    @property
    def size_bytes(self) -> int:
        """Bytes of every file of the artifact, as recorded."""
        return sum(f.bytes or 0 for f in self.files)

    @property
    def threads(self) -> int:
        """The profile's thread count (2 where the bundle records no profile)."""
        return int((self.profile or {}).get("threads", 2))

    @property
    def options(self) -> dict[str, Any]:
        """The profile's backend ``[options]``."""
        return dict((self.profile or {}).get("options", {}))

    @property
    def tolerance(self) -> dict[str, Any] | None:
        """The profile's verification tolerance, if recorded."""
        return (self.profile or {}).get("tolerance")

    @property
    def verified_outputs(self) -> list[dict[str, Any]]:
        """Per-output verification numbers (``name``, ``max_abs``, ``cosine``, ...)."""
        return list((self.verification or {}).get("outputs", []))

    @property
    def max_abs_diff(self) -> float:
        """Largest absolute difference from PyTorch over every output at build time."""
        return max(o["max_abs"] for o in self.verified_outputs)

    @property
    def min_cosine(self) -> float:
        """Smallest cosine similarity to PyTorch over every output at build time."""
        return min(o["cosine"] for o in self.verified_outputs)


@dataclass
class ModelRecord:
    """The PyTorch model a bundle was built from: class, parameter count, I/O specs, task."""

    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    class_name: str | None = None
    parameters: int | None = None
    #: ``{"name", "kind", "metric"}`` of the task, or None.
    task: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, where: str) -> ModelRecord:
        data = _table(data, where, "model")
        specs = {k: _specs(data[k], f"{where}: 'model'", k) for k in ("inputs", "outputs")
                 if k in data}
        if data.get("task") is not None:
            _table(data["task"], f"{where}: 'model'", "task")
        known = ("inputs", "outputs", "class", "parameters", "task")
        return cls(**specs, class_name=data.get("class"), parameters=data.get("parameters"),
                   task=data.get("task"), extra=_rest(data, known) | {
                       k: data[k] for k in ("class", "parameters", "task")
                       if k in data and data[k] is None})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("class", self.class_name), ("parameters", self.parameters),
                           ("inputs", self.inputs), ("outputs", self.outputs),
                           ("task", self.task)):
            if value is not None:
                out[key] = value
        return out | self.extra

    @property
    def input_names(self) -> list[str]:
        return [s["name"] for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s["name"] for s in self.outputs]

    @property
    def is_classifier(self) -> bool:
        """Whether the task is a classification (its first output holds class scores)."""
        return (self.task or {}).get("kind") == "classification"


@dataclass
class Manifest:
    """A bundle's ``manifest.json``, typed. Optional parts are None where a bundle lacks them."""

    name: str
    targets: dict[str, TargetEntry]
    schema_version: int = SCHEMA_VERSION
    versions: dict[str, str] | None = None
    recipe: dict[str, Any] | None = None
    model: ModelRecord | None = None
    reference: FileRecord | None = None
    history: list[StageRecord] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN: ClassVar[tuple[str, ...]] = ("schema_version", "name", "targets", "versions",
                                         "recipe", "model", "reference", "history")

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> Manifest:
        """Check parsed ``manifest.json`` against the schema; ``where`` names the file in every
        :class:`~edgekit.errors.BundleError`."""
        where = str(where)
        if not isinstance(data, dict):
            raise BundleError(f"{where}: the top level must be an object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION or not _int(version):
            raise BundleError(
                f"{where}: schema_version {version!r} is not supported "
                f"(this edgekit reads {SCHEMA_VERSION})",
                hint="rebuild the bundle with this edgekit version",
            )
        for key in ("name", "targets"):
            if key not in data:
                raise BundleError(f"{where}: missing key {key!r}")
        if not isinstance(data["name"], str) or not isinstance(data["targets"], dict):
            raise BundleError(f"{where}: 'name' must be a string and 'targets' an object")
        targets = {str(t): TargetEntry.from_json(e, where, str(t))
                   for t, e in data["targets"].items()}
        for key in ("versions", "recipe"):
            if data.get(key) is not None:
                _table(data[key], where, key)
        history = data.get("history")
        if history is not None and not isinstance(history, list):
            raise BundleError(f"{where}: 'history' must be a list")
        return cls(
            name=data["name"], targets=targets, schema_version=version,
            versions=data.get("versions"), recipe=data.get("recipe"),
            model=None if data.get("model") is None else ModelRecord.from_json(data["model"],
                                                                             where),
            reference=None if "reference" not in data
            else FileRecord.from_json(data["reference"], where),
            history=None if history is None else stage_records(history, where),
            extra=_rest(data, cls._KNOWN) | {k: None for k in ("versions", "recipe", "model",
                                                               "history")
                                             if k in data and data[k] is None},
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON data (what :meth:`from_json` read, for the same keys)."""
        out: dict[str, Any] = {"schema_version": self.schema_version, "name": self.name}
        if self.versions is not None:
            out["versions"] = self.versions
        if self.recipe is not None:
            out["recipe"] = self.recipe
        if self.model is not None:
            out["model"] = self.model.to_json()
        out["targets"] = {t: e.to_json() for t, e in self.targets.items()}
        if self.reference is not None:
            out["reference"] = self.reference.to_json()
        if self.history is not None:
            out["history"] = [h.to_json() for h in self.history]
        return out | self.extra

    def add_stage(self, kind: str, **data: Any) -> StageRecord:
        """Append one stage's record to the history (``kind`` one of :data:`STAGE_KINDS`)."""
        if self.history is None:
            self.history = []
        return add_stage(self.history, kind, **data)

    def stages(self, kind: str) -> list[StageRecord]:
        """The history's records of one ``kind``, in order."""
        return [h for h in self.history or [] if h.kind == kind]

    def files(self) -> list[FileRecord]:
        """Every file the manifest lists: each target's, then the reference data's."""
        records = [rec for t in sorted(self.targets) for rec in self.targets[t].files]
        return records + ([self.reference] if self.reference is not None else [])

    def listed_paths(self) -> set[str]:
        """The normalised paths of every listed file, ``manifest.json`` included."""
        return listed_paths(self.to_json()) or {MANIFEST}


def listed_paths(data: Any) -> set[str] | None:
    """The normalised paths parsed manifest ``data`` lists (``manifest.json`` included), or None
    when it is not an edgekit manifest (no integer ``schema_version`` or no ``targets`` object).

    Read leniently, for deciding which files of a folder edgekit wrote: a manifest that fails
    :meth:`Manifest.from_json` in one entry still claims the files its other entries list.
    """
    if not (isinstance(data, dict) and isinstance(data.get("schema_version"), int)
            and isinstance(data.get("targets"), dict)):
        return None
    records = [data.get("reference")]
    for entry in data["targets"].values():
        files = entry.get("files") if isinstance(entry, dict) else None
        records += files if isinstance(files, list) else []
    return {MANIFEST} | {os.path.normpath(rec["path"]) for rec in records
                         if isinstance(rec, dict) and isinstance(rec.get("path"), str)}
