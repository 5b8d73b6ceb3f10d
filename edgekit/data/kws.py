"""Keyword spotting at the MLPerf Tiny shape: 49x10 MFCC of 1 s clips at 16 kHz, 12 classes.

Shipped as features in ``files/kws_mfcc.npz`` (float16, standardised per coefficient with the
train split's statistics), made offline with espeak-ng by ``scripts/make_kws_features.py``:
the ten keywords ``yes no up down left right on off stop go``, ``_silence_`` (noise alone) and
``_unknown_`` (25 other words), spoken by 160 espeak-ng voices (8 English accents x 20 voice
variants) at seeded speeds, pitches, onsets, levels and white/pink/brown noise (5-35 dB SNR).
Every voice belongs to one split (96 train, 32 val, 32 test), so test clips are spoken by
voices never heard in training; 120 / 40 / 40 clips per class. Reading it needs numpy only.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

__all__ = ["CLASSES", "FEATURES_PATH", "FRAMES", "COEFFS", "split", "metadata"]

FEATURES_PATH = Path(__file__).parent / "files" / "kws_mfcc.npz"
FRAMES, COEFFS = 49, 10
CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_",
           "_unknown_")
_CODES = {"train": 0, "val": 1, "test": 2}


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, np.ndarray]:
    from ..errors import DataError

    if not FEATURES_PATH.exists():
        raise DataError(f"keyword-spotting features not found at {FEATURES_PATH}",
                        hint="reinstall edgekit, or run scripts/make_kws_features.py "
                        "(needs espeak-ng)")
    with np.load(FEATURES_PATH) as d:
        out = {k: d[k] for k in ("features", "labels", "split", "voices", "words", "speeds",
                                 "pitches", "snr_db", "classes")}
    if tuple(out["classes"]) != CLASSES or out["features"].shape[1:] != (FRAMES, COEFFS):
        raise DataError(f"{FEATURES_PATH} holds classes {tuple(out['classes'])} and features "
                        f"{out['features'].shape[1:]}, expected {CLASSES} and "
                        f"({FRAMES}, {COEFFS})",
                        hint="regenerate it with scripts/make_kws_features.py")
    for a in out.values():
        a.setflags(write=False)
    return out


def _mask(name: str) -> np.ndarray:
    if name not in _CODES:
        from ..errors import UnknownNameError

        raise UnknownNameError("keyword-spotting split", name, _CODES)
    return _load()["split"] == _CODES[name]


def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MFCC (N, 49, 10) float32 and labels (N,) int64 of one split ("train", "val", "test")."""
    d, m = _load(), _mask(name)
    return (torch.from_numpy(d["features"][m].astype(np.float32)),
            torch.from_numpy(d["labels"][m].astype(np.int64)))


def metadata(name: str) -> dict[str, np.ndarray]:
    """Per-clip voice (empty for silence), word, speed, pitch and SNR of one split."""
    d, m = _load(), _mask(name)
    return {k: d[k][m] for k in ("voices", "words", "speeds", "pitches", "snr_db")}
