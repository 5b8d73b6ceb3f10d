"""The graph rewrites of :mod:`edgekit.backends.litert_lowering` keep the float function: the
rewritten exported graph gives the module's outputs, for each form of the op rewritten."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.backends.litert_lowering import (
    lower_conv_string_padding,
    lower_conv_transpose_padding,
)


def _rewritten(model: nn.Module, x: torch.Tensor, lower) -> tuple[torch.fx.GraphModule, list]:
    gm = torch.export.export(model.eval(), (x,)).module()
    return gm, lower(gm)


# kernel, stride, padding, output padding, dilation
@pytest.mark.parametrize("k,s,p,op,d", [
    (3, 2, 1, 1, 1), (3, 2, 1, 0, 1), (2, 2, 1, 1, 1), (5, 2, 2, 1, 1), (4, 3, 1, 2, 1),
    (3, 3, 1, 2, 1), (3, 2, 2, 1, 2), (5, 3, 2, 0, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_padding_keeps_the_float_function(k, s, p, op, d, bias):
    torch.manual_seed(0)
    model = nn.ConvTranspose2d(4, 6, k, stride=(s, 1), padding=(p, 1), output_padding=(op, 0),
                               dilation=d, bias=bias)
    x = torch.randn(1, 4, 5, 6)
    gm, done = _rewritten(model, x, lower_conv_transpose_padding)
    assert done == ["conv_transpose2d"]
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    conv = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.conv_transpose2d.input)
    assert list(conv.args[4]) == [0, 0] and list(conv.args[5]) == [0, 0], conv.args
    assert targets.count(torch.ops.aten.slice.Tensor) == 2
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k,s,p,op", [(4, 2, 1, 0), (4, 2, 1, 1), (3, 1, 1, 0), (3, 2, 0, 1)])
def test_conv_transpose_forms_the_converter_lowers_are_kept(k, s, p, op):
    """Unpadded, stride 1, and kernel - 2 x padding = stride ("same"): left as they are."""
    model = nn.ConvTranspose2d(4, 4, k, stride=s, padding=p, output_padding=op)
    gm, done = _rewritten(model, torch.randn(1, 4, 5, 5), lower_conv_transpose_padding)
    assert done == []


@pytest.mark.parametrize("k,d", [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (4, 3)])
def test_conv1d_string_padding_is_written_with_numbers(k, d):
    torch.manual_seed(0)
    for padding in ("same", "valid"):
        model = nn.Conv1d(3, 5, k, padding=padding, dilation=d)
        x = torch.randn(2, 3, 11)
        gm, done = _rewritten(model, x, lower_conv_string_padding)
        assert done == ["conv1d"]
        assert all(not isinstance(a, str) for n in gm.graph.nodes for a in n.args)
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=1e-5)


class _Expands(torch.nn.Module):
    def forward(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        unit = x / n.expand_as(x)  # broadcasts without the expand: dropped
        scaled = n.expand(-1, 8, -1, -1) * 2.0  # the expand makes the shape: kept
        shift = n.expand_as(x) - w  # w (1, 1, 5, 5) broadcasts only with it: kept
        return unit, scaled, shift


def test_broadcast_expands_are_dropped_only_where_the_shape_stays():
    from edgekit.backends.litert_lowering import drop_broadcast_expands

    model = _Expands()
    x, w = torch.randn(2, 8, 5, 5), torch.randn(1, 1, 5, 5)
    gm = torch.export.export(model, (x, w)).module()
    done = drop_broadcast_expands(gm)
    assert len(done) == 1, done
    left = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert left.count(torch.ops.aten.expand.default) \
        + left.count(torch.ops.aten.expand_as.default) == 2, left
    for got, ref in zip(gm(x, w), model(x, w)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_identity_casts_are_dropped_and_real_ones_kept():
    from edgekit.backends.pt2e_rewrites import drop_no_ops

    class Casts(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            same = x.to(torch.float32).type_as(x) * 2  # both dropped
            return same, (x * 100).to(torch.int64)  # a real cast: kept

    model = Casts()
    x = torch.randn(2, 5)
    gm = torch.export.export(model, (x,)).module()
    assert len(drop_no_ops(gm)) == 2
    casts = [n for n in gm.graph.nodes if n.op == "call_function"
             and "to" in str(n.target).split(".")[1:2]]
    assert len(casts) == 1, [n.target for n in gm.graph.nodes]
    for got, ref in zip(gm(x), model(x)):
        assert torch.equal(got, ref)


def test_inactive_dropouts_are_dropped_and_active_ones_kept():
    from edgekit.backends.pt2e_rewrites import drop_no_ops

    class Dropouts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.zero, self.some = torch.nn.Dropout(0.0), torch.nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # eval mode: both modules are kept by the export as aten.dropout(x, p, False)
            return (self.zero(x) * 2, self.some(x) + 1,
                    torch.nn.functional.dropout(x, 0.0, training=True),  # p = 0: dropped
                    torch.nn.functional.dropout(x, 0.5, training=True))  # random: kept

    model = Dropouts().eval()
    x = torch.randn(2, 5)
    gm = torch.export.export(model, (x,)).module()
    assert len(drop_no_ops(gm)) == 3
    left = [n for n in gm.graph.nodes if n.op == "call_function"
            and n.target == torch.ops.aten.dropout.default]
    assert [n.args[1:] for n in left] == [(0.5, True)]
    got, ref = gm(x), model(x)
    for g, r in zip(got[:3], ref[:3]):
        assert torch.equal(g, r)
    assert ((got[3] == 0) | torch.isclose(got[3], 2 * x)).all()  # still dropping


class _SortsBilinearOneHot(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.b = torch.nn.Bilinear(8, 6, 4)
        self.c = torch.nn.Bilinear(8, 6, 3, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x.argsort(-1, descending=True), torch.sort(x, -1).values,
                x.sort(dim=-1, stable=True).indices, self.b(x, y), self.c(x, y),
                torch.nn.functional.one_hot(x.argmax(-1), 8))


def test_sorts_bilinear_and_one_hot_keep_the_function_and_dtypes():
    from edgekit.backends.litert_lowering import lower_unrunnable

    model = _SortsBilinearOneHot()
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    gm = torch.export.export(model, (x, y)).module()
    done = lower_unrunnable(gm)
    assert {"argsort", "sort", "sort_1", "bilinear", "bilinear_1", "one_hot"} <= set(done)
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not any(t.startswith(("aten.sort", "aten.argsort", "aten.bilinear", "aten.one_hot"))
                   for t in targets), targets
    for got, ref in zip(gm(x, y), model(x, y)):
        assert got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
