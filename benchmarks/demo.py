"""Run the demo job and keep its table as a result: benchmarks/results/demo.{md,json}.

    python benchmarks/demo.py [--no-readme]

Also rewrites the README's demo section from that run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from edgekit.demo import run_demo

from _readme import RESULTS, update_readme_section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-demo-") as tmp:
        report = run_demo(out_dir=tmp, progress=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        md = (Path(tmp) / "report.md").read_text()
        (RESULTS / "demo.md").write_text(md)
        for png in ("latency.png", "tradeoff.png"):
            shutil.copy(Path(tmp) / png, RESULTS / f"demo_{png}")
    slim = {k: v for k, v in report.items() if k not in ("results", "files")}
    (RESULTS / "demo.json").write_text(json.dumps(slim, indent=2, default=str) + "\n")
    if not args.no_readme:
        body = md.split("\n", 2)[2]  # drop the title line
        update_readme_section("demo", body + "\n![accuracy vs latency](benchmarks/results/"
                                      "demo_tradeoff.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
