"""Glyph recognition (notMNIST-style): 45 characters rendered from 22 real fonts, split by font.

The fonts are the TrueType files matplotlib installs (DejaVu Sans / Sans Mono / Serif in four
styles, STIX General in four, Computer Modern roman, bold, math italic, text italic, sans and
typewriter); every one of them has a real glyph for every class. Classes are the digits, the
capitals and the lower-case letters whose shape differs from their capital (EMNIST's
"balanced" set), minus the capital ``I`` and ``O`` (indistinguishable from ``1`` and ``0`` in
many fonts): 45 classes.

Split by font, so the test set is drawn in typefaces never seen in training (``FONT_SPLITS``):
15 fonts train, 3 val, 4 test. Each sample is the font's glyph under a seeded random
augmentation: scale, aspect, rotation, shear, shift, stroke (dilate / erode), ink and
background levels, blur and Gaussian noise. Images are 64x64 (the size two CPU cores can train
on; the deployment-scale models are timed at 224x224), one channel, float32 in [0, 1], ink
bright on dark.

Rendering needs Pillow and matplotlib's fonts (``pip install "edgekit[data]"``); it takes a
few seconds and is cached in memory. The same arguments give the same bytes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

__all__ = ["CLASSES", "FONT_SPLITS", "IMAGE_SIZE", "SAMPLES_PER_FONT", "font_dir", "images",
           "labels", "fonts", "render", "ink_masks"]

CLASSES = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZabdefghnqrt"
IMAGE_SIZE = 64
FONT_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-BoldOblique.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
              "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-BoldItalic.ttf",
              "STIXGeneral.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf",
              "cmmi10.ttf", "cmti10.ttf"),
    "val": ("DejaVuSans-Oblique.ttf", "STIXGeneralItalic.ttf", "cmtt10.ttf"),
    "test": ("DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneralBol.ttf",
             "cmss10.ttf"),
}
#: augmented samples of every class drawn from each font of a split
SAMPLES_PER_FONT = {"train": 8, "val": 4, "test": 5}
_SPLIT_SEED = {"train": 1, "val": 2, "test": 3}
_MASTER = 96  # font size (px) of the master rendering each sample is resampled from


def font_dir() -> Path:
    """matplotlib's bundled TrueType fonts (DataError naming the extra when it is missing)."""
    try:
        import matplotlib
    except ImportError as exc:
        from ..errors import DataError

        raise DataError("the glyph task renders matplotlib's bundled fonts, and matplotlib is "
                        "not installed", hint='pip install "edgekit[data]"') from exc
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def _master(font: str, char: str) -> np.ndarray:
    """The glyph at ``_MASTER`` px, cropped to its ink, float32 in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    path = font_dir() / font
    if not path.is_file():
        from ..errors import DataError

        raise DataError(f"font {font} not found in {path.parent}",
                        hint="reinstall matplotlib (pip install \"edgekit[data]\")")
    face = ImageFont.truetype(str(path), _MASTER)
    canvas = Image.new("L", (3 * _MASTER, 3 * _MASTER), 0)
    ImageDraw.Draw(canvas).text((1.5 * _MASTER, 1.5 * _MASTER), char, fill=255, font=face,
                                anchor="mm")
    a = np.asarray(canvas, dtype=np.float32) / 255.0
    rows, cols = np.flatnonzero(a.max(axis=1) > 0), np.flatnonzero(a.max(axis=0) > 0)
    if rows.size == 0:
        from ..errors import DataError

        raise DataError(f"font {font} renders {char!r} as an empty image")
    a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    a.setflags(write=False)
    return a


def render(font: str, char: str, rng: np.random.RandomState, size: int = IMAGE_SIZE,
           clean: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One augmented sample of ``char`` in ``font``: (image, ink mask), both (size, size).

    The image is float32 in [0, 1]; the mask (uint8 0/1) marks the glyph's ink after the
    stroke change and blur, before the levels, background and noise. ``clean=True`` skips
    every random change (the glyph centred at 70% of the frame).
    """
    from PIL import Image, ImageFilter

    m = _master(font, char)
    h, w = m.shape
    if clean:
        scale, aspect, angle, shear, dx, dy = 0.7, 1.0, 0.0, 0.0, 0.0, 0.0
    else:
        scale = rng.uniform(0.5, 0.85)
        aspect = np.exp(rng.uniform(-0.15, 0.15))
        angle = np.deg2rad(rng.uniform(-12, 12))
        shear = rng.uniform(-0.2, 0.2)
        dx, dy = rng.uniform(-0.12, 0.12, size=2) * size
    # output pixel (u, v) -> master pixel (x, y): centre, undo rotation/shear/scale, re-centre
    k = scale * size / max(h, w)  # master px -> output px
    sx, sy = k * np.sqrt(aspect), k / np.sqrt(aspect)
    c, s = np.cos(angle), np.sin(angle)
    fwd = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inv = np.linalg.inv(fwd)
    centre_out = np.array([size / 2 + dx, size / 2 + dy])
    centre_in = np.array([w / 2, h / 2])
    off = centre_in - inv @ centre_out
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    src = Image.fromarray((m * 255).astype(np.uint8), "L")
    glyph = src.transform((size, size), Image.Transform.AFFINE, coeffs,
                          resample=Image.Resampling.BILINEAR)
    if clean:
        return np.asarray(glyph, dtype=np.float32) / 255.0, (np.asarray(glyph) >= 128).astype(
            np.uint8)
    stroke = rng.uniform()
    if stroke < 0.25:
        glyph = glyph.filter(ImageFilter.MaxFilter(3))
    elif stroke < 0.4:
        glyph = glyph.filter(ImageFilter.MinFilter(3))
    if rng.uniform() < 0.3:
        glyph = glyph.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    ink = np.asarray(glyph, dtype=np.float32) / 255.0
    mask = (ink >= 0.5).astype(np.uint8)
    background = rng.uniform(0.0, 0.3)
    level = rng.uniform(0.6, 1.0)
    # a linear background gradient in a random direction
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(theta) * xx + np.sin(theta) * yy) * rng.uniform(0.0, 0.2)
    img = background + grad + ink * (level - background)
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.12), size=(size, size)).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask


@functools.lru_cache(maxsize=8)
def _split(split: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if split not in FONT_SPLITS:
        from ..errors import UnknownNameError

        raise UnknownNameError("glyph split", split, FONT_SPLITS)
    rng = np.random.RandomState(_SPLIT_SEED[split])
    per = SAMPLES_PER_FONT[split]
    n = len(FONT_SPLITS[split]) * len(CLASSES) * per
    x = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    y = np.empty(n, dtype=np.int64)
    f = np.empty(n, dtype=np.int64)
    i = 0
    for fi, font in enumerate(FONT_SPLITS[split]):
        for label, char in enumerate(CLASSES):
            for _ in range(per):
                img, mask = render(font, char, rng, size)
                x[i] = np.round(img * 255.0).astype(np.uint8)
                masks[i], y[i], f[i] = mask, label, fi
                i += 1
    # a fixed shuffle, so a prefix of a split holds every font and class
    order = np.random.RandomState(100 + _SPLIT_SEED[split]).permutation(n)
    out = (x[order], y[order], f[order], masks[order])
    for a in out:
        a.setflags(write=False)
    return out


def images(split: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(N, 1, size, size) float32 in [0, 1] (stored as 8-bit grey levels)."""
    x = _split(split, size)[0]
    return torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]


def labels(split: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(N,) int64 class indices into ``CLASSES``."""
    return torch.from_numpy(_split(split, size)[1].copy())


def fonts(split: str, size: int = IMAGE_SIZE) -> list[str]:
    """The font file each sample of the split was rendered from."""
    names = FONT_SPLITS[split]
    return [names[i] for i in _split(split, size)[2]]


def ink_masks(split: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(N, size, size) uint8: 1 where the sample has ink (see :func:`render`)."""
    return torch.from_numpy(_split(split, size)[3].copy())
