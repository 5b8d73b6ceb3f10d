"""Helpers shared by the zoo modules: deterministic example inputs, parameter and MAC counts."""

from __future__ import annotations

import torch
from torch import nn


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass for batch 1 of ``inputs``.

    Counts Conv1d/Conv2d, Linear, LSTM/GRU cell matmuls and multi-head attention projections
    and products; elementwise ops, norms and pooling are not counted.
    """
    total = 0

    def conv(m, inp, out):
        nonlocal total
        k = m.weight[0].numel()  # in_channels/groups * kernel
        total += int(out[0].numel() * k)

    def linear(m, inp, out):
        nonlocal total
        total += int(out[0].numel() * m.in_features)

    def rnn(m, inp, out):
        nonlocal total
        x = inp[0]
        steps = x.shape[1] if m.batch_first else x.shape[0]
        gates = {nn.LSTM: 4, nn.GRU: 3}.get(type(m), 1)
        per = gates * m.hidden_size * (m.input_size + m.hidden_size)
        per += gates * m.hidden_size * 2 * m.hidden_size * (m.num_layers - 1)
        total += int(steps * per)

    def mha(m, inp, out):
        nonlocal total
        q = inp[0]
        length, d = q.shape[1] if m.batch_first else q.shape[0], m.embed_dim
        total += int(4 * length * d * d + 2 * length * length * d)

    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(mod.register_forward_hook(conv))
        elif isinstance(mod, nn.Linear) and not isinstance(
            mod, nn.modules.linear.NonDynamicallyQuantizableLinear
        ):
            hooks.append(mod.register_forward_hook(linear))
        elif isinstance(mod, (nn.LSTM, nn.GRU, nn.RNN)):
            hooks.append(mod.register_forward_hook(rnn))
        elif isinstance(mod, nn.MultiheadAttention):
            hooks.append(mod.register_forward_hook(mha))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*(t[:1] for t in inputs))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def factory(cls, name: str):
    """Wrap a model class as a zoo factory: builds it in eval mode, tagged with its zoo name
    (``model.edgekit_name``, used by ``edgekit.train.fit`` to find the spec's fit hook)."""
    import functools

    @functools.wraps(cls)
    def build(**kwargs) -> nn.Module:
        model = cls(**kwargs)
        model.edgekit_name = name
        return model.eval()

    return build
