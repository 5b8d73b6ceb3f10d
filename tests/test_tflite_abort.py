"""An int8 file LiteRT cannot prepare kills a child process, not the build: LiteRT aborts the
process (SIGABRT, no Python exception) on some files (a MobileViT whose activations are exactly
zero, its scales floored, did it in ``allocate_tensors``). The child's death becomes a
ModelRunError naming the signal and what the runtime printed; the int8 source choice then goes
on with its other source. Reproducing LiteRT's own abort takes a five-minute MobileViT build,
so the child here runs an interpreter module that aborts as LiteRT did."""

from __future__ import annotations

import importlib
import sys

import pytest

from edgekit.backends import tflite
from edgekit.errors import ModelRunError

ABORTS = '''
import os, sys

class Interpreter:
    def __init__(self, model_path, num_threads=1):
        print("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", file=sys.stderr)
        print("F0000 requantization multiplier out of range in CONV_2D", file=sys.stderr,
              flush=True)
        os.abort()
'''

PREPARES = '''
class Interpreter:
    def __init__(self, model_path, num_threads=1):
        self.path = model_path

    def allocate_tensors(self):
        open(self.path + ".prepared", "w").close()
'''


def _runtime(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    mod = importlib.import_module(name)
    monkeypatch.setattr(tflite, "_interpreter_module", lambda: mod)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_an_abort_preparing_the_file_is_an_error_naming_the_signal(tmp_path, monkeypatch):
    _runtime(tmp_path, monkeypatch, "aborting_litert", ABORTS)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\0" * 16)
    with pytest.raises(ModelRunError) as info:
        tflite.prepare_in_child(model)
    text = str(info.value)
    assert "SIGABRT" in text and "model.tflite" in text
    assert "requantization multiplier out of range in CONV_2D" in text
    assert "XNNPACK" not in text  # start-up lines are not the reason
    assert "scale_floor" in (info.value.hint or "") and info.value.backend == "tflite"


def test_a_file_that_prepares_passes(tmp_path, monkeypatch):
    _runtime(tmp_path, monkeypatch, "preparing_litert", PREPARES)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\0" * 16)
    tflite.prepare_in_child(model)
    assert (tmp_path / "model.tflite.prepared").exists()  # the child did open it

