"""The search space: which knobs a search turns and the values each may take.

Keys::

    prune_ratio        float range, 0 .. 0.7 (0 = not pruned)
    importance         l1, l2, bn_scale, taylor (pruning importance)
    threads            runtime threads for the latency measurement and the bundle
    option.<key>       a runtime option of the target's backend (profile [options], e.g.
                       option.performance_hint for OpenVINO): the values given
    quant.<key>        a key of a [quantization] table in edgekit.quantize.config.TABLE_SCHEMA
                       (int8 targets only): choice and on/off keys take their allowed values by
                       default, numeric keys (smoothquant_alpha) the values given
    quant.keep_float   layers kept in float, each value a set written ``none`` or
                       ``layer+layer`` (e.g. ``none``, ``head``, ``features.0+head``)

A space is given as a dict: a ``(low, high)`` tuple or ``"low..high"`` is a float range, a list
is a set of choices::

    space = {"prune_ratio": (0.0, 0.5), "importance": ["l2"],
             "quant.method": ["minmax", "entropy"], "threads": [1, 2]}

Keys left out take the defaults of :func:`default_space`; a key set to one value is fixed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["Choice", "Range", "SearchSpace", "default_space", "option_schemas",
           "parse_space_arg", "point_options", "quant_keys", "split_point", "MAX_PRUNE_RATIO"]

MAX_PRUNE_RATIO = 0.7
#: [quantization] keys a search never turns: they steer how a build measures or falls back,
#: not what is built (latency checks time on the build node, which a search must not do).
_NOT_SEARCHED = {"samples", "max_fallback", "fallback_order", "latency_check",
                 "latency_runs", "latency_max_seconds", "min_speedup", "latency_variants",
                 "extra", "io"}
#: Quantization keys turned by default (when the QuantConfig in use has them); others only
#: when named in the space.
_DEFAULT_QUANT = ("method", "per_channel", "activation_type", "openvino_source",
                  "equalize", "bias_correction", "smoothquant")
#: Which backend each quantization key matters to (others: every backend).
_BACKEND_ONLY = {"activation_type": "onnxruntime", "openvino_source": "openvino",
                 "preset": "openvino"}


@dataclass(frozen=True)
class Range:
    """A float range ``low .. high`` (inclusive)."""

    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""

    values: tuple[Any, ...]

    def to_json(self) -> list[Any]:
        return list(self.values)


Dim = Range | Choice


#: A list-valued key searched over sets of layers, each written as one string.
_LAYER_SETS = "keep_float"


def layer_set(value: Any) -> list[str]:
    """A ``quant.keep_float`` value (``"none"`` or ``"a+b"``) as the layer list."""
    text = str(value).strip()
    return [] if text == "none" else [n for n in text.split("+") if n]


def quant_keys() -> dict[str, tuple[Any, ...]]:
    """Searchable [quantization] keys of the installed QuantConfig and their values (choice
    keys: their allowed values; on/off keys: false, true), read from its TABLE_SCHEMA so keys
    added there are searchable without a change here."""
    from ..quantize.config import TABLE_SCHEMA

    keys: dict[str, tuple[Any, ...]] = {}
    for key, field in TABLE_SCHEMA.items():
        if key in _NOT_SEARCHED:
            continue
        if field.choices:
            keys[key] = tuple(field.choices)
        elif field.kind is bool:
            keys[key] = (False, True)
    return keys


def _known() -> dict[str, tuple[Any, ...] | None]:
    """Every space key with its allowed values (None: numbers, checked by range or schema)."""
    from ..prune.importance import IMPORTANCES
    from ..quantize.config import TABLE_SCHEMA

    known: dict[str, tuple[Any, ...] | None] = {
        "prune_ratio": None, "importance": tuple(IMPORTANCES), "threads": None}
    # numeric keys (e.g. smoothquant_alpha) are searchable over the values given, each
    # checked by the table schema
    known.update({f"quant.{k}": None for k in TABLE_SCHEMA if k not in _NOT_SEARCHED})
    known.update({f"quant.{k}": v for k, v in quant_keys().items()})
    known.update({f"option.{k}": None for k in option_schemas()})
    return known


def option_schemas() -> dict[str, dict[str, Any]]:
    """Each runtime option key (a profile ``[options]`` key of some backend) -> backend ->
    its schema entry."""
    from ..backends import BACKENDS, get_backend

    out: dict[str, dict[str, Any]] = {}
    for name in BACKENDS:
        for key, spec in get_backend(name).options_schema.items():
            out.setdefault(key, {})[name] = spec
    return out


def default_space(max_threads: int = 2) -> dict[str, Dim]:
    """Pruning ratio 0..0.7 by l1/l2 importance, threads 1..``max_threads`` and the default
    quantization keys that the installed QuantConfig has."""
    space: dict[str, Dim] = {
        "prune_ratio": Range(0.0, MAX_PRUNE_RATIO),
        "importance": Choice(("l1", "l2")),
        "threads": Choice(tuple(range(1, max(1, max_threads) + 1))),
    }
    quant = quant_keys()
    for key in _DEFAULT_QUANT:
        if key in quant:
            space[f"quant.{key}"] = Choice(quant[key])
    return space


def _fail(key: str, msg: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"search space {key!r}: {msg}", hint=hint)


def _check_dim(key: str, value: Any, allowed: tuple[Any, ...] | None) -> Dim:
    if isinstance(value, (Range, Choice)):
        dim: Dim = value
    elif isinstance(value, str) and ".." in value:
        low, _, high = value.partition("..")
        try:
            dim = Range(float(low), float(high))
        except ValueError:
            raise _fail(key, f"bad range {value!r}", hint="write it as LOW..HIGH, e.g. 0..0.5") \
                from None
    elif isinstance(value, tuple) and len(value) == 2 and key == "prune_ratio":
        dim = Range(float(value[0]), float(value[1]))
    elif isinstance(value, (list, tuple)):
        dim = Choice(tuple(value))
    else:
        dim = Choice((value,))
    if isinstance(dim, Range):
        if key != "prune_ratio":
            raise _fail(key, "takes a list of values, not a range")
        if not (0.0 <= dim.low <= dim.high <= MAX_PRUNE_RATIO):
            raise _fail(key, f"range {dim.low}..{dim.high} is outside 0..{MAX_PRUNE_RATIO}",
                        hint="pruning ratios above 0.7 leave too little of most models")
        return dim
    if not dim.values:
        raise _fail(key, "has no values")
    for v in dim.values:
        if key == "prune_ratio":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not 0 <= v <= MAX_PRUNE_RATIO:
                raise _fail(key, f"value {v!r} is not a number in 0..{MAX_PRUNE_RATIO}")
        elif key == "threads":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _fail(key, f"value {v!r} is not a positive whole number")
        elif allowed is not None and v not in allowed:
            raise _fail(key, f"value {v!r} is not one of {list(allowed)}")
        elif key.startswith("option."):
            from ..schema import check_table

            name = key[len("option."):]
            errors = []
            for spec in option_schemas()[name].values():  # valid for some backend with it
                try:
                    check_table({name: v}, {name: spec}, where=f"search space {key!r}")
                    break
                except ConfigError as exc:
                    errors.append(exc)
            else:
                raise errors[0]
        elif key == f"quant.{_LAYER_SETS}":
            if not isinstance(v, str) or not v.strip() or (v.strip() != "none"
                                                            and not layer_set(v)):
                raise _fail(key, f"value {v!r} is not a set of layers",
                            hint="write each set as none or layer+layer, e.g. "
                            "quant.keep_float=none,head,features.0+head")
        elif key.startswith("quant."):
            from ..quantize.config import TABLE_SCHEMA
            from ..schema import check_table

            name = key[len("quant."):]
            check_table({name: v}, {name: TABLE_SCHEMA[name]}, where=f"search space {key!r}")
    return dim


@dataclass
class SearchSpace:
    """Named dimensions; :meth:`suggest` draws one point for a target from an Optuna trial."""

    dims: dict[str, Dim]

    @classmethod
    def from_dict(cls, given: Mapping[str, Any] | None = None, *,
                  max_threads: int = 2) -> SearchSpace:
        """The default space with ``given``'s keys set (each checked: unknown keys name the
        closest known one; values outside what the key allows are refused)."""
        known = _known()
        dims = default_space(max_threads)
        for key, value in (given or {}).items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=2, cutoff=0.5)
                raise ConfigError(
                    f"unknown search space key {key!r}; known: {', '.join(sorted(known))}",
                    hint=f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                    else "quantization keys are written quant.<key>, e.g. quant.method")
            dims[key] = _check_dim(key, value, known[key])
        return cls(dims)

    def active(self, backend: str, precision: str) -> dict[str, Dim]:
        """The dimensions that matter for a target: quantization keys only for int8 targets,
        backend-specific ones only for their backend."""
        out: dict[str, Dim] = {}
        for key, dim in self.dims.items():
            if key.startswith("option.") and \
                    backend not in option_schemas().get(key[len("option."):], {}):
                continue
            if key.startswith("quant."):
                if precision != "int8":
                    continue
                only = _BACKEND_ONLY.get(key[len("quant."):])
                if only is not None and only != backend:
                    continue
            out[key] = dim
        return out

    def suggest(self, trial: Any, backend: str, precision: str) -> dict[str, Any]:
        """One point for a target, drawn from an Optuna trial (``suggest_float`` /
        ``suggest_categorical``); fixed dimensions are set without asking."""
        point: dict[str, Any] = {}
        for key, dim in self.active(backend, precision).items():
            if isinstance(dim, Range):
                point[key] = (dim.low if dim.low == dim.high
                              else trial.suggest_float(key, dim.low, dim.high))
            elif len(dim.values) == 1:
                point[key] = dim.values[0]
            else:
                point[key] = trial.suggest_categorical(key, list(dim.values))
        if "prune_ratio" in point:
            point["prune_ratio"] = round(float(point["prune_ratio"]), 3)
        return point

    def default_point(self, profile: Any) -> dict[str, Any]:
        """The parameters of the target's default build (not pruned, the profile's threads
        and quantization settings), for every asked dimension whose range holds that value:
        queued as a search's first trial, so the front always holds the default to beat."""
        import dataclasses

        from ..quantize.config import QuantConfig

        quant = {f.name: f.default for f in dataclasses.fields(QuantConfig)
                 if f.default is not dataclasses.MISSING}
        quant.update(profile.quantization or {})
        quant[_LAYER_SETS] = "+".join(quant.get(_LAYER_SETS) or []) or "none"
        want: dict[str, Any] = {"prune_ratio": 0.0, "threads": profile.threads,
                                **{f"quant.{k}": v for k, v in quant.items()}}
        point: dict[str, Any] = {}
        for key, dim in self.active(profile.backend, profile.precision).items():
            if key not in want:
                continue
            if isinstance(dim, Range):
                if dim.low < dim.high and dim.low <= want[key] <= dim.high:
                    point[key] = want[key]
            elif len(dim.values) > 1 and want[key] in dim.values:
                point[key] = want[key]
        return point

    def to_json(self) -> dict[str, Any]:
        return {k: d.to_json() for k, d in self.dims.items()}


def point_options(point: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime ``[options]`` a point sets."""
    return {k[len("option."):]: v for k, v in point.items() if k.startswith("option.")}


def split_point(point: Mapping[str, Any]) -> tuple[float, str, int | None, dict[str, Any]]:
    """(pruning ratio, importance, threads, the [quantization] dict) of a point."""
    quant = {k[len("quant."):]: v for k, v in point.items() if k.startswith("quant.")}
    if _LAYER_SETS in quant:
        quant[_LAYER_SETS] = layer_set(quant[_LAYER_SETS])
    ratio = float(point.get("prune_ratio", 0.0) or 0.0)
    threads = point.get("threads")
    return ratio, str(point.get("importance", "l2")), \
        None if threads is None else int(threads), quant


def parse_space_arg(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=V1,V2`` or ``KEY=LOW..HIGH`` command-line items as a space dict (values read as
    JSON where they parse: numbers, true/false; else as strings)."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or not text:
            raise ConfigError(f"bad --space {item!r}",
                              hint="write KEY=V1,V2 or prune_ratio=LOW..HIGH, e.g. "
                              "quant.method=minmax,entropy")
        if ".." in text:
            out[key] = text
            continue
        values: list[Any] = []
        for part in text.split(","):
            try:
                v = json.loads(part)
            except ValueError:
                v = part
            if isinstance(v, float) and math.isnan(v):
                v = part
            values.append(v)
        out[key] = values
    return out
