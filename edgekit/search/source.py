"""What a search explores around: a zoo model, a user's ``module:factory`` with its data, or a
recipe of either.

A search scores every point on the model's task. A zoo model brings its task; a user model
brings it as ``.npz`` files (``data``, optional ``val_data``: arrays ``x`` (or ``input_keys``)
and ``y``; integer ``y``: classification scored by top-1, float ``y``: regression by MSE,
:func:`edgekit.prune_cli.user_task`), comes trained (no ``epochs``) and is rebuilt on every Ray
node from its factory: the folder it was imported from (the working directory, or the
recipe's folder) is put on the node's ``sys.path``, so on one machine nothing needs
installing; other machines need the module importable (installed, or the same path)::

    src = ModelSource.resolve("mymodels.kws:build", input_shapes=["1x1x49x10"],
                              data="train.npz", val_data="val.npz")
    spec = model_spec(src.to_json())      # factory(), task(), example_inputs(1), names
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["ModelSource", "UserModelSpec", "model_spec", "bundle_name"]

@dataclass
class ModelSource:
    """What is searched: a zoo model (trained from ``seed`` for ``epochs``, or loaded from
    ``weights``) or a user model (``module:factory``, trained, scored on ``data``), with the
    recipe's quantization and prune settings as the base of every point."""

    model: str
    epochs: int | None = None
    seed: int = 0
    weights: str | None = None
    trust_weights: bool = False
    quantization: dict[str, Any] = field(default_factory=dict)
    prune: dict[str, Any] = field(default_factory=dict)
    fine_tune_epochs: int = 1
    input_shapes: list[str] = field(default_factory=list)
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    data: str | None = None
    val_data: str | None = None
    input_keys: list[str] | None = None
    target_key: str = "y"
    import_path: str | None = None  # put on sys.path before importing the factory

    @property
    def is_user(self) -> bool:
        return ":" in self.model

    @classmethod
    def resolve(cls, model: str | Path, *, epochs: int | None = None, seed: int = 0,
                fine_tune_epochs: int = 1, input_shapes: list[str] | None = None,
                data: str | Path | None = None, val_data: str | Path | None = None,
                input_keys: list[str] | None = None, target_key: str = "y") -> ModelSource:
        """A zoo model name, ``module:factory`` (with ``input_shapes`` and ``data``) or a
        recipe ``.toml`` of either. A user model is checked here, before any Ray task: its
        factory imports and builds, its data loads and fits its inputs."""
        from ..models import list_models

        user = {"input_shapes": input_shapes, "data": data, "val_data": val_data,
                "input_keys": input_keys}
        text = str(model)
        if text.endswith(".toml"):
            from ..recipe import load_recipe

            recipe = load_recipe(text)
            prune = {k: v for k, v in recipe.raw.get("prune", {}).items()
                     if k in ("round_to", "keep", "global", "distill", "fine_tune_epochs")}
            src = cls(model=recipe.model, epochs=recipe.epochs if epochs is None else epochs,
                      seed=recipe.seed, weights=None if recipe.weights_path() is None
                      else str(recipe.weights_path()), trust_weights=recipe.trust_weights,
                      quantization=dict(recipe.quantization), prune=prune,
                      fine_tune_epochs=int(prune.get("fine_tune_epochs", fine_tune_epochs)))
            if not recipe.is_zoo:
                src.input_shapes = list(input_shapes or recipe.input_shapes)
                src.input_names, src.output_names = recipe.input_names, recipe.output_names
                src.import_path = str(recipe.base_dir.resolve())
                return src._user(data, val_data, input_keys, target_key, where=text)
        elif ":" in text:
            src = cls(model=text, epochs=epochs, seed=seed, fine_tune_epochs=fine_tune_epochs,
                      input_shapes=list(input_shapes or []),
                      import_path=str(Path.cwd().resolve()))
            return src._user(data, val_data, input_keys, target_key, where=text)
        elif text in list_models(realistic=True):
            src = cls(model=text, epochs=epochs, seed=seed, fine_tune_epochs=fine_tune_epochs)
        else:
            from ..errors import UnknownNameError

            raise UnknownNameError("model", text, list_models(realistic=True))
        given = [k for k, v in user.items() if v]
        if given:
            raise UsageError(f"{', '.join(given)} given for the zoo model {src.model}, which "
                             "brings its own task data",
                             hint="these are for a user model (module:factory)")
        return src

    def _user(self, data: str | Path | None, val_data: str | Path | None,
              input_keys: list[str] | None, target_key: str, *, where: str) -> ModelSource:
        if not self.input_shapes:
            raise UsageError(f"{where}: a user model needs its input shapes, one per input",
                             hint="--input-shape 1x3x32x32 (int64:1x64 for token inputs), "
                             "or input_shapes in the recipe")
        if not data:
            raise UsageError(
                f"{where}: a search scores every point on the model's task; a user model "
                "needs its data",
                hint="--data train.npz (arrays x and y: integer y classification, float y "
                "regression) and optionally --val-data val.npz")
        if self.epochs:
            raise UsageError(f"{where}: epochs trains zoo models; a user model comes trained",
                             hint="leave --epochs out (--fine-tune-epochs sets the fine-tuning "
                             "after pruning)")
        self.epochs = 0
        self.data = str(Path(data).resolve())
        self.val_data = str(Path(val_data).resolve()) if val_data else None
        self.input_keys = list(input_keys) if input_keys else None
        self.target_key = target_key
        spec = model_spec(self.to_json())
        spec.task()  # the data loads and fits the inputs (DataError naming the file)
        spec.factory()  # the factory imports and builds (UsageError naming it)
        return self

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "epochs": self.epochs, "seed": self.seed,
                               "weights": self.weights, "trust_weights": self.trust_weights,
                               "quantization": self.quantization, "prune": self.prune,
                               "fine_tune_epochs": self.fine_tune_epochs}
        if self.is_user:
            out.update(input_shapes=self.input_shapes, input_names=self.input_names,
                       output_names=self.output_names, data=self.data, val_data=self.val_data,
                       input_keys=self.input_keys, target_key=self.target_key,
                       import_path=self.import_path)
        return out


class UserModelSpec:
    """The parts of a zoo :class:`~edgekit.models.ModelSpec` a search uses, for a user model
    (:meth:`ModelSource.to_json`): ``factory()`` (the trained model, with the recipe's weights
    loaded), ``task()`` (over its ``.npz`` files), ``example_inputs(1)`` (the first training
    samples, as ``edgekit prune`` takes them), ``input_names`` / ``output_names``."""

    default_epochs = 0

    def __init__(self, source: dict[str, Any]) -> None:
        self.source = source
        self.name = str(source["model"])
        self.input_names = source.get("input_names")
        self.output_names = source.get("output_names")
        self._task: Any = None

    def factory(self) -> Any:
        from ..api import load_factory

        path = self.source.get("import_path")
        if path and Path(path).is_dir() and path not in sys.path:
            sys.path.insert(0, path)
        model = load_factory(self.name)
        if self.source.get("weights"):
            from ..recipe import load_weights

            load_weights(model, self.source["weights"],
                         trust=bool(self.source.get("trust_weights")),
                         where=f"weights {self.source['weights']}")
        return model.eval()

    def _shapes(self) -> tuple[Any, ...]:
        from ..api import parse_input_spec

        return tuple(parse_input_spec(s) for s in self.source["input_shapes"])

    def task(self) -> Any:
        if self._task is None:
            from ..prune_cli import user_task

            self._task = user_task(self.source["data"], self.source.get("val_data"),
                                   self.source.get("input_keys"),
                                   self.source.get("target_key") or "y", self._shapes())
        return self._task

    def example_inputs(self, batch: int = 1) -> tuple[Any, ...]:
        """The first training samples, as many per input as its ``input_shapes`` batch (a
        user model's inputs keep the batch sizes they were given; ``batch`` is unused)."""
        from ..prune_cli import first_samples

        return first_samples(self.task().train, self._shapes())


def model_spec(source: dict[str, Any]) -> Any:
    """The zoo model's spec, or a :class:`UserModelSpec` for ``module:factory``."""
    if ":" in str(source["model"]):
        return UserModelSpec(source)
    from ..models import get_spec

    return get_spec(source["model"])


def bundle_name(model: str) -> str:
    """A bundle name for the model: the factory's name for ``module:factory``."""
    return model.rpartition(":")[2] or model
