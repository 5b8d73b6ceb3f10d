"""Text classification from a real corpus: which library's docstring is this sentence from?

``files/text_docstrings.json.gz`` holds the summary paragraphs of the docstrings of eight
scientific Python libraries (numpy, scipy, torch, sklearn, matplotlib, pandas, sympy, networkx;
versions stored in the file), with the libraries' own names removed from the text, made by
``scripts/make_text_corpus.py``. Split by source file (no test sentence comes from a file seen
in training); the test split's classes are imbalanced (84 to 344 texts), so the task reports
macro recall and F1 beside accuracy.

Tokens: lower-cased words, numbers and single punctuation marks; the vocabulary is every token
seen at least twice in the train split (most frequent first, ties by spelling) after the
special tokens ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3. A sample is
``[CLS] tokens [SEP]`` padded with 0 to ``SEQ_LEN`` = 128 (cut when longer) and a mask (1 =
token, 0 = padding), both int64.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

__all__ = ["CORPUS_PATH", "SEQ_LEN", "SPECIALS", "libraries", "texts", "vocabulary", "encode",
           "split"]

CORPUS_PATH = Path(__file__).parent / "files" / "text_docstrings.json.gz"
SEQ_LEN = 128
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
MIN_COUNT = 2
_TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")
_SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=1)
def _corpus() -> dict:
    from ..errors import DataError

    if not CORPUS_PATH.exists():
        raise DataError(f"text corpus not found at {CORPUS_PATH}",
                        hint="reinstall edgekit, or run scripts/make_text_corpus.py")
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def libraries() -> tuple[str, ...]:
    """The class names, in label order."""
    return tuple(_corpus()["libraries"])


def texts(name: str) -> tuple[list[str], list[int], list[str]]:
    """(texts, labels, source files) of one split, in the file's order."""
    if name not in _SPLITS:
        from ..errors import UnknownNameError

        raise UnknownNameError("text split", name, _SPLITS)
    rows = [s for s in _corpus()["samples"] if s[1] == name]
    return [r[3] for r in rows], [int(r[0]) for r in rows], [r[2] for r in rows]


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@functools.lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    """Token -> id, built from the train split (see the module notes)."""
    counts = Counter(t for text in texts("train")[0] for t in tokenize(text))
    words = sorted((w for w, c in counts.items() if c >= MIN_COUNT), key=lambda w: (-counts[w], w))
    return {w: i for i, w in enumerate((*SPECIALS, *words))}


def encode(text: str, seq_len: int = SEQ_LEN) -> tuple[list[int], list[int]]:
    """(ids, mask) of one text: ``[CLS] tokens [SEP]`` padded/cut to ``seq_len``."""
    vocab = vocabulary()
    ids = [2] + [vocab.get(t, 1) for t in tokenize(text)][: seq_len - 2] + [3]
    mask = [1] * len(ids) + [0] * (seq_len - len(ids))
    return ids + [0] * (seq_len - len(ids)), mask


@functools.lru_cache(maxsize=6)
def _encoded(name: str, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    docs, labels, _ = texts(name)
    pairs = [encode(t, seq_len) for t in docs]
    ids = np.array([p[0] for p in pairs], dtype=np.int64).reshape(-1, seq_len)
    mask = np.array([p[1] for p in pairs], dtype=np.int64).reshape(-1, seq_len)
    out = (ids, mask, np.asarray(labels, dtype=np.int64))
    for a in out:
        a.setflags(write=False)
    return out


def split(name: str, seq_len: int = SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (N, seq_len), mask (N, seq_len) and labels (N,), all int64."""
    ids, mask, labels = _encoded(name, seq_len)
    return torch.from_numpy(ids.copy()), torch.from_numpy(mask.copy()), torch.from_numpy(
        labels.copy())
