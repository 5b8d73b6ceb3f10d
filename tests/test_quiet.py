"""Quiet by default: third-party output is captured around build steps, shown with --verbose
(or EDGEKIT_VERBOSE=1) or, as its last lines, when a step fails."""

import os
import subprocess
import sys
import warnings

import pytest

from edgekit._quiet import is_verbose, quiet, set_verbose
from edgekit.cli import main
from edgekit.errors import ExportError


def test_fd_output_and_foreign_warnings_are_captured_own_lines_kept(capfd):
    with quiet("step"):
        os.write(2, b"I0000 00:00:1 flatbuffer_export.cc] noise\n")
        os.write(1, b"(00:00) [START] LiteRT-Torch Convert\n")
        print("[edgekit] own progress", file=sys.stderr)
        warnings.warn_explicit("a third-party Warning", UserWarning, "/site-packages/x.py", 1)
    out, err = capfd.readouterr()
    assert "[edgekit] own progress" in err
    assert "flatbuffer_export" not in out + err and "LiteRT-Torch" not in out + err
    assert "Warning" not in out + err


def test_a_logging_handler_made_during_a_step_writes_to_stderr_after_it(capfd):
    import logging

    log = logging.getLogger("third_party_made_in_step")
    log.propagate = False  # only the handler made in the step (not handlers of other tests)
    log.setLevel(logging.INFO)
    disabled = logging.root.manager.disable  # a library imported earlier may have raised it
    logging.disable(logging.NOTSET)
    try:
        with quiet("step"):
            handler = logging.StreamHandler()  # binds the stream of the moment (the capture)
            log.addHandler(handler)
            log.warning("inside the step")
        log.warning("after the step")
    finally:
        log.removeHandler(handler)
        logging.disable(disabled)
    out, err = capfd.readouterr()
    assert "after the step" in err and "inside the step" not in out + err
    assert "Logging error" not in err and "detached" not in err


def test_edgekit_warnings_are_raised_again():
    from edgekit.quantize import Int8SlowerWarning

    with pytest.warns(Int8SlowerWarning, match="slower"), quiet("step"):
        warnings.warn("int8 is slower", Int8SlowerWarning, stacklevel=1)


def test_failure_carries_the_captured_tail():
    with pytest.raises(RuntimeError) as err, quiet("the conversion"):
        os.write(2, b"E0000 converter: unsupported op aten::foo\n")
        raise RuntimeError("boom")
    assert "unsupported op aten::foo" in "\n".join(err.value.__notes__)
    assert "output of the conversion" in err.value.__notes__[0]


def test_verbose_shows_everything(capfd, monkeypatch):
    monkeypatch.setenv("EDGEKIT_VERBOSE", "1")
    assert is_verbose()
    with quiet("step"):
        os.write(2, b"flatbuffer_export.cc\n")
    assert "flatbuffer_export.cc" in capfd.readouterr().err
    monkeypatch.delenv("EDGEKIT_VERBOSE")
    set_verbose(True)
    try:
        assert is_verbose()
    finally:
        set_verbose(None)
    assert not is_verbose()


def test_failing_export_shows_its_output_on_the_cli(tmp_path, capfd, monkeypatch):
    from edgekit.backends.onnxruntime import OnnxRuntimeBackend

    def export(self, *args, **kwargs):
        os.write(2, b"E0000 converter: unsupported op aten::foo\n")
        raise ExportError("the converter failed", backend="onnxruntime")

    monkeypatch.setattr(OnnxRuntimeBackend, "export", export)
    code = main(["build", "cnn", "--no-train", "-t", "x86-onnxruntime-fp32",
                 "-o", str(tmp_path / "b")])
    err = capfd.readouterr().err
    assert code == 1
    assert "edgekit: error: " in err and "the converter failed" in err
    assert err.index("unsupported op aten::foo") > err.index("edgekit: error:")


@pytest.mark.slow
def test_build_is_quiet_by_default_and_verbose_on_request(tmp_path):
    def build(*extra):
        cmd = [sys.executable, "-m", "edgekit", "build", "cnn", "-t", "x86-tflite-fp32",
               "-t", "x86-openvino-fp32", "--epochs", "1", "-o", str(tmp_path / "b"), "--force",
               *extra]
        # importing litert/jax in this test process sets TF_CPP_MIN_LOG_LEVEL, which would
        # silence the converter's own log lines in the child too
        env = {k: v for k, v in os.environ.items()
               if k not in ("EDGEKIT_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    quiet_err = build()
    for needle in ("LiteRT-Torch Convert", "flatbuffer_export", "Warning"):
        assert needle not in quiet_err
    assert "[edgekit] x86-tflite-fp32: exporting with tflite" in quiet_err
    loud_err = build("--verbose")
    assert "LiteRT-Torch Convert" in loud_err and "flatbuffer_export" in loud_err
