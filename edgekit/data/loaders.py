"""Load users' own data as a :class:`~edgekit.data.task.Split`.

* ``load_npz``: arrays in a ``.npz`` file, one key per model input plus a target key.
* ``load_image_folder``: one subfolder per class (``root/cat/1.png``, ``root/dog/2.jpg``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .task import Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def _to_tensor(a: np.ndarray, where: str) -> torch.Tensor:
    if a.dtype == object or a.dtype.kind in "USV":
        raise DataError(
            f"{where} holds {a.dtype} data, not numbers",
            hint="store numeric arrays (float or int) in the .npz file",
        )
    if a.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if a.dtype.kind in "iub":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    raise DataError(f"{where} has unsupported dtype {a.dtype}", hint="use float or int arrays")


def load_npz(
    path: str | Path, input_keys: Sequence[str] = ("x",), target_key: str = "y"
) -> Split:
    """Read ``input_keys`` (in model input order) and ``target_key`` from a ``.npz`` file.

    Float arrays become float32 tensors, integer/bool arrays int64. Every array must have the
    same number of samples (dim 0).
    """
    path = Path(path)
    if isinstance(input_keys, str):
        input_keys = (input_keys,)
    if not path.exists():
        raise DataError(f"data file {path} does not exist", hint="check the path")
    from .._npz import check_npz

    check_npz(path, "data file", error=DataError)  # FIFO, declared sizes, objects
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError ...
        raise DataError(
            f"cannot read {path} as a .npz file: {exc}",
            hint="save the data with numpy.savez(path, x=..., y=...)",
        ) from exc
    with archive:
        present = list(archive.files)
        wanted = [*input_keys, target_key]
        missing = [k for k in wanted if k not in present]
        if missing:
            raise DataError(
                f"{path} has no key {', '.join(repr(k) for k in missing)}; "
                f"keys present: {', '.join(repr(k) for k in present) or 'none'}",
                hint="pass input_keys=... and target_key=... naming keys of the file",
            )
        try:
            arrays = {k: archive[k] for k in wanted}
        except ValueError as exc:  # pickled object arrays
            raise DataError(f"cannot read {path}: {exc}", hint="store numeric arrays") from exc
    counts = {k: (int(a.shape[0]) if a.ndim else None) for k, a in arrays.items()}
    if any(c is None for c in counts.values()):
        scalars = [k for k, c in counts.items() if c is None]
        raise DataError(
            f"{path}: key {', '.join(map(repr, scalars))} is a scalar, not an array of samples",
            hint="dim 0 of every array must be the sample",
        )
    if len(set(counts.values())) != 1:
        shapes = ", ".join(f"{k} {tuple(arrays[k].shape)}" for k in wanted)
        raise DataError(
            f"{path}: arrays disagree on the number of samples (dim 0): {shapes}",
            hint="every input and the target need one entry per sample",
        )
    if next(iter(counts.values())) == 0:
        raise DataError(f"{path} holds no samples", hint="the arrays have length 0")
    inputs = tuple(_to_tensor(arrays[k], f"{path} key {k!r}") for k in input_keys)
    return Split(inputs, _to_tensor(arrays[target_key], f"{path} key {target_key!r}"))


def load_image_folder(
    path: str | Path, size: tuple[int, int] = (32, 32), grayscale: bool = True
) -> tuple[Split, list[str]]:
    """Read ``path/<class>/<image>`` files into a Split and the sorted class names.

    Images are resized to ``size`` = (H, W) (bilinear), scaled to [0, 1] float32 and laid out
    as (N, C, H, W) with C = 1 for ``grayscale`` else 3. Targets are int64 indices into the
    returned class names (sorted alphabetically). Files with other suffixes are skipped.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist", hint="check the path")
    if not root.is_dir():
        raise DataError(
            f"{root} is not a folder", hint="pass a folder with one subfolder per class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"image folder {root} has no class subfolders",
            hint="lay the images out as <folder>/<class name>/<image file>",
        )
    h, w = int(size[0]), int(size[1])
    images, targets = [], []
    for index, name in enumerate(classes):
        files = sorted(
            f for f in (root / name).iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(
                f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                hint="remove the empty folder or add images to it",
            )
        for f in files:
            try:
                with Image.open(f) as img:
                    img = img.convert("L" if grayscale else "RGB").resize((w, h), Image.BILINEAR)
                    a = np.asarray(img, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataError(
                    f"cannot read image {f}: {exc}", hint="remove or replace the broken file"
                ) from exc
            images.append(a[None] if grayscale else a.transpose(2, 0, 1))
            targets.append(index)
    x = torch.from_numpy(np.stack(images).astype(np.float32))
    return Split((x,), torch.tensor(targets, dtype=torch.int64)), classes
