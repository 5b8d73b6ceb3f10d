"""Tables for people: fixed-width text for the terminal, Markdown for reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: (key, header, format) for each column.
Column = tuple[str, str, str]


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, fmt)


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[header for _, header, _ in columns]]
    cells += [[_cell(r.get(key), fmt) for key, _, fmt in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n and i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(_cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
