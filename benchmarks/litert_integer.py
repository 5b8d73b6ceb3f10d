"""``python -m benchmarks.litert_integer``: ``python -m benchmarks.integer_ops --runtime tflite``
(the command that wrote benchmarks/results/litert_integer.md)."""

from __future__ import annotations

import sys

from benchmarks.integer_ops import main

if __name__ == "__main__":
    raise SystemExit(main(["--runtime", "tflite", *sys.argv[1:]]))
