"""Build recipes: a small TOML file a build system passes to ``edgekit build --recipe``.

Example (a zoo model, trained from a seed)::

    model = "cnn"
    targets = ["x86-tflite-fp32"]
    epochs = 2          # 0: export the initialised (or loaded) weights without training
    seed = 0

Example (a user model from an importable factory, with trained weights)::

    model = "mymodels.kws:build"        # module:factory, no arguments
    input_shapes = ["1x1x49x10"]         # one per input; "int64:1x64" for token inputs
    input_names = ["mfcc"]               # optional
    output_names = ["logits"]            # optional
    weights = "weights/kws.pt"           # optional state_dict, relative to this file
    targets = ["x86-tflite-fp32", "targets/my-board.toml"]
    name = "kws"                         # optional bundle name (default: the output folder's)

    [quantization]                       # optional: int8 settings (QuantConfig fields)
    method = "percentile"
    keep_float = ["head"]

``[quantization]`` overrides each int8 target profile's own ``[quantization]`` key by key, and
``build_recipe(..., quantization=...)`` overrides the recipe's (profile < recipe < argument).

Names are checked when the recipe is read (ConfigError naming the key and the file): target
names and ``name`` as plain file names (:func:`edgekit.fsio.check_name`), ``input_names`` and
``output_names`` as tensor names (:func:`edgekit.fsio.check_tensor_name`: letters, digits, ``_``,
``.``, ``:``, ``-``); an entry of ``targets`` ending in ``.toml`` or holding ``/`` is a profile
file.

Relative paths (``weights``, profile ``.toml`` files) are read relative to the recipe's folder,
and the recipe's folder is importable for ``module:factory``. The manifest stores the recipe as
written (no absolute paths) plus the weights file's sha256.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch

from .bundle import Bundle
from .errors import ConfigError, EdgekitError, UsageError
from .fsio import check_name, check_tensor_name
from .manifest import StageRecord, add_stage
from .schema import Field, check_table

__all__ = ["Recipe", "load_recipe", "load_weights", "parse_recipe", "build_recipe"]

_KEYS: dict[str, type | Field] = {
    "model": str,
    "targets": list,
    "input_shapes": list,
    "input_names": list,
    "output_names": list,
    "epochs": Field(int, low=0),
    "seed": Field(int, low=0),
    "weights": str,
    "trust_weights": bool,  # unpickle `weights` fully (runs code from it): trusted files only
    "name": str,
    "verify_samples": Field(int, low=1),
    "prune": dict,  # optional [prune] table, zoo models only: see edgekit.prune.recipe
    "quantization": dict,  # optional [quantization] table: edgekit.quantize.QuantConfig fields
}


@dataclass
class Recipe:
    model: str
    targets: list[str]
    source: str = "<dict>"
    base_dir: Path = field(default_factory=Path.cwd)
    input_shapes: list[str] = field(default_factory=list)
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    epochs: int | None = None
    seed: int = 0
    weights: str | None = None
    trust_weights: bool = False
    name: str | None = None
    verify_samples: int = 200
    quantization: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_zoo(self) -> bool:
        return ":" not in self.model

    def path_of(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.base_dir / p

    def target_refs(self) -> list[str]:
        """Target names as given, with .toml paths made relative to the recipe's folder."""
        return [
            str(self.path_of(t)) if (t.endswith(".toml") or "/" in t) else t for t in self.targets
        ]

    def weights_path(self) -> Path | None:
        return None if self.weights is None else self.path_of(self.weights)

    def dependencies(self) -> list[Path]:
        """Files the build reads besides edgekit itself (for build-system dependency lists)."""
        deps = [Path(self.source)]
        if self.weights_path() is not None:
            deps.append(self.weights_path())  # type: ignore[arg-type]
        deps += [Path(t) for t in self.target_refs() if t.endswith(".toml") or "/" in t]
        if not self.is_zoo:
            module = self.model.partition(":")[0]
            candidate = self.base_dir / (module.replace(".", "/") + ".py")
            if candidate.is_file():
                deps.append(candidate)
        return deps


def _fail(source: str, msg: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"recipe {source}: {msg}", hint=hint)


def _check_names(data: dict[str, Any], source: str) -> None:
    """Target, bundle and tensor names as plain names (never paths), named by key and file.
    A target given as a path (``*.toml`` or with '/') is a profile file; its own ``name`` is
    checked when the profile is loaded."""
    try:
        for target in data["targets"]:
            if not (target.endswith(".toml") or "/" in target):
                check_name(target, "targets: target")
        if "name" in data:
            try:
                check_name(data["name"], "name")
            except UsageError as exc:
                raise UsageError(exc.message, hint="use a plain bundle name such as 'kws'") \
                    from None
        for key in ("input_names", "output_names"):
            for value in data.get(key, []):
                check_tensor_name(value, f"{key}: name")
    except UsageError as exc:
        raise _fail(source, exc.message, hint=exc.hint) from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist",
                          hint="pass the path of a .toml recipe")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _fail(str(path), f"not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _fail(str(path), f"not valid TOML: {exc}",
                    hint="fix the syntax at the line and column named above") from exc
    return parse_recipe(data, source=str(path), base_dir=path.parent)


def parse_recipe(data: dict[str, Any], *, source: str = "<dict>",
                 base_dir: Path | None = None) -> Recipe:
    """Validate a recipe's parsed TOML; every problem names the file and the key."""
    from .models import list_models

    if not isinstance(data, dict):
        raise _fail(source, "the top level must be a table")
    check_table(data, _KEYS, where=f"recipe {source}")
    for key in ("model", "targets"):
        if key not in data:
            raise _fail(source, f"missing required key {key!r}")
    for key in ("targets", "input_shapes", "input_names", "output_names"):
        if key in data and not all(isinstance(v, str) and v for v in data[key]):
            raise _fail(source, f"{key!r} must be a list of non-empty strings, got {data[key]!r}")
    if not data["targets"]:
        raise _fail(source, "'targets' is empty", hint="e.g. targets = [\"x86-tflite-fp32\"]")
    _check_names(data, source)
    model = data["model"]
    if ":" in model:
        if not data.get("input_shapes"):
            raise _fail(source, f"model {model!r} is a module:factory and needs 'input_shapes'",
                        hint='e.g. input_shapes = ["1x3x32x32"]')
        if "epochs" in data and data["epochs"] != 0:
            raise _fail(source, "'epochs' is for zoo models; user models are exported as given",
                        hint="train your model yourself and pass its state_dict as 'weights'")
    else:
        if model not in list_models(realistic=True):
            raise _fail(source, f"model {model!r} is neither a zoo model nor module:factory",
                        hint=f"zoo models: {', '.join(list_models(realistic=True))}")
        for key in ("input_shapes", "input_names", "output_names"):
            if key in data:
                raise _fail(source, f"{key!r} is only for user models (module:factory)")
    if "prune" in data:
        from .prune.recipe import check_prune_table

        if ":" in model:
            raise _fail(source, "[prune] is for zoo models (it fine-tunes on the model's task)",
                        hint="prune your model with edgekit.prune.prune, then export it")
        check_prune_table(data["prune"], source)
    if "quantization" in data:
        from .quantize.config import QuantConfig

        QuantConfig.from_table(data["quantization"], f"recipe {source} [quantization]")
    if "input_shapes" in data:
        from .api import parse_input_spec

        for text in data["input_shapes"]:
            try:
                parse_input_spec(text)
            except EdgekitError as exc:
                raise _fail(source, f"input_shapes: {exc.message}", hint=exc.hint) from exc
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    recipe = Recipe(
        model=model,
        targets=list(data["targets"]),
        source=source,
        base_dir=base,
        input_shapes=list(data.get("input_shapes", [])),
        input_names=data.get("input_names"),
        output_names=data.get("output_names"),
        epochs=data.get("epochs"),
        seed=data.get("seed", 0),
        weights=data.get("weights"),
        trust_weights=bool(data.get("trust_weights", False)),
        name=data.get("name"),
        verify_samples=data.get("verify_samples", 200),
        quantization=dict(data.get("quantization", {})),
        raw=dict(data),
    )
    wp = recipe.weights_path()
    if wp is not None and not wp.is_file():
        what = "does not exist" if not wp.exists() else \
            "is not a regular file (a FIFO, device or folder): refused"
        raise _fail(source, f"weights = {recipe.weights!r}: file {wp} {what}")
    return recipe


def _sha256(path: Path) -> str:
    from .bundle import sha256_file

    return sha256_file(path)


def _load_weights(recipe: Recipe, model: torch.nn.Module) -> None:
    path = recipe.weights_path()
    if path is not None:
        load_weights(model, path, trust=recipe.trust_weights,
                     where=f"recipe {recipe.source}: weights = {recipe.weights!r}")


def load_weights(model: torch.nn.Module, path: str | Path, *, trust: bool, where: str) -> None:
    """Load a state_dict file (``trust``: a whole pickled module too) into ``model``; a refused,
    truncated or misfitting file is a ConfigError starting with ``where``."""
    from .checkpoint import load_checkpoint
    from .errors import DataError

    try:
        state = load_checkpoint(path, trust=trust)
    except DataError as exc:  # refused globals, truncated files, non-tensor payloads
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
    if trust and isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ConfigError(f"{where}: {path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{where} do not fit {type(model).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}") from exc


def _quantization(recipe: Recipe, profiles: list[Any], argument: Any) -> Any:
    """The recipe's ``[quantization]`` overridden by ``argument`` (a QuantConfig wins whole);
    None when no chosen target is int8 (the table then has nothing to configure)."""
    from .quantize.config import QuantConfig

    if not any(p.precision == "int8" for p in profiles):
        return argument
    if isinstance(argument, QuantConfig):
        return argument
    if argument is not None and not isinstance(argument, dict):
        raise UsageError("quantization must be a QuantConfig or a dict, got "
                         f"{type(argument).__name__}")
    merged = {**recipe.quantization, **(argument or {})}
    return merged or None


def build_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    targets: list[str] | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
    overwrite: bool = False,
    quantization: Any = None,
) -> Bundle:
    """Build a recipe into a bundle at ``out_dir``.

    ``targets`` restricts the build to some of the recipe's targets. With ``cache`` a zoo model
    that would be trained gets a key over the recipe before training (a hit skips training);
    every other recipe is keyed by :func:`edgekit.compress` over the model's weights.
    ``overwrite``: see :func:`edgekit.compress`. ``quantization`` (a dict or a QuantConfig)
    overrides the recipe's ``[quantization]`` as ``compress(quantization=...)`` overrides a
    profile's.
    """
    from . import cache as _cache
    from .api import load_factory, parse_input_spec
    from .bundle import check_out_dir
    from .models import get_spec
    from .pipeline import compress
    from .profiles import resolve_targets

    check_out_dir(out_dir, overwrite=overwrite)  # before any training
    chosen = list(recipe.targets)
    if targets:
        unknown = [t for t in targets if t not in recipe.targets]
        if unknown:
            raise _fail(recipe.source, f"--target {', '.join(unknown)} is not in the recipe's "
                        f"targets ({', '.join(recipe.targets)})")
        chosen = [t for t in recipe.targets if t in targets]
    refs = dict(zip(recipe.targets, recipe.target_refs()))
    profiles = resolve_targets([refs[t] for t in chosen])  # fail fast, before any training
    weights_sha = None if recipe.weights_path() is None else _sha256(recipe.weights_path())
    quant = _quantization(recipe, profiles, quantization)
    manifest_recipe: dict[str, Any] = {**recipe.raw, "targets": chosen}
    if quantization is not None and quant is not None:  # what was built, for the cache key too
        manifest_recipe["quantization"] = quant if isinstance(quant, dict) else quant.to_json()
    if weights_sha is not None:
        manifest_recipe["weights_sha256"] = weights_sha

    if recipe.is_zoo:
        spec = get_spec(recipe.model)
        epochs = spec.default_epochs if recipe.epochs is None else recipe.epochs
        train = epochs > 0
        name = recipe.name or recipe.model
        key = None
        if cache and train:
            key = _cache.recipe_key({**manifest_recipe, "epochs": epochs, "name": name},
                                    weights_sha256=weights_sha, profiles=profiles)
            hit = _cache.restore(key, out_dir, cache_dir=cache, progress=progress,
                                 overwrite=overwrite)
            if hit is not None:
                return hit
        torch.manual_seed(recipe.seed)
        model = spec.factory()
        _load_weights(recipe, model)
        task = spec.task()
        history: list[StageRecord] = []
        if train:
            from . import train as _train

            _train.fit(model, task, epochs=epochs, seed=recipe.seed, progress=progress,
                       spec=spec)
            test = _train.evaluate(model, task.test, task)
            add_stage(history, "train", task=task.name, epochs=epochs, metric=task.metric,
                      test=round(float(test), 4))
        if "prune" in recipe.raw:
            from .prune.recipe import apply_prune_table

            apply_prune_table(model, spec, task, recipe.raw["prune"], history, targets=profiles,
                              seed=recipe.seed, progress=progress)
        model.eval()
        bundle = compress(
            model, spec.example_inputs(1), targets=profiles, out_dir=out_dir, name=name,
            input_names=spec.input_names, output_names=spec.output_names, task=task,
            recipe=manifest_recipe, history=history, verify_samples=recipe.verify_samples,
            progress=progress, cache=cache if not train else False, overwrite=overwrite,
            quantization=quant,
        )
        if key is not None:
            _cache.store(key, out_dir, cache_dir=cache)
        return bundle

    base = str(recipe.base_dir.resolve())
    if base not in sys.path:
        sys.path.insert(0, base)
    inputs = tuple(parse_input_spec(s) for s in recipe.input_shapes)
    model = load_factory(recipe.model)
    _load_weights(recipe, model)
    model.eval()
    return compress(
        model, inputs, targets=profiles, out_dir=out_dir, name=recipe.name,
        input_names=recipe.input_names, output_names=recipe.output_names,
        recipe=manifest_recipe, progress=progress, cache=cache, overwrite=overwrite,
        quantization=quant,
    )

