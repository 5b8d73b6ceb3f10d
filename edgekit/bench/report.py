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


# --------------------------------------------------------------------------- bench reports

BENCH_COLUMNS: list[Column] = [
    ("name", "artifact", ""),
    ("runtime", "runtime", ""),
    ("where", "device", ""),
    ("precision", "precision", ""),
    ("size_kib", "size KiB", ".1f"),
    ("load_ms", "load ms", ".1f"),
    ("first_ms", "first ms", ".2f"),
    ("median_ms", "median ms", ".4f"),
    ("p90_ms", "p90 ms", ".4f"),
    ("p99_ms", "p99 ms", ".4f"),
    ("cv", "cv", ".2f"),
    ("throughput", "per s", ".0f"),
    ("speedup", "speedup", ".2f"),
    ("accuracy", "accuracy", ".4g"),
    ("agreement", "top-1 agree %", ".2f"),
    ("cosine", "min cosine", ".6f"),
    ("sqnr", "SQNR dB", ".1f"),
    ("mem_mb", "peak MB", ".1f"),
    ("status", "status", ""),
]


def bench_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per result, for the tables."""
    out = []
    for r in report["results"]:
        lat = r.get("latency") or {}
        fid = r.get("fidelity") or {}
        mem = r.get("memory") or {}
        sq = fid.get("sqnr_db")
        flags = []
        if lat.get("noisy"):
            flags.append("noisy")
        if r.get("emulated"):
            flags.append("EMULATED")
        if r.get("pareto"):
            flags.append("pareto")
        status = r["status"] + (f" ({', '.join(flags)})" if flags else "")
        out.append({
            "name": r["name"],
            "runtime": r.get("runtime") or r["backend"],
            "where": ("emulated " if r.get("emulated") else "") + str(r.get("device")),
            "precision": r.get("precision"),
            "size_kib": r["size_bytes"] / 1024 if r.get("size_bytes") else None,
            "load_ms": r.get("load_ms"),
            "first_ms": r.get("first_inference_ms"),
            "median_ms": lat.get("median_ms"),
            "p90_ms": lat.get("p90_ms"),
            "p99_ms": lat.get("p99_ms"),
            "cv": lat.get("cv"),
            "throughput": r.get("throughput_per_s"),
            "speedup": (r.get("vs_baseline") or {}).get("speedup"),
            "accuracy": (r.get("accuracy") or {}).get("value"),
            "agreement": None if fid.get("top1_agreement") is None
            else 100 * fid["top1_agreement"],
            "cosine": fid.get("cosine_min"),
            "sqnr": float("inf") if sq == "inf" else sq,
            "mem_mb": mem.get("peak_rss_mb"),
            "status": status,
        })
    return out


def summary_text(report: dict[str, Any], *, markdown: bool = False) -> str:
    rows = bench_rows(report)
    s = report["settings"]
    lines = []
    what = f"{s['runs']} interleaved rounds" if s.get("duration_s") is None \
        else f"{s['duration_s']:g} s of interleaved rounds"
    head = (f"device {s['device']}" + (f" via {s['remote']}" if s.get("remote") else "")
            + f", {what} after {s['warmup']} warm-up calls; baseline {report.get('baseline')}")
    if s.get("metric"):
        head += f"; accuracy = {s['metric']} on {s['data']}"
    lines.append(head)
    lines.append("")
    table = markdown_table if markdown else text_table
    lines.append(table(rows, BENCH_COLUMNS))
    notes = []
    if report.get("interrupted"):
        notes.append("INTERRUPTED (Ctrl-C): the numbers are the partial results measured so far.")
    elif report.get("partial"):
        notes.append("PARTIAL: some measurements did not finish (see errors).")
    if report.get("emulated_note"):
        notes.append("EMULATED: " + report["emulated_note"] + ".")
    noisy = [r["name"] for r in report["results"] if (r.get("latency") or {}).get("noisy")]
    if noisy:
        notes.append(f"noisy timings (coefficient of variation > 0.25): {', '.join(noisy)}")
    for r in report["results"]:
        if r.get("reason"):
            notes.append(f"{r['name']}: {r['status']}: {r['reason']}")
    for e in report.get("errors", []):
        notes.append(f"error during {e['stage']}: {e['error']}")
    if notes:
        lines.append("")
        lines += [("- " if markdown else "") + n for n in notes]
    return "\n".join(lines)


def write_reports(report: dict[str, Any], out_dir: Any, formats: Sequence[str]) -> dict[str, Any]:
    """Write bench.json / bench.md / PNG plots into ``out_dir``; return the file names."""
    from pathlib import Path

    from ..bundle import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    if "png" in formats:
        files["png"] = plot_reports(report, out)
    if "md" in formats:
        md = ["# edgekit bench", "", summary_text(report, markdown=True), ""]
        for png in files.get("png", []):
            md += [f"![{png}]({png})", ""]
        (out / "bench.md").write_text("\n".join(md), encoding="utf-8")
        files["md"] = "bench.md"
    if "json" in formats:
        files["json"] = "bench.json"
        write_json(out / "bench.json", _jsonable({**report, "files": files}))
    return files


def _jsonable(x: Any) -> Any:
    import math

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else None)
    if hasattr(x, "item") and hasattr(x, "dtype"):
        return _jsonable(x.item())
    return x


def plot_reports(report: dict[str, Any], out: Any) -> list[str]:
    """latency.png (distribution per artifact) and tradeoff.png (quality vs median latency with
    the Pareto front). Needs matplotlib (``pip install "edgekit[bench]"``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import sys

        print("[edgekit bench] matplotlib not installed: no PNG plots "
              '(pip install "edgekit[bench]")', file=sys.stderr)
        return []
    timed = [r for r in report["results"] if r.get("samples_ms")]
    written: list[str] = []
    if not timed:
        return written
    labels = [r["name"] + ("\n(EMULATED)" if r.get("emulated") else "") for r in timed]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(timed) + 2), 4.8), dpi=110)
    data = [r["samples_ms"] for r in timed]
    parts = ax.violinplot(data, showextrema=False, widths=0.8)
    for body, r in zip(parts["bodies"], timed):
        body.set_facecolor("#d62728" if r.get("emulated") else "#1f77b4")
        body.set_alpha(0.35)
    ax.boxplot(data, widths=0.18, showfliers=False, medianprops={"color": "black"})
    for i, r in enumerate(timed, start=1):
        lat = r["latency"]
        ax.annotate(f"median {lat['median_ms']:.3g} ms\np99 {lat['p99_ms']:.3g}"
                    + ("\nnoisy" if lat.get("noisy") else ""),
                    (i, lat["max_ms"]), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=8)
    ax.set_xticks(range(1, len(timed) + 1), labels, fontsize=8,
                  rotation=15 if len(timed) > 3 else 0)
    ax.set_ylabel("latency per call (ms)")
    hi = max(max(d) for d in data)
    lo = min(min(d) for d in data)
    if hi / max(lo, 1e-9) > 30:
        ax.set_yscale("log")
    ax.set_ylim(top=hi * (1.35 if ax.get_yscale() == "linear" else 3))
    s = report["settings"]
    title = f"Latency distribution, batch {timed[0].get('batch', 1)}, device {s['device']}"
    if any(r.get("emulated") for r in timed):
        title += "\nred = EMULATED (qemu): not ARM speed"
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency.png")
    plt.close(fig)
    written.append("latency.png")

    pts = [r for r in timed if r.get("accuracy")]
    if pts:
        ylab = f"accuracy ({pts[0]['accuracy']['metric']})"
        hib = pts[0]["accuracy"]["higher_is_better"]
        yval = [r["accuracy"]["value"] for r in pts]
    else:
        pts = [r for r in timed if (r.get("fidelity") or {}).get("cosine_min") is not None]
        ylab, hib = "fidelity: min cosine vs fp32 reference", True
        yval = [r["fidelity"]["cosine_min"] for r in pts]
    if pts:
        fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
        xs = [r["latency"]["median_ms"] for r in pts]
        err = [[r["latency"]["median_ms"] - r["latency"]["min_ms"] for r in pts],
               [r["latency"]["p90_ms"] - r["latency"]["median_ms"] for r in pts]]
        colors = ["#d62728" if r.get("pareto") else "#7f7f7f" for r in pts]
        ax.errorbar(xs, yval, xerr=err, fmt="none", ecolor="#bbbbbb", zorder=1)
        ax.scatter(xs, yval, c=colors, s=70, zorder=2)
        order = sorted(range(len(pts)), key=lambda i: xs[i])
        for rank, i in enumerate(order):  # stagger labels so close points stay readable
            r = pts[i]
            ax.annotate(r["name"] + (" (emulated)" if r.get("emulated") else ""), (xs[i], yval[i]),
                        textcoords="offset points", xytext=(4, 10 + 13 * (rank % 4)), fontsize=8,
                        arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.5})
        front = sorted((x, y) for x, y, r in zip(xs, yval, pts) if r.get("pareto"))
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#d62728",
                    label="Pareto front (no artifact is both faster and better)")
        elif front:
            ax.scatter([], [], c="#d62728", label="Pareto front")
        ax.set_xlabel("median latency (ms), bars: min to p90  ->  lower is better")
        ax.set_ylabel(ylab + ("  (higher is better)" if hib else "  (lower is better)"))
        ax.set_title("Pick an artifact on the red front: quality vs latency", fontsize=10)
        ax.grid(alpha=0.3)
        if front:
            ax.legend(fontsize=8, loc="best")
        ax.margins(x=0.25, y=0.2)
        fig.tight_layout()
        fig.savefig(out / "tradeoff.png")
        plt.close(fig)
        written.append("tradeoff.png")
    return written
