"""Training and evaluation on a real :class:`~edgekit.data.task.Task`.

``fit`` is the one entry point: when the model comes from the zoo and its spec has its own
``fit`` hook (e.g. the GAN's adversarial loop) that hook runs instead of the generic loop.
Pass ``spec=`` explicitly, or build the model with :func:`edgekit.models.build`, which tags it
with its zoo name.
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.task import Split, Task

__all__ = ["fit", "evaluate", "predict", "distillation_loss", "recalibrate_batch_norm",
           "training_recipe",
           "training_fingerprint", "DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_RECIPE"]

DEFAULT_EPOCHS = 10
DEFAULT_LR = 3e-3
DISTILL_TEMPERATURE = 2.0

#: The generic loop's settings. A model overrides any of them with a ``TRAIN_RECIPE`` dict
#: attribute (the zoo sets it per architecture; ``DEFAULT_LR`` alone still sets the rate), and
#: ``fit``'s own arguments override both:
#:
#: * ``optimizer``: ``"adam"`` (L2 ``weight_decay`` added to the gradient), ``"adamw"``
#:   (decoupled weight decay, not applied to biases and norm weights) or ``"sgd"`` (Nesterov
#:   momentum 0.9);
#: * ``lr``: the peak learning rate; ``weight_decay``;
#: * ``warmup``: fraction of all steps spent ramping the rate linearly from ~0 to ``lr``
#:   (0 = none), then a cosine decay to 0 over the rest;
#: * ``batch_size``;
#: * ``label_smoothing`` of the cross entropy for classification tasks (0 = plain);
#: * ``bn_recalibration``: training samples whose batch statistics replace the batch norms'
#:   running averages after every epoch, before validation (0 = keep the running averages).
#:   Momentum averages lag behind weights that move fast early in training: a MobileNetV2 that
#:   fits its training batches (100% with batch statistics) scores at chance in eval mode
#:   until the statistics are recomputed for the weights it ends with.
DEFAULT_RECIPE: dict[str, Any] = {"optimizer": "adam", "lr": DEFAULT_LR, "weight_decay": 0.0,
                                  "warmup": 0.0, "batch_size": 64, "label_smoothing": 0.0,
                                  "bn_recalibration": 0}
_OPTIMIZERS = ("adam", "adamw", "sgd")


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _epoch_bar(epochs: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(range(epochs), desc=desc, unit="epoch", file=sys.stderr,
                disable=not progress, leave=False)


def predict(model: nn.Module, split: Split, batch_size: int = 256) -> list[np.ndarray]:
    """Run ``model`` in eval mode over ``split``; one stacked numpy array per model output."""
    was_training = model.training
    model.eval()
    chunks: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for i in range(0, len(split), batch_size):
                out = _as_tuple(model(*(t[i : i + batch_size] for t in split.inputs)))
                chunks.append([o.detach().cpu().numpy() for o in out])
    finally:
        model.train(was_training)
    return [np.concatenate(parts) for parts in zip(*chunks)]


def evaluate(model: nn.Module, split: Split, task: Task, batch_size: int = 256) -> float:
    """The task's metric of ``model`` (run in eval mode) on ``split``."""
    outputs = predict(model, split, batch_size)
    return float(task.score(outputs, split.targets.numpy(), [t.numpy() for t in split.inputs]))


def distillation_loss(student_out, teacher_out, task: Task,
                      temperature: float = DISTILL_TEMPERATURE) -> torch.Tensor:
    """KL divergence on softened logits for classifiers, MSE on every output otherwise."""
    s, t = _as_tuple(student_out), _as_tuple(teacher_out)
    if task.kind == "classification":
        return F.kl_div(
            F.log_softmax(s[0] / temperature, dim=1), F.softmax(t[0] / temperature, dim=1),
            reduction="batchmean",
        ) * temperature**2
    return sum(F.mse_loss(a, b) for a, b in zip(s, t) if a.is_floating_point())


def _resolve_spec(model: nn.Module, spec):
    if spec is not None:
        if isinstance(spec, str):
            from .models import get_spec

            return get_spec(spec)
        return spec
    name = getattr(model, "edgekit_name", None)
    if name is None:
        return None
    from .models import get_spec

    return get_spec(name)


def training_recipe(model: nn.Module, **overrides: Any) -> dict[str, Any]:
    """The settings :func:`fit` trains ``model`` with: :data:`DEFAULT_RECIPE`, then the model
    class's ``DEFAULT_LR``, then its ``TRAIN_RECIPE``, then ``overrides`` that are not None."""
    recipe = dict(DEFAULT_RECIPE)
    if getattr(model, "DEFAULT_LR", None) is not None:
        recipe["lr"] = float(model.DEFAULT_LR)  # type: ignore[arg-type]
    recipe.update(getattr(model, "TRAIN_RECIPE", None) or {})
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(recipe) - set(DEFAULT_RECIPE))
    if unknown or recipe["optimizer"] not in _OPTIMIZERS or not 0.0 <= recipe["warmup"] < 1.0:
        from .errors import ConfigError

        raise ConfigError(
            f"training recipe {recipe} is not valid: "
            + (f"unknown key(s) {unknown}" if unknown else
               f"optimizer must be one of {_OPTIMIZERS} and warmup a fraction in [0, 1)"),
            hint=f"keys: {', '.join(DEFAULT_RECIPE)}")
    return recipe


def training_fingerprint(model: nn.Module, spec: Any = None) -> dict[str, Any]:
    """What decides how ``model`` trains, for cache keys: its :func:`training_recipe`, a hash
    of this module's source (the loop itself) and of the zoo spec's ``fit`` hook if it has
    one. A changed recipe or training code gives another fingerprint."""
    import hashlib
    import inspect

    spec = _resolve_spec(model, spec)
    hook = spec.fit if spec is not None else None
    return {
        "recipe": training_recipe(model),
        "train_code": hashlib.sha256(inspect.getsource(sys.modules[__name__]).encode())
        .hexdigest()[:16],
        "fit_hook": hashlib.sha256(inspect.getsource(hook).encode()).hexdigest()[:16]
        if hook is not None else None,
    }


def _optimizer(params: list[nn.Parameter], model: nn.Module, recipe: dict[str, Any]
               ) -> torch.optim.Optimizer:
    lr, wd = float(recipe["lr"]), float(recipe["weight_decay"])
    if recipe["optimizer"] == "adamw":
        ids = {id(p) for p in params}
        no_decay = {id(p) for m in model.modules()
                    if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm,
                                      nn.GroupNorm))
                    for p in m.parameters(recurse=False) if id(p) in ids}
        no_decay |= {id(p) for name, p in model.named_parameters()
                     if name.endswith("bias") and id(p) in ids}
        groups = [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": wd},
                  {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr)
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def _schedule(opt: torch.optim.Optimizer, total: int, warmup: float
              ) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup`` of the ``total`` steps, then cosine decay to 0."""
    import math

    warm = int(round(warmup * total))
    if warm == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def recalibrate_batch_norm(model: nn.Module, split: Split, samples: int,
                           batch_size: int = 64) -> int:
    """Recompute every batch norm's running mean and variance as the plain average over
    ``samples`` of ``split`` (a fixed random choice, so every class is represented; train-mode
    forward passes, no gradients); the momenta are restored afterwards. Returns the samples
    used (0 when the model has no batch norm)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    n = min(int(samples), len(split))
    if not bns or n <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    try:
        pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:n]
        with torch.no_grad():
            for i in range(0, n, batch_size):
                idx = pick[i : i + batch_size]
                model(*(t[idx] for t in split.inputs))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return n


def fit(
    model: nn.Module,
    task: Task,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.5,
    spec: Any = None,
    weight_decay: float | None = None,
) -> dict:
    """Train ``model`` on ``task.train``, pick the epoch with the best ``task.val`` metric.

    The optimizer, learning rate, warm-up, weight decay, batch size and label smoothing come
    from :func:`training_recipe` (the model's ``TRAIN_RECIPE``/``DEFAULT_LR``, else
    :data:`DEFAULT_RECIPE`: Adam, cosine decay); ``lr``, ``batch_size`` and ``weight_decay``
    given here win. The best-validation weights are restored at the end and the model is left
    in eval mode. ``epochs=None`` uses the spec's ``default_epochs`` (or ``DEFAULT_EPOCHS``).
    With a ``teacher``, the loss is
    ``(1 - distill_weight) * task loss + distill_weight * distillation_loss``.
    ``spec`` (a ModelSpec or zoo name) defaults to the zoo entry the model was built from; if
    that spec has a ``fit`` hook, the hook trains the model with the same arguments.

    Returns the history: ``{"loss": [per-epoch mean train loss], "val": [per-epoch val metric],
    "metric": name, "best_epoch": index, "best_val": value, "seconds": wall time}``.
    Deterministic for a given ``seed`` (and thread count).
    """
    spec = _resolve_spec(model, spec)
    if epochs is None:
        epochs = spec.default_epochs if spec is not None else DEFAULT_EPOCHS
    if spec is not None and spec.fit is not None:
        if batch_size is None:  # hooks take a concrete batch size
            batch_size = int(training_recipe(model)["batch_size"])
        return spec.fit(model, task, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        progress=progress, teacher=teacher, distill_weight=distill_weight)
    recipe = training_recipe(model, lr=lr, batch_size=batch_size, weight_decay=weight_decay)
    batch_size = int(recipe["batch_size"])
    from .data.tasks import classification_loss

    # label smoothing applies to the plain cross entropy; a task with its own loss keeps it
    smoothing = float(recipe["label_smoothing"]) if task.loss is classification_loss else 0.0
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, model, recipe)
    steps_per_epoch = max(1, -(-len(task.train) // batch_size))
    sched = _schedule(opt, epochs * steps_per_epoch, float(recipe["warmup"]))
    if teacher is not None:
        teacher.eval()
    history: dict[str, Any] = {"loss": [], "val": [], "metric": task.metric, "best_epoch": -1,
                               "best_val": None, "seconds": 0.0, "recipe": recipe}
    best_state = None
    start = time.perf_counter()
    bar = _epoch_bar(epochs, progress, f"train {task.name}")
    n = len(task.train)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            inputs = tuple(t[idx] for t in task.train.inputs)
            targets = task.train.targets[idx]
            out = model(*inputs)
            if smoothing:
                loss = F.cross_entropy(_as_tuple(out)[0], targets.long(),
                                       label_smoothing=smoothing)
            else:
                loss = task.loss(out, targets, inputs)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(*inputs)
                loss = (1 - distill_weight) * loss + distill_weight * distillation_loss(
                    out, t_out, task)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if recipe["bn_recalibration"]:
            recalibrate_batch_norm(model, task.train, int(recipe["bn_recalibration"]),
                                   batch_size)
        val = evaluate(model, task.val, task)
        history["loss"].append(total / count)
        history["val"].append(val)
        best = history["best_val"]
        if best is None or (val > best if task.higher_is_better else val < best):
            history["best_val"], history["best_epoch"] = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{total / count:.4f}", **{task.metric: f"{val:.4g}"})
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history
