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
import types
from typing import Any

import torch

from ..backends.tflite_int8 import litert_quantizer
from ..data.task import Task
from .config import QuantConfig

__all__ = ["qat_finetune", "is_qat_model"]


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
    freeze_bn: bool = True,
    fold_bn: bool = True,
    calibration_batches: int = 8,
) -> torch.nn.Module:
    """Fine-tune a fake-quantized copy of ``model``; return a float copy with the tuned weights
    and the prepared graph attached (``model`` itself is not changed).

    With ``fold_bn``, batch norm is first folded into the convolution before it (torch.fx), so
    the fake-quantized weights are the ones the runtimes run and the TFLite artifact keeps no
    separate batch-norm ops; the returned model is then that folded module.

    The recipe for a model that is already trained: the fake-quantize ranges start from
    ``calibration_batches`` training batches (not from the first training step) and move only
    in training steps, never in an evaluation; batch-norm
    statistics stay frozen (``freeze_bn``), so small fine-tuning batches cannot shift them; and
    the starting point (the fake-quantized model before any step, i.e. PTQ) competes with every
    epoch on the validation split, so QAT never returns weights that validate worse than it.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from ..train import evaluate, fit

    config = QuantConfig.coerce(config)
    inputs = ((example_inputs,) if isinstance(example_inputs, torch.Tensor)
              else tuple(example_inputs))
    base, folded = (_fold_batch_norm(model, inputs) if fold_bn
                    else (copy.deepcopy(model).eval(), False))
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
    from ..backends import pt2e_rewrites

    # as the PTQ graph (pt2e_prepare)
    rewritten = pt2e_rewrites.rewrite(gm, wide=False) if config.integer_ops else []
    quantizer = litert_quantizer(config, config.keep_float, qat=True)
    # litert-torch 0.10's conv+bn QAT annotators pass a function to torch.export (fails with
    # torchao 0.18): annotate conv and bn separately instead.
    quantizer.STATIC_QAT_ONLY_OPS = []
    prepared = prepare_qat_pt2e(gm, quantizer)
    prepared.edgekit_rewritten = rewritten
    _observe_only_in_training(prepared, freeze_bn)
    _calibrate(prepared, task, calibration_batches, batch_size)
    start_val = evaluate(prepared, task.val, task)
    start_state = copy.deepcopy(prepared.state_dict())
    if lr is None:
        lr = float(getattr(model, "DEFAULT_LR", 1e-3)) * 0.1
    history = fit(prepared, task, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  progress=progress, teacher=teacher, spec=_NoSpec())
    history["start_val"] = start_val
    better = (history["best_val"] > start_val if task.higher_is_better
              else history["best_val"] < start_val)
    if not better:  # no epoch beat the calibrated starting point: keep it
        prepared.load_state_dict(start_state)
        history["best_val"], history["best_epoch"] = start_val, -1
    prepared.eval()
    tuned = copy.deepcopy(base).eval()
    own = tuned.state_dict()
    new = {k: v for k, v in prepared.state_dict().items() if k in own and own[k].shape == v.shape}
    tuned.load_state_dict(new, strict=False)
    tuned.edgekit_qat_prepared = prepared  # type: ignore[attr-defined]
    tuned.edgekit_qat_history = {k: history[k]
                                 for k in ("start_val", "val", "best_val", "best_epoch")}
    tuned.edgekit_qat_updated = sorted(new)  # type: ignore[attr-defined]
    tuned.edgekit_qat_bn_folded = folded  # type: ignore[attr-defined]
    return tuned


def _fold_batch_norm(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...] = ()
                     ) -> tuple[torch.nn.Module, bool]:
    """A copy of ``model`` with each conv + batch norm folded into one conv (torch.fx; where
    fx cannot trace the model, the graph of one run on ``inputs``, used only if the folded
    copy computes what ``model`` does on them), and whether anything was folded; a plain
    copy when there is no batch norm or neither graph serves (its batch norm then stays,
    with frozen statistics)."""
    from torch.fx.experimental.optimization import fuse

    def norms(m: torch.nn.Module) -> int:
        return sum(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())

    before = norms(model)
    if before:
        try:
            fused = fuse(copy.deepcopy(model).eval())
            return fused.eval(), norms(fused) < before
        except Exception:  # not symbolically traceable
            pass
    if before and inputs:
        from .transforms import fold_batchnorm_checked

        out, folded = fold_batchnorm_checked(model, [t.numpy() for t in inputs])
        return out, bool(folded)
    return copy.deepcopy(model).eval(), False


def _observe_only_in_training(prepared: torch.nn.Module, freeze_bn: bool) -> None:
    """The fake-quantize ranges move only in training steps (an evaluation leaves them as they
    are); with ``freeze_bn``, batch norm keeps its inference behaviour in training too."""
    from torchao.quantization.pt2e import (
        disable_observer,
        enable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    def train(self, mode=True):  # methods of the graph itself, so a deep copy keeps working
        if not mode:
            return self.eval()
        self.apply(enable_observer)
        if not freeze_bn:
            move_exported_model_to_train(self)
        return self

    def eval(self):
        move_exported_model_to_eval(self)
        self.apply(disable_observer)
        return self

    prepared.train = types.MethodType(train, prepared)
    prepared.eval = types.MethodType(eval, prepared)


@torch.no_grad()
def _calibrate(prepared: torch.nn.Module, task: Task, batches: int, batch_size: int) -> None:
    """Let the fake-quantize observers see ``batches`` training batches before any step."""
    from torchao.quantization.pt2e import disable_observer, enable_observer

    prepared.eval()
    prepared.apply(enable_observer)
    train = task.train
    for i in range(0, min(len(train), max(1, batches) * batch_size), batch_size):
        prepared(*(t[i : i + batch_size] for t in train.inputs))
    prepared.apply(disable_observer)


class _NoSpec:
    """Tells ``fit`` not to look up a zoo spec (its custom ``fit`` hook would not apply)."""

    default_epochs = 2
    fit = None
