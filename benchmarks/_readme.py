"""Rewrite one generated section of README.md, between `<!-- NAME:start -->` and
`<!-- NAME:end -->`."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def update_readme_section(name: str, body: str) -> bool:
    """Replace the section's body; False (and nothing written) when the markers are missing."""
    readme = ROOT / "README.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body.strip()}\n{end}{tail}")
    return True
