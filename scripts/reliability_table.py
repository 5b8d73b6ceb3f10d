"""Run the reliability tests and write their table into README.md.

    python scripts/reliability_table.py            # run, write README section + JSON
    python scripts/reliability_table.py --check    # run, print the table, write nothing

Runs ``pytest -m reliability`` with a small plugin that records, for every test, its
``@pytest.mark.reliability(case=..., behaviour=...)`` marker and its outcome (passed, failed,
skipped with the reason, xfailed with the reason). The table lists every numbered case of
``CASES`` (a case
without a test is shown as MISSING and makes the script fail), then the extra checks. The
README section lies between ``<!-- reliability:start -->`` and ``<!-- reliability:end -->``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {
    1: "Truncated or garbage .tflite / .onnx / OpenVINO IR given to bench, verify or embed",
    2: "A file whose format does not match its extension",
    3: "ONNX external data outside the model's folder, or offsets/lengths past the end",
    4: "A PyTorch checkpoint with objects `weights_only` loading refuses",
    5: "A model over 2 GiB for ONNX without external data",
    6: "Ops unsupported by a target",
    7: "Dynamic shapes on a target that needs static ones",
    8: "Calibration or evaluation data with the wrong shape, dtype, layout or value range",
    9: "Runtimes that disagree beyond tolerance",
    10: "Pruning across residual, concatenation or grouped-conv couplings",
    11: "An interrupted build or benchmark (SIGINT/SIGTERM mid-run)",
    12: "A full disk or unwritable output folder during export",
    13: "A remote device that disconnects mid-benchmark",
    14: "Malformed target profiles, recipes and manifests (property-based, hypothesis)",
    15: "A bundle archive with unsafe member paths",
    16: "An output folder edgekit did not make (`-o` at a user's folder, `.`, `..`, `/`, home, "
        "a mount point, another user's folder)",
    17: "A run killed between its renames, leftover staging folders, bundle permissions",
    18: "Hostile target, input and output names (paths, NUL, reserved, over-long, non-ASCII)",
    19: "Links planted at temporary files and in the build cache",
    20: "Archive bombs: member count, header and PAX size, compression ratio, sparse and huge "
        "members",
    21: "Huge, sparse or special files where a model or data file is expected (FIFO, device, "
        "declared sizes)",
    22: "Models that fail or allocate without bound when run (ConstantOfShape, Range, "
        "inconsistent constants)",
    23: "Benchmark arguments out of range (NaN, inf, zero, negative, huge)",
    24: "Inputs at run time: torch tensors, requires_grad, bf16, NaN/inf on every runtime",
    25: "A model factory that kills the process; recipe weights that are not a checkpoint",
    26: "Generated C for NaN/inf quantization parameters",
    "deps": "Dependency floors (model-file advisories)",
    "paths": "Secrets and machine paths in manifests and logs",
    "all": "Coverage of the table itself",
}


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def pytest_collection_modifyitems(self, items):  # noqa: D401 - pytest hook
        for item in items:
            mark = item.get_closest_marker("reliability")
            if mark is None:
                continue
            self.rows[item.nodeid] = {
                "test": item.nodeid.split("::", 1)[1],
                "file": item.nodeid.split("::", 1)[0],
                "case": mark.kwargs.get("case"),
                "behaviour": mark.kwargs.get("behaviour", ""),
                "outcome": "not run",
                "reason": "",
            }

    def pytest_runtest_logreport(self, report):
        row = self.rows.get(report.nodeid)
        if row is None:
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            if hasattr(report, "wasxfail"):
                row["outcome"] = "xfailed (known gap)" if report.skipped else "XPASS"
                row["reason"] = report.wasxfail
            elif report.skipped:
                row["outcome"] = "skipped"
                longrepr = report.longrepr
                row["reason"] = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr))
                row["reason"] = row["reason"].removeprefix("Skipped: ")
            else:
                row["outcome"] = report.outcome
        elif report.when == "teardown" and report.outcome == "failed":
            row["outcome"] = "failed (teardown)"


def _case_key(case) -> tuple[int, str]:
    return (case, "") if isinstance(case, int) else (100, str(case))


def table(rows: list[dict]) -> tuple[str, list[str]]:
    by_case: dict = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    problems = [f"case {c} has no test" for c in CASES if isinstance(c, int) and c not in by_case]
    lines = ["| # | Case | What the test does and expects | Test | Outcome |",
             "|---|------|--------------------------------|------|---------|"]
    for case in sorted(set(CASES) | set(by_case), key=_case_key):
        tests = by_case.get(case)
        title = CASES.get(case, str(case))
        if not tests:
            lines.append(f"| {case} | {title} | - | - | **MISSING** |")
            continue
        seen: dict[str, list[dict]] = {}
        for r in tests:  # parametrized tests: one row per function, outcomes summarised
            seen.setdefault(r["test"].split("[")[0], []).append(r)
        for i, (name, group) in enumerate(seen.items()):
            outs = sorted({r["outcome"] for r in group})
            params = [r["test"][len(name) + 1:-1] for r in group if "[" in r["test"]]
            outcome = ", ".join(outs)
            if len(group) > 1:
                outcome = f"{outcome} ({len(group)}: {', '.join(params)})"
            reasons = sorted({r["reason"] for r in group if r["reason"]})
            if reasons:
                outcome += ": " + "; ".join(reasons)
            for r in group:
                if r["outcome"] not in ("passed", "skipped", "xfailed (known gap)"):
                    problems.append(f"{r['test']}: {r['outcome']}")
            lines.append(
                f"| {case if i == 0 else ''} | {title if i == 0 else ''} | "
                f"{group[0]['behaviour'].replace('|', '/')} | `{name}` | "
                f"{outcome.replace('|', '/')} |")
    return "\n".join(lines), problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print the table; write nothing")
    ap.add_argument("--json", default=str(ROOT / "build" / "reliability.json"),
                    help="where to write the raw outcomes (default build/reliability.json)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = ap.parse_args(argv)
    rec = Recorder()
    code = pytest.main(["-m", "reliability", "-q", "-p", "no:cacheprovider", str(ROOT / "tests"),
                        *args.pytest_args], plugins=[rec])
    rows = list(rec.rows.values())
    text, problems = table(rows)
    body = (
        "What edgekit does with untrusted models and data and with faults mid-run. Model files "
        "are checked from their bytes before any runtime opens them (`edgekit.modelfile`); "
        "checkpoints load with `weights_only=True` unless you pass `--trust-checkpoint` "
        "(recipes: `trust_weights = true`); bundles travel as `edgekit pack` archives and come "
        "back through `edgekit unpack`, which streams the archive through limits (members, "
        "header and path sizes, per-member and total size, compression ratio, no sparse "
        "members) before writing anything, refuses unsafe members and checks every "
        "checksum; an output folder edgekit did not make is never replaced without `--force`, "
        "and the root, home and current folders never are; names never become paths; files "
        "are written through exclusive temporary files; FIFOs, devices and sparse or "
        "over-size files are refused by `stat` before a byte is read; SIGTERM is handled like "
        "Ctrl-C (exit 143 / 130). Tests that ask for it run the CLI in a child process capped "
        "at 4 GiB of address space (`tests/capped.py`) and check its peak memory. One row "
        "per test "
        "(`pytest -m reliability`), generated by `python scripts/reliability_table.py` from "
        "the test outcomes on this machine; skips say what was missing.\n\n" + text)
    if args.check:
        print(body)
    else:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2) + "\n")
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _readme import update_readme_section

        if not update_readme_section("reliability", body):
            print("README.md has no <!-- reliability:start/end --> markers", file=sys.stderr)
            return 1
        print(f"README.md reliability section written ({len(rows)} tests)")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems or code not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
