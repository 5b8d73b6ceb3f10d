"""scikit-learn's bundled handwritten digits (1797 real 8x8 images) and their fixed split.

The split is the project's published baseline: ``numpy.random.RandomState(0).permutation(1797)``,
first 60% train, next 20% val, last 20% test (1078 / 359 / 360 samples).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "val", "test")
N_DIGITS = 1797


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = d.images.astype(np.int64)  # (1797, 8, 8), values 0..16
    labels = d.target.astype(np.int64)
    raw.setflags(write=False)
    labels.setflags(write=False)
    return raw, labels


@functools.lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Sample indices of each split (into the 1797 digits), fixed by seed 0."""
    n = N_DIGITS
    perm = np.random.RandomState(0).permutation(n)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    out = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }
    for v in out.values():
        v.setflags(write=False)
    return out


def _check_split(split: str) -> np.ndarray:
    if split not in SPLITS:
        from ..errors import UsageError

        raise UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split_indices()[split]


def raw_pixels(split: str) -> np.ndarray:
    """(N, 8, 8) int64 pixel values 0..16."""
    return _load()[0][_check_split(split)]


def labels(split: str) -> torch.Tensor:
    """(N,) int64 class labels 0..9."""
    return torch.from_numpy(_load()[1][_check_split(split)].copy())


def images8(split: str) -> torch.Tensor:
    """(N, 1, 8, 8) float32 in [0, 1] (pixel / 16)."""
    x = raw_pixels(split).astype(np.float32) / 16.0
    return torch.from_numpy(x).unsqueeze(1)


def upsample(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of (N, 1, 8, 8) images to (N, 1, size, size)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def images32(split: str) -> torch.Tensor:
    """(N, 1, 32, 32) float32: bilinear upsampling of the 8x8 images."""
    return upsample(images8(split), 32)


def rows(split: str) -> torch.Tensor:
    """(N, 8, 8) float32: the 8 rows of each image as a sequence of 8 steps x 8 features."""
    return images8(split)[:, 0]


def tokens(split: str) -> torch.Tensor:
    """(N, 64) int64: raw pixel values 0..16 in row-major order (vocabulary size 17)."""
    return torch.from_numpy(raw_pixels(split).reshape(-1, 64).copy())
