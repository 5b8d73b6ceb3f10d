"""The histogram observers' range search runs without a tensor read per step and finds the same
range, bit for bit, as PyTorch's own (so the same scales and the same int8 bytes), on spread,
skewed, outlier-laden and degenerate activations (all zero, constant, ~1e-9: where the
original walks every 1e-5 step)."""

from __future__ import annotations

import pytest
import torch

from edgekit.backends._histogram_search import fast_search, speed_up

observer = pytest.importorskip("torchao.quantization.pt2e.observer")


def _cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4000, generator=g), torch.randn(4000, generator=g) ** 3,
            torch.rand(3000, generator=g), torch.relu(torch.randn(5000, generator=g)) * 7,
            torch.cat([torch.randn(5000, generator=g), torch.tensor([80.0, -3e3])]),
            torch.zeros(100), torch.full((50,), 2.5), torch.randn(10, generator=g) * 1e-9]


@pytest.mark.parametrize("case", range(8))
def test_the_same_range_as_pytorchs_search(case):
    x = _cases()[case]
    obs = observer.HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    obs(x)
    obs(x * 1.3 + 0.1)  # a second batch widens and re-bins the histogram
    want = obs._non_linear_param_search()
    got = fast_search(obs)
    assert [float(v) for v in got] == [float(v) for v in want]
    scale_want = obs.calculate_qparams()
    assert speed_up(torch.nn.Sequential(obs)) == 1  # now the observer's own search
    scale_got = obs.calculate_qparams()
    assert all(torch.equal(a, b) for a, b in zip(scale_got, scale_want))
