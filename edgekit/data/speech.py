"""Spoken digits "zero".."nine": log-mel features shipped in ``files/spoken_digits.npz``.

The file was made offline with espeak-ng by ``scripts/make_speech_features.py`` (30 variants per
digit: voices, speeds, pitches, noise). Reading it needs numpy only.
Split per digit by variant index: variants 0-17 train, 18-23 val, 24-29 test, so the test set
holds recordings of voice/speed/pitch/noise settings never seen in training.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

FEATURES_PATH = Path(__file__).parent / "files" / "spoken_digits.npz"
FRAMES, MELS = 20, 16


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not FEATURES_PATH.exists():
        from ..errors import DataError

        raise DataError(
            f"spoken digit features not found at {FEATURES_PATH}",
            hint="reinstall edgekit, or run scripts/make_speech_features.py (needs espeak-ng)",
        )
    with np.load(FEATURES_PATH) as d:
        feats = d["features"].astype(np.float32)
        labels = d["labels"].astype(np.int64)
    # Variant index of each clip within its digit.
    variant = np.zeros_like(labels)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        variant[idx] = np.arange(idx.size)
    for a in (feats, labels, variant):
        a.setflags(write=False)
    return feats, labels, variant


def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, 20, 16) float32 and labels (N,) int64 of one split ("train", "val", "test")."""
    feats, labels, variant = _load()
    per_digit = int(variant.max()) + 1
    lo, hi = {
        "train": (0, int(0.6 * per_digit)),
        "val": (int(0.6 * per_digit), int(0.8 * per_digit)),
        "test": (int(0.8 * per_digit), per_digit),
    }[name]
    mask = (variant >= lo) & (variant < hi)
    return torch.from_numpy(feats[mask].copy()), torch.from_numpy(labels[mask].copy())
