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

__all__ = ["fit", "evaluate", "predict", "distillation_loss", "DEFAULT_EPOCHS", "DEFAULT_LR"]

DEFAULT_EPOCHS = 10
DEFAULT_LR = 3e-3
DISTILL_TEMPERATURE = 2.0


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


def fit(
    model: nn.Module,
    task: Task,
    *,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.5,
    spec: Any = None,
    weight_decay: float = 0.0,
) -> dict:
    """Train ``model`` on ``task.train``, pick the epoch with the best ``task.val`` metric.

    Adam with a cosine learning-rate decay; the best-validation weights are restored at the end
    and the model is left in eval mode. ``epochs=None`` uses the spec's ``default_epochs``
    (or ``DEFAULT_EPOCHS``); ``lr=None`` uses the model class's ``DEFAULT_LR`` attribute
    (or ``DEFAULT_LR``). With a ``teacher``, the loss is
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
        return spec.fit(model, task, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        progress=progress, teacher=teacher, distill_weight=distill_weight)
    if lr is None:
        lr = float(getattr(model, "DEFAULT_LR", DEFAULT_LR))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(task.train) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    if teacher is not None:
        teacher.eval()
    history: dict[str, Any] = {"loss": [], "val": [], "metric": task.metric, "best_epoch": -1,
                               "best_val": None, "seconds": 0.0}
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
