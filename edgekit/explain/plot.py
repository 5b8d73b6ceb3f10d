"""One PNG: effective SQNR along the network depth, one line per runtime (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import ExplainReport

__all__ = ["plot_sqnr"]

#: Where an exact (infinite SQNR) layer is drawn.
PLOT_CAP_DB = 150.0


def plot_sqnr(report: ExplainReport, path: str | Path) -> Path:
    """Needs matplotlib (``pip install "edgekit[bench]"``)."""
    from .._deps import require

    matplotlib = require("matplotlib", backend="plot (explain --plot)", extra="bench")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fsio import atomic_write

    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(report.layers) + 3), 4.5))
    try:
        for t in report.targets:
            if t.status != "ok":
                continue
            xs, ys = [], []
            for i, r in enumerate(t.rows):
                v = r.effective_sqnr_db
                if r.mapped and v is not None and not math.isnan(v):
                    xs.append(i)
                    ys.append(min(v, PLOT_CAP_DB))
            line, = ax.plot(xs, ys, marker="o", markersize=3, label=t.target)
            if t.jump is not None:
                i = t.rows.index(t.jump)
                ax.annotate(t.jump.module, (i, min(t.jump.effective_sqnr_db or 0, PLOT_CAP_DB)),
                            color=line.get_color(), fontsize=8, xytext=(4, -12),
                            textcoords="offset points")
        ax.axhline(report.thresholds.get("min_sqnr_db", 20.0), color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(report.layers)))
        ax.set_xticklabels([layer["module"] for layer in report.layers], rotation=90,
                           fontsize=7)
        ax.set_ylabel(f"effective SQNR vs PyTorch (dB, exact drawn at {PLOT_CAP_DB:.0f})")
        ax.set_title(f"edgekit explain: {report.model}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return atomic_write(path, buf.getvalue())
