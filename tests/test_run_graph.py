"""The transforms' graph from one run, for models torch.fx cannot trace (library models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.quantize.transforms import apply_transforms
from edgekit.quantize.transforms._graph import trace


class _Block(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus a residual read of the first conv's output."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        y = self.bn2(self.conv2(self.act(self.bn1(h))))
        return y + h if self.residual else y


class _Untraceable(nn.Module):
    """A forward torch.fx cannot follow: it iterates over a tensor's shape."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(residual)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, *_ = x.shape  # a proxy cannot be unpacked
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean((2, 3)).reshape(n, -1))


class _NumpyReader(_Untraceable):
    """Reads the first conv's output through NumPy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.blocks[0]
        h = b.conv1(x)
        side = torch.from_numpy(h.numpy().copy())
        y = b.bn2(b.conv2(b.act(b.bn1(h))))
        return self.head((y + side).mean((2, 3)))


class _HiddenReader(_Untraceable):
    """Reads the first conv's output with torch functions switched off: out of a run's sight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, *_ = x.shape  # torch.fx cannot follow
        b = self.blocks[0]
        h = b.conv1(x)
        with torch._C.DisableTorchFunction():
            side = h * 1.0
        y = b.bn2(b.conv2(b.act(b.bn1(h))))
        return self.head((y + side).mean((2, 3)))


def _model(cls: type, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    m = cls(**kw).eval()
    with torch.no_grad():  # batch norms with statistics of their own
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 2.0)
    return m


def _batches(n: int = 4) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.standard_normal((2, 4, 8, 8)).astype(np.float32)] for _ in range(n)]


def _outputs(m: nn.Module, batch: list[np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return m(torch.from_numpy(batch[0]))


def test_a_model_fx_cannot_trace_is_folded_and_equalized_from_one_run():
    model = _model(_Untraceable)
    assert trace(model)[0] is None  # torch.fx fails on it
    data = _batches()
    out, rec = apply_transforms(model, data, equalize=True)
    assert "one run" in rec["graph"] and "torch.fx could not trace" in rec["graph"]
    assert rec["bn_folded"] == ["blocks.0.conv1 -> blocks.0.bn1",
                                "blocks.0.conv2 -> blocks.0.bn2"]
    assert rec["equalized_pairs"] == ["blocks.0.conv1 -> relu -> blocks.0.conv2"]
    assert "equalize" in rec["applied"] and rec["run_graph_check_sqnr_db"] >= 60
    assert isinstance(out.blocks[0].bn1, nn.Identity)
    # the function is kept on every batch, not only on the one the graph was read from
    ref = model.blocks[0].conv1.weight.detach().clone()
    for b in data:
        torch.testing.assert_close(_outputs(out, b), _outputs(model, b), rtol=1e-4, atol=1e-4)
    assert torch.equal(model.blocks[0].conv1.weight, ref)  # the user's model untouched


def test_a_model_in_training_mode_is_compared_in_inference_mode():
    model = _model(_Untraceable).train()  # batch norms would use the batch's statistics
    _, rec = apply_transforms(model, _batches(), equalize=True)
    assert rec["run_graph_check_sqnr_db"] >= 60 and len(rec["bn_folded"]) == 2
    assert model.training  # the user's model keeps its mode


def test_a_residual_read_of_a_conv_output_stops_its_fold():
    model = _model(_Untraceable, residual=True)
    graph, why = trace(model, _batches(1)[0])
    assert graph is not None and why is not None and why.startswith("run:")
    conv1 = next(n for n in graph.nodes if n.target == "blocks.0.conv1")
    assert len(conv1.users) == 2  # bn1 and the add
    _, rec = apply_transforms(model, _batches(), equalize=True)
    assert rec["bn_folded"] == ["blocks.0.conv2 -> blocks.0.bn2"]


def test_a_read_into_numpy_is_a_user():
    _, rec = apply_transforms(_model(_NumpyReader), _batches(), equalize=True)
    assert rec["bn_folded"] == ["blocks.0.conv2 -> blocks.0.bn2"]


def test_a_reader_the_run_cannot_see_is_caught_and_nothing_is_applied():
    model = _model(_HiddenReader)
    data = _batches()
    out, rec = apply_transforms(model, data, equalize=True)
    assert rec["run_graph_check_sqnr_db"] < 60
    assert rec["bn_folded"] == [] and rec["applied"] == []
    assert "departs from the model" in rec["skipped"]["bn_fold"]
    torch.testing.assert_close(_outputs(out, data[0]), _outputs(model, data[0]))


def test_a_forward_that_branches_on_data_gets_no_graph():
    class Branchy(_Untraceable):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, *_ = x.shape
            y = self.blocks[0](x).mean((2, 3))
            return self.head(y if y.sum() > 0 else -y).reshape(n, -1)

    model = _model(Branchy)
    graph, why = trace(model, _batches(1)[0])
    assert graph is None and why is not None and "branches on a computed tensor" in why
    out, rec = apply_transforms(model, _batches(), equalize=True)
    assert rec["applied"] == [] and "bn_folded" not in rec and out is not model
    assert "branches on a computed tensor" in rec["skipped"]["equalize"]


def test_a_model_that_fails_on_its_batch_gets_no_graph():
    class Fails(_Untraceable):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("no")

    graph, why = trace(_model(Fails), _batches(1)[0])
    assert graph is None and why is not None and "a run on the first batch failed" in why


@pytest.mark.parametrize("kind", ["transformers"])
def test_a_library_resnet_is_folded_from_one_run(kind):
    transformers = pytest.importorskip(kind)
    torch.manual_seed(0)
    model = transformers.ResNetModel(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x).pooler_output

    rng = np.random.default_rng(0)
    data = [[rng.standard_normal((1, 3, 32, 32)).astype(np.float32)] for _ in range(2)]
    wrapped = Pooled().eval()
    out, rec = apply_transforms(wrapped, data, equalize=True)
    assert len(rec["bn_folded"]) == 8 and len(rec["equalized_pairs"]) == 4
    torch.testing.assert_close(_outputs(out, data[1]), _outputs(wrapped, data[1]),
                               rtol=1e-4, atol=1e-4)


def test_qat_folds_the_batch_norms_of_a_model_fx_cannot_trace():
    from edgekit.quantize.qat import _fold_batch_norm

    model = _model(_Untraceable)
    x = torch.from_numpy(_batches(1)[0][0])
    plain, did = _fold_batch_norm(model)  # fx only: nothing folded, a plain copy
    assert not did and isinstance(plain.blocks[0].bn1, nn.BatchNorm2d)
    folded, did = _fold_batch_norm(model, (x,))
    assert did and isinstance(folded.blocks[0].bn1, nn.Identity)
    assert isinstance(model.blocks[0].bn1, nn.BatchNorm2d)  # the user's model untouched
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    # a fold the run misread is not kept
    hidden, did = _fold_batch_norm(_model(_HiddenReader), (x,))
    assert not did and isinstance(hidden.blocks[0].bn1, nn.BatchNorm2d)


def test_the_check_reads_outputs_in_a_mapping():
    class Named(nn.Module):  # a library-style output: a mapping of tensors
        def __init__(self) -> None:
            super().__init__()
            self.inner = _model(_HiddenReader)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.inner(x)}

    _, rec = apply_transforms(Named().eval(), _batches(), equalize=True)
    assert rec["run_graph_check_sqnr_db"] < 60 and rec["bn_folded"] == []
