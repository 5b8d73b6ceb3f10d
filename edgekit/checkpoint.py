"""Load PyTorch checkpoints without running code from them.

``torch.load`` unpickles; a pickle can run any code it names. :func:`load_checkpoint` always
loads with ``weights_only=True`` (tensors, plain containers and numbers only). A file that
needs more is refused with a :class:`~edgekit.errors.DataError` naming the file and the global
it wanted; only an explicit ``trust=True`` (``--trust-checkpoint`` on the command line,
``trust_weights = true`` in a recipe) unpickles it fully, and that is said on stderr.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["load_checkpoint", "UntrustedCheckpointError"]

_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|global)\s+([A-Za-z_][\w.]*(?:\.\w+)*)")


class UntrustedCheckpointError(DataError):
    """A checkpoint needs full unpickling; ``refused`` names the global it asked for."""

    def __init__(self, message: str, *, refused: str | None, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.refused = refused


def load_checkpoint(path: str | Path, *, trust: bool = False, map_location: str = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; ``trust=True`` unpickles fully (runs code)."""
    import torch

    path = Path(path)
    _check_is_checkpoint(path)
    if trust:
        print(f"edgekit: warning: unpickling {path} fully (trusted): it can run any code",
              file=sys.stderr)
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise DataError(f"cannot load checkpoint {path}: {type(exc).__name__}: "
                            f"{_first(exc)}") from exc
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        import pickle

        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
            m = _GLOBAL.search(text)
            refused = m.group(1) if m else None
            what = f"the global {refused}" if refused else "objects other than tensors"
            raise UntrustedCheckpointError(
                f"checkpoint {path} needs {what}, which safe loading (weights_only=True) "
                "refuses: loading it would run code from the file",
                refused=refused,
                hint="save a plain state_dict (torch.save(model.state_dict(), path)); if you "
                "trust the file, opt in with --trust-checkpoint (recipes: trust_weights = true; "
                "Python: trust=True)") from exc
        if isinstance(exc, (zipfile.BadZipFile, EOFError, RuntimeError, OSError)):
            raise DataError(f"{path} is not a readable PyTorch checkpoint (truncated or another "
                            f"format): {type(exc).__name__}: {_first(exc)}") from exc
        raise DataError(f"cannot load checkpoint {path}: {type(exc).__name__}: {_first(exc)}"
                        ) from exc


def _check_is_checkpoint(path: Path) -> None:
    """DataError naming the file and what it really is when it cannot be a torch.save file
    (a zip archive, or a legacy pickle): a text file, an image, an ONNX model... Also refuses a
    missing file, a FIFO or a device before anything reads it."""
    from .errors import BundleError
    from .fsio import open_regular
    from .modelfile import FORMAT_NAMES, _sniff

    try:
        with open_regular(path, "checkpoint") as fh:
            head = fh.read(512)
    except BundleError as exc:
        raise DataError(exc.message, hint=exc.hint) from None
    except OSError as exc:
        raise DataError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    found = _sniff(head)
    if found in ("zip", "pickle"):
        return
    if found == "unknown" and _is_text(head):
        what = "a text file"
    else:
        what = FORMAT_NAMES.get(found, found)
    raise DataError(
        f"{path} is {what}, not a PyTorch checkpoint (torch.save writes a zip archive or, in "
        "the legacy format, a pickle)",
        hint="point the weights at a file written by torch.save(model.state_dict(), path)")


def _is_text(head: bytes) -> bool:
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # a cut last character
    return bool(text) and all(c.isprintable() or c in "\t\r\n" for c in text)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:300]
