#!/usr/bin/env python3
"""Regenerate ``edgekit/data/files/text_docstrings.json.gz``: which library wrote this docstring?

A real English corpus that installs offline: the summary paragraph of every docstring in the
source of eight scientific Python libraries (read with ``ast``, nothing is imported), labelled
by library. The extracted corpus is shipped so the task does not depend on the versions
installed where it is used; this script records how it was made (the versions are stored in
the file).

    python scripts/make_text_corpus.py        # writes edgekit/data/files/text_docstrings.json.gz

Rules:

* Files under a ``tests`` folder, ``test_*.py``, ``conftest.py`` and vendored ``_vendor`` /
  ``externals`` code are skipped.
* A docstring's summary is its first paragraph (up to the first blank line), whitespace
  collapsed; kept when it has 6 to 80 words.
* Words that name a library (``LIBRARY_WORDS``: numpy, np, scipy, torch, sklearn, ...) are
  removed, so the label is not spelled out in the text.
* A summary that appears under more than one library is dropped; within a library each text
  is kept once.
* Split by source file (sha256 of the file's path inside its package): 70% train, 15% val,
  15% test, so no test sentence comes from a file seen in training.
* At most ``CAP`` texts per library (a seeded choice). Because whole files go to one split,
  the splits' classes are imbalanced (in the test split the largest library has about four
  times the texts of the smallest), which is why the task reports macro recall and F1 beside
  accuracy.

File contents (JSON, gzip): ``{"libraries": [...], "versions": {...}, "samples": [[library
index, split ("train" | "val" | "test"), source path, text], ...]}``.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

LIBRARIES = ("numpy", "scipy", "torch", "sklearn", "matplotlib", "pandas", "sympy", "networkx")
DISTRIBUTIONS = {"sklearn": "scikit-learn"}
LIBRARY_WORDS = {"numpy", "np", "scipy", "sp", "torch", "pytorch", "sklearn", "scikit",
                 "matplotlib", "mpl", "pyplot", "plt", "pandas", "pd", "sympy", "networkx",
                 "nx"}
CAP = 1500
SEED = 0
OUT = Path(__file__).resolve().parents[1] / "edgekit" / "data" / "files" / \
    "text_docstrings.json.gz"
_WORD = re.compile(r"[A-Za-z_][\w.]*|\S")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def skip(rel: Path) -> bool:
    parts = set(rel.parts)
    return bool(parts & {"tests", "testing", "_vendor", "externals", "vendored"}) or \
        rel.name.startswith("test_") or rel.name == "conftest.py"


def summary(doc: str) -> str | None:
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    words = [w for w in para.split() if w.strip(".,:;()`'\"").lower().split(".")[0]
             not in LIBRARY_WORDS]
    return " ".join(words) if 6 <= len(words) <= 80 else None


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            text = summary(doc) if doc else None
            if text:
                out.append(text)
    return out


def split_of(rel: str) -> str:
    h = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 70 else "val" if h < 85 else "test"


def main(argv: list[str] | None = None) -> int:
    import random

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    found: dict[str, list[tuple[str, str]]] = {}
    owners: dict[str, set[str]] = {}
    versions = {}
    for lib in LIBRARIES:
        root = package_dir(lib)
        versions[lib] = importlib.metadata.version(DISTRIBUTIONS.get(lib, lib))
        seen: set[str] = set()
        items = []
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent)
            if skip(rel.relative_to(lib)):
                continue
            for text in docstrings(path):
                if text not in seen:
                    seen.add(text)
                    items.append((rel.as_posix(), text))
                    owners.setdefault(text, set()).add(lib)
        found[lib] = items
    rng = random.Random(SEED)
    samples = []
    for li, lib in enumerate(LIBRARIES):
        items = [(p, t) for p, t in found[lib] if len(owners[t]) == 1]
        if len(items) > CAP:
            items = sorted(rng.sample(items, CAP))
        samples += [[li, split_of(p), p, t] for p, t in items]
        print(f"{lib} {versions[lib]}: {len(items)} texts", file=sys.stderr)
    doc = {"libraries": list(LIBRARIES), "versions": versions, "samples": samples}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    with open(args.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(data)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB): {len(samples)} texts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
