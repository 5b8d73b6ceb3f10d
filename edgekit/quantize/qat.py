"""Quantization-aware training: PT2E fake-quantized fine-tuning with edgekit's training loop.

::

    qat_model = qat_finetune(model, task, example_inputs, epochs=2)   # teacher=model optional
    bundle = edgekit.compress(qat_model, x, targets=[...int8 targets...], task=task)

``qat_finetune`` exports the model with a dynamic batch dimension, inserts fake-quantize ops
with litert-torch's quantizer (``is_qat=True``), fine-tunes with :func:`edgekit.train.fit`
(distillation from ``teacher`` optional) and returns a float ``nn.Module`` with the fine-tuned
weights. It carries the fake-quantized graph as ``edgekit_qat_prepared``: the TFLite int8
export converts that graph with its learned ranges; ONNX Runtime and OpenVINO quantize the
fine-tuned weights with their own calibration (the weights were trained to be robust to int8).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..data.task import Task
from .config import QuantConfig
from .pt2e import litert_quantizer

__all__ = ["qat_finetune", "is_qat_model"]


class _QATWrapper(torch.nn.Module):
    """A float copy of the model with QAT-tuned weights (``edgekit_qat_prepared`` attached)."""


def is_qat_model(model: torch.nn.Module) -> bool:
    return getattr(model, "edgekit_qat_prepared", None) is not None


def qat_finetune(
    model: torch.nn.Module,
    task: Task,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    *,
    epochs: int = 2,
    lr: float | None = None,
    teacher: torch.nn.Module | None = None,
    config: QuantConfig | dict[str, Any] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> torch.nn.Module:
    """Fine-tune a fake-quantized copy of ``model``; return a float copy with the tuned weights
    and the prepared graph attached (``model`` itself is not changed)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from ..train import fit

    config = QuantConfig.coerce(config)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    base = copy.deepcopy(model).eval()
    # Two samples and a dynamic batch dimension, so the training loop can use any batch size.
    batch = torch.export.Dim("batch", min=1, max=4096)
    ex2 = tuple(torch.cat([t, t]) if t.shape[0] == 1 else t for t in inputs)
    dynamic = tuple({0: batch} for _ in ex2)
    try:
        gm = torch.export.export(base, ex2, dynamic_shapes=dynamic).module()
    except Exception as exc:
        from ..errors import NotSupportedError

        raise NotSupportedError(
            f"QAT needs {type(model).__name__} to export with a dynamic batch dimension: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="use post-training quantization (compress with an int8 target) for this model",
        ) from exc
    quantizer = litert_quantizer(config, config.keep_float, qat=True)
    # litert-torch 0.10's conv+bn QAT annotators pass a function to torch.export (fails with
    # torchao 0.18): annotate conv and bn separately instead.
    quantizer.STATIC_QAT_ONLY_OPS = []
    prepared = prepare_qat_pt2e(gm, quantizer)
    allow_exported_model_train_eval(prepared)
    if lr is None:
        lr = float(getattr(model, "DEFAULT_LR", 1e-3)) * 0.1
    history = fit(prepared, task, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  progress=progress, teacher=teacher, spec=False or _NoSpec())
    prepared.eval()
    tuned = copy.deepcopy(model).eval()
    own = tuned.state_dict()
    new = {k: v for k, v in prepared.state_dict().items() if k in own and own[k].shape == v.shape}
    tuned.load_state_dict(new, strict=False)
    tuned.edgekit_qat_prepared = prepared  # type: ignore[attr-defined]
    tuned.edgekit_qat_history = {k: history[k] for k in ("val", "best_val", "best_epoch")}
    tuned.edgekit_qat_updated = sorted(new)  # type: ignore[attr-defined]
    return tuned


class _NoSpec:
    """Tells ``fit`` not to look up a zoo spec (its custom ``fit`` hook would not apply)."""

    default_epochs = 2
    fit = None
