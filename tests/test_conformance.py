"""What every registered backend promises, generated from the registry: a new backend is
picked up by adding it to ``edgekit.backends.BACKENDS``, with no list to edit here.

Per backend: the fp32 export of a tiny model loads and matches PyTorch; ``inspect`` reads the
lone file back; ``check_file`` refuses garbage; ``quantize`` gives an int8 artifact that runs
close to PyTorch; the int8 alternatives and sources, the device answers and the options
schema are well formed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import BACKENDS, Artifact, Backend, backend_for_file, get_backend
from edgekit.errors import BundleError, DeviceUnavailableError
from edgekit.measure.metrics import cosine
from edgekit.quantize.config import QuantConfig

NAMES = sorted(BACKENDS)


class Tiny(nn.Module):
    """Conv, pooling and a linear head: the layers every runtime quantizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _backend(name: str) -> Backend:
    backend = get_backend(name)
    reason = backend.available()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return backend


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, tuple[torch.Tensor, ...], list[list[np.ndarray]]]:
    torch.manual_seed(0)
    model = Tiny().eval()
    gen = torch.Generator().manual_seed(1)
    calibration = [[torch.rand(1, 3, 8, 8, generator=gen).numpy()] for _ in range(16)]
    return model, (torch.from_numpy(calibration[0][0]),), calibration


@pytest.fixture(scope="module")
def fp32(tiny, tmp_path_factory) -> dict[str, Artifact]:
    """Each available backend's fp32 artifact of :class:`Tiny`, exported once."""
    model, x, _ = tiny
    out: dict[str, Artifact] = {}
    for name in NAMES:
        backend = get_backend(name)
        if backend.available() is None:
            out[name] = backend.export(model, x, tmp_path_factory.mktemp(f"{name}-fp32"),
                                       input_names=["x"], output_names=["y"], options={})
    return out


def _reference(model: nn.Module, feeds: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(f) for f in feeds)).numpy()


def test_every_backend_is_registered_whole():
    suffixes = [get_backend(n).file_suffix for n in NAMES]
    assert len(set(suffixes)) == len(suffixes), "two backends claim one file suffix"
    for name in NAMES:
        backend = get_backend(name)
        assert isinstance(backend, Backend), f"{name} misses part of the Backend protocol"
        assert backend.name == name
        assert isinstance(backend.options_schema, dict)
        assert isinstance(backend.qat_graph, bool)


@pytest.mark.parametrize("name", NAMES)
def test_fp32_export_loads_and_matches_pytorch(name, tiny, fp32):
    backend = _backend(name)
    model, x, calibration = tiny
    art = fp32[name]
    assert art.backend == name and art.precision == "fp32"
    assert art.path.suffix == backend.file_suffix
    assert [s.name for s in art.inputs] == ["x"] and [s.name for s in art.outputs] == ["y"]
    sess = backend.load(art, threads=1, options={})
    for feeds in calibration[:4]:
        (y,) = sess.run(feeds)
        np.testing.assert_allclose(y, _reference(model, feeds), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_inspect_reads_a_lone_file(name, tiny, fp32):
    backend = _backend(name)
    art = fp32[name]
    assert type(backend_for_file(art.path)) is type(backend)
    seen = backend.inspect(art.path)
    assert seen.backend == name and seen.precision == "fp32" and seen.files[0] == art.files[0]
    assert [s.shape for s in seen.inputs] == [s.shape for s in art.inputs]
    assert [s.shape for s in seen.outputs] == [s.shape for s in art.outputs]
    (y,) = backend.load(seen, threads=1, options={}).run(tiny[2][0])
    np.testing.assert_allclose(y, _reference(tiny[0], tiny[2][0]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_check_file_refuses_garbage(name, tmp_path):
    backend = get_backend(name)
    bad = tmp_path / f"model{backend.file_suffix}"
    bad.write_bytes(b"\x00garbage, not a model" * 8)
    with pytest.raises(BundleError, match=str(bad.name)):
        backend.check_file(bad)
    empty = tmp_path / f"empty{backend.file_suffix}"
    empty.write_bytes(b"")
    with pytest.raises(BundleError):
        backend.check_file(empty)


@pytest.mark.parametrize("name", NAMES)
def test_check_file_accepts_its_export(name, fp32):
    _backend(name).check_file(fp32[name].path)


@pytest.mark.parametrize("name", NAMES)
def test_quantize_runs_close_to_pytorch(name, tiny, fp32, tmp_path):
    backend = _backend(name)
    reason = backend.int8_available()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    model, x, calibration = tiny
    config = QuantConfig(io="float", fallback=False, latency_check=False)
    fp32_art = None if backend.qat_graph else fp32[name]
    art = backend.quantize(model, x, tmp_path, input_names=["x"], output_names=["y"],
                           options={}, calibration=calibration, config=config, fp32=fp32_art)
    assert art.backend == name and art.precision == "int8"
    assert art.path.suffix == backend.file_suffix
    assert backend.inspect(art.path).precision == "int8"
    sess = backend.load(art, threads=1, options={})
    for feeds in calibration[:4]:
        (y,) = sess.run(feeds)
        assert float(np.min(cosine(_reference(model, feeds), y))) > 0.95


@pytest.mark.parametrize("name", NAMES)
def test_int8_choices_are_well_formed(name, tiny):
    backend = get_backend(name)
    model = tiny[0]
    for config in (QuantConfig(), QuantConfig(activation_type="int8")):
        sources = backend.int8_sources(config)
        alternatives = backend.int8_alternatives(config, model)
        compared = backend.int8_alternatives(config, model, sources_compared=True)
        assert sources, f"{name} offers no int8 source"
        for choices in (sources, alternatives, compared):
            assert all(isinstance(label, str) and label and isinstance(changes, dict)
                       for label, changes in choices)
            for _, changes in choices:
                config.__class__(**{**config.to_json(), **changes})  # valid settings
        assert {label for label, _ in compared} <= {label for label, _ in alternatives}


@pytest.mark.parametrize("name", NAMES)
def test_devices_answer_plainly(name, fp32, tiny):
    backend = get_backend(name)
    assert backend.device_unavailable_reason("cpu") is None
    reason = backend.device_unavailable_reason("no-such-device")
    assert isinstance(reason, str) and reason
    if name not in fp32:
        return
    with pytest.raises(DeviceUnavailableError):
        backend.load_on_device(fp32[name], "no-such-device", threads=1, options={})
    sess: Any = backend.load_on_device(fp32[name], "cpu", threads=1, options={})
    (y,) = sess.run(tiny[2][0])
    assert y.shape == (1, 4)


def test_an_unknown_suffix_names_the_file_and_the_known_ones(tmp_path: Path):
    from edgekit.errors import UsageError

    with pytest.raises(UsageError) as info:
        backend_for_file(tmp_path / "model.bin")
    text = str(info.value)
    assert "model.bin" in text
    assert all(get_backend(n).file_suffix in text for n in NAMES)
