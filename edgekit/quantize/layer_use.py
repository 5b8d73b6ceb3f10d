"""Layers an exported file cannot hold, found by running the PyTorch model.

Two kinds of layer leave no node in an artifact, so nothing can be read back for them:

* **unused**: its output reaches no model output (a pooler beside the ``last_hidden_state``
  a wrapper returns). No gradient flows from the outputs to its weights; the exporter drops it.
* **constant**: its input does not depend on the model's inputs (DeBERTa's projections of its
  relative-position table). It computes the same tensor for every input; the exporter folds
  it into a float constant.

:func:`layer_use` tells them apart on two samples, so the manifest says why a layer has no
precision read from the file instead of repeating what was asked::

    layer_use(model, [sample_a, sample_b], ["encoder.0", "pooler"])
    # {"pooler": "unused"}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..backends._common import eval_mode, flatten_outputs

__all__ = ["REASONS", "layer_use"]

#: the manifest's precision and reason for each kind
REASONS = {
    "unused": ("absent", "its output reaches no model output, so the exported file does not "
               "contain it"),
    "constant": ("folded", "its input does not depend on the model's inputs, so the exporter "
                 "computed it once into a constant"),
}


def _tensors(sample: Sequence[Any]) -> list[torch.Tensor]:
    return [a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
            for a in sample]


def layer_use(model: torch.nn.Module, samples: Sequence[Sequence[Any]],
              layers: Sequence[str]) -> dict[str, str]:
    """``layer -> "unused" | "constant"`` for those of ``layers`` (module names of ``model``)
    that are either, on two ``samples`` (input tuples whose model outputs differ). Empty where
    it cannot tell: fewer than two samples, outputs without a gradient, samples the model maps
    to the same outputs, or a model that fails on them. The model's parameters and modes are
    left as they were."""
    if len(samples) < 2 or not layers:
        return {}
    modules = dict(model.named_modules())
    targets = {n: modules[n] for n in layers if n in modules}
    seen: dict[str, list[list[torch.Tensor]]] = {n: [] for n in targets}
    run = [0]

    def hook(name: str) -> Any:
        def record(_m: torch.nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            calls = seen[name]
            while len(calls) <= run[0]:
                calls.append([])
            calls[run[0]] += [a.detach().clone() for a in args if isinstance(a, torch.Tensor)]
        return record

    params = list(model.parameters())
    frozen = [p for p in params if not p.requires_grad]
    handles = [m.register_forward_hook(hook(n)) for n, m in targets.items()]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            out_a = flatten_outputs(model(*_tensors(samples[0])))
            grads = _weight_grads(out_a, targets)
            run[0] = 1
            with torch.no_grad():
                out_b = flatten_outputs(model(*_tensors(samples[1])))
    except Exception:  # noqa: BLE001 - a model this check cannot run is left to the read-back
        return {}
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(False)
    if grads is None or all(a.shape == b.shape and torch.equal(a.detach(), b)
                            for a, b in zip(out_a, out_b)):
        return {}
    use: dict[str, str] = {}
    for name in targets:
        if grads.get(name) is False:
            use[name] = "unused"
            continue
        calls = seen[name]
        if len(calls) == 2 and calls[0] and len(calls[0]) == len(calls[1]) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(*calls)):
            use[name] = "constant"
    return use


def _weight_grads(outputs: list[torch.Tensor], targets: dict[str, torch.nn.Module]
                  ) -> dict[str, bool] | None:
    """Layer -> whether a gradient flows from ``outputs`` to any of its parameters; None where
    no output carries a gradient (integer outputs, a model run under ``no_grad``)."""
    live = [t for t in outputs if t.is_floating_point() and t.requires_grad]
    if not live:
        return None
    owned = {n: [p for p in m.parameters() if p.is_floating_point()]
             for n, m in targets.items()}
    flat = [p for ps in owned.values() for p in ps]
    unique = list({id(p): p for p in flat}.values())
    if not unique:
        return None
    total = torch.stack([t.float().sum() for t in live]).sum()
    found = torch.autograd.grad(total, unique, allow_unused=True)
    has = {id(p): g is not None for p, g in zip(unique, found)}
    return {n: any(has[id(p)] for p in ps) for n, ps in owned.items() if ps}
