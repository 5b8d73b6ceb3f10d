"""The model as torch-pruning sees it: its dependency graph (with edgekit's LSTM pruner),
the example inputs that trace it, the layers that must keep their width, and an error naming
the module when tracing fails."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..errors import UsageError
from .gru import GRUPruner, RNNPruner
from .lstm import LSTMPruner

__all__ = ["as_inputs", "build_graph", "custom_pruners", "default_ignored_layers", "flat_outputs",
           "forward_fn",
           "head_counts", "layers_feeding_outputs", "module_names", "output_transform",
           "prunable_types",
           "resolve_layers", "unwrapped_parameters"]


def as_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of tensors (:class:`UsageError` otherwise)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    inputs = tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise UsageError("example_inputs must be a tensor or a tuple of tensors")
    return inputs


def custom_pruners() -> dict[type, tp.pruner.function.BasePruningFunc]:
    """edgekit's pruners for the layer types torch-pruning gets wrong or does not know."""
    return {nn.LSTM: LSTMPruner(), nn.GRU: GRUPruner(), nn.RNN: RNNPruner()}


class _OneNode(torch.autograd.Function):
    """A recurrent layer as one autograd node from its input and weights to its outputs, as
    torch-pruning needs to see it (a GRU's CPU autograd graph is its unrolled cell ops, which
    torch-pruning would take for layers of the model). Used only while tracing."""

    @staticmethod
    def forward(ctx, run, x, *weights):  # type: ignore[override]
        with torch.no_grad():
            out, h = run(x)
        return out, h

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        raise RuntimeError("edgekit's tracing stand-in for a recurrent layer has no gradient")


def _traced_forward(layer: nn.Module):
    original = type(layer).forward

    def forward(x, hx=None):
        return _OneNode.apply(lambda t: original(layer, t, hx), x, *layer._flat_weights)
    return forward


def forward_fn(model: nn.Module, inputs) -> Any:
    """How torch-pruning calls the model: ``model(*inputs)``, each GRU / RNN seen as one node."""
    layers = [m for m in model.modules() if isinstance(m, (nn.GRU, nn.RNN))]
    for layer in layers:
        layer.forward = _traced_forward(layer)  # type: ignore[method-assign]
    try:
        return model(*inputs)
    finally:
        for layer in layers:
            del layer.forward


def flat_outputs(out) -> list[torch.Tensor]:
    """Every tensor in a model's output: a tensor, tuples / lists of them, or a dict-like
    output (the transformer library's ``ModelOutput``), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flat_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flat_outputs(v)]
    return []


def output_transform(out) -> torch.Tensor | None:
    """The sum of every floating-point output: the scalar torch-pruning traces back from."""
    outs = flat_outputs(out)
    total = None
    for o in outs:
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            total = o.sum() if total is None else total + o.sum()
    return total


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Each named submodule's qualified name."""
    return {m: n for n, m in model.named_modules() if n}


def prunable_types() -> tuple[type, ...]:
    """The layer types whose width pruning changes."""
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear,
            nn.LSTM, nn.GRU, nn.RNN, nn.Embedding)


def layers_feeding_outputs(model: nn.Module, example_inputs) -> list[nn.Module]:
    """Prunable layers whose output reaches a model output through shape-keeping ops only
    (no other prunable layer in between): their output width is fixed by the model's outputs."""
    inputs = as_inputs(example_inputs)
    produced: dict[Any, nn.Module] = {}

    def hook(mod, _inp, out):
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, tuple):  # LSTM's (h, c)
                for t in o:
                    if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                        produced[t.grad_fn] = mod
            elif isinstance(o, torch.Tensor) and o.grad_fn is not None:
                produced[o.grad_fn] = mod

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, prunable_types())]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    outs = flat_outputs(out)
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack: list[Any] = [o.grad_fn for o in outs
                        if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if fn in produced:
            if produced[fn] not in found:
                found.append(produced[fn])
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def default_ignored_layers(model: nn.Module, example_inputs, *,
                           keep_embeddings: bool = False) -> list[nn.Module]:
    """The layers whose width must stay: the model's ``OUTPUT_LAYERS`` (see
    :func:`edgekit.models.output_layers`), every prunable layer that feeds a model output
    directly, and (``keep_embeddings=True``) every ``nn.Embedding``. An embedding's vocabulary is
    never pruned either way; without ``keep_embeddings`` its vector width may shrink together with
    the layers it is coupled to (e.g. a transformer's residual stream)."""
    from ..models import output_layers

    found: list[nn.Module] = []
    for m in [*output_layers(model), *layers_feeding_outputs(model, example_inputs)]:
        if m not in found:
            found.append(m)
    if keep_embeddings:
        found += [m for m in model.modules() if isinstance(m, nn.Embedding) and m not in found]
    return found


def resolve_layers(model: nn.Module, layers) -> list[nn.Module]:
    """Layers given by name or as modules, as modules of ``model``."""
    named = dict(model.named_modules())
    out: list[nn.Module] = []
    for layer in layers or ():
        if isinstance(layer, str):
            if layer not in named or not layer:
                raise UsageError(f"no layer named {layer!r} in {type(model).__name__}",
                                 hint="names are those of model.named_modules()")
            out.append(named[layer])
        elif isinstance(layer, nn.Module):
            out.append(layer)
        else:
            raise UsageError(f"ignored_layers entries must be layer names or modules, "
                             f"got {type(layer).__name__}")
    return out


def head_counts(model: nn.Module) -> dict[nn.Module, int]:
    """``num_heads`` of each attention layer (pruning keeps head counts, shrinks head dims)."""
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def unwrapped_parameters(model: nn.Module) -> dict[nn.Parameter, int]:
    """Free-standing parameters (e.g. a positional embedding): prune along their last dim."""
    wrapped = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.Linear, nn.LSTM, nn.GRU, nn.RNN, nn.Embedding, nn.MultiheadAttention,
               nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU,
               nn.modules.instancenorm._InstanceNorm)
    found = {}
    for mod in model.modules():
        if isinstance(mod, wrapped):
            continue
        for p in mod.parameters(recurse=False):
            if p.dim() >= 1:
                found[p] = p.dim() - 1
    return found


def build_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """torch-pruning's dependency graph with edgekit's recurrent pruners; a tracing failure
    names the module that could not be traced."""
    inputs = as_inputs(example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, forward_fn=forward_fn,
                output_transform=output_transform,
                unwrapped_parameters=list(unwrapped_parameters(model).items()),
                customized_pruners=custom_pruners(), verbose=False)
        except Exception as exc:
            raise _trace_error(model, inputs, exc) from exc


def _trace_error(model: nn.Module, inputs, exc: Exception) -> UsageError:
    """Find the innermost module whose forward raised while torch-pruning traced the model."""
    culprit: list[str] = []
    names = module_names(model)

    def pre(mod, _inp):
        stack.append(mod)

    def post(mod, _inp, _out):
        stack.pop()

    stack: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()]
    hooks += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.enable_grad():
            model(*inputs)
    except Exception:
        culprit = [names.get(m, type(m).__name__) for m in stack[1:]]
    finally:
        for h in hooks:
            h.remove()
    where = culprit[-1] if culprit else None
    if where is None:  # forward works, the graph walk itself failed: name the module types
        where = next((f"{n} ({type(m).__name__})" for m, n in names.items()
                      if not list(m.children()) and not isinstance(m, prunable_types())
                      and type(m).__module__.split(".")[0] != "torch"), type(model).__name__)
    return UsageError(
        f"torch-pruning cannot trace {type(model).__name__} at module {where}: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        hint="add that module to ignored_layers, or make its forward traceable "
             "(tensor ops only, no data-dependent Python control flow)")
