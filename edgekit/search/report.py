"""A search's results as data and files: the trials of each target, its Pareto front
(latency x metric x size), the chosen point (the fastest within the budget, else the
closest one), written as ``search.json``, ``search.md`` and ``pareto-<target>.png``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Budget", "choose", "pareto", "rows_from_trials", "target_report", "write_reports"]


@dataclass(frozen=True)
class Budget:
    """Largest metric drop against the unpruned PyTorch model (metric points), optional size
    and latency ceilings."""

    max_drop: float = 1.0
    max_size_bytes: int | None = None
    max_latency_ms: float | None = None

    def violations(self, row: dict[str, Any]) -> dict[str, float]:
        """How far ``row`` is over each budget (relative to the budget; empty = within)."""
        over: dict[str, float] = {}
        if row["drop"] > self.max_drop:
            over["drop"] = (row["drop"] - self.max_drop) / max(abs(self.max_drop), 1.0)
        if self.max_size_bytes is not None and row["size_bytes"] > self.max_size_bytes:
            over["size"] = row["size_bytes"] / self.max_size_bytes - 1.0
        if self.max_latency_ms is not None and row["latency_ms"] > self.max_latency_ms:
            over["latency"] = row["latency_ms"] / self.max_latency_ms - 1.0
        return over

    def to_json(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "max_size_bytes": self.max_size_bytes,
                "max_latency_ms": self.max_latency_ms}


def rows_from_trials(trials: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per Optuna trial (complete or failed), from its values and user attributes."""
    rows = []
    for t in trials:
        a = t.user_attrs
        state = t.state.name.lower()
        row: dict[str, Any] = {
            "trial": t.number, "state": state, "point": a.get("point", dict(t.params)),
            "latency_ms": a.get("latency_ms"), "accuracy": a.get("accuracy"),
            "drop": a.get("drop"), "size_bytes": a.get("size_bytes"),
            "build_node": a.get("build_node"), "time_node": a.get("time_node"),
            "bundle": a.get("bundle"), "error": a.get("error"),
            "started": _iso(getattr(t, "datetime_start", None)),
            "finished": _iso(getattr(t, "datetime_complete", None))}
        if state == "complete" and None in (row["latency_ms"], row["accuracy"],
                                            row["size_bytes"]):
            row["state"] = "incomplete"
        rows.append(row)
    return rows


def _iso(when: Any) -> str | None:
    return None if when is None else when.isoformat()


def _dominates(a: dict[str, Any], b: dict[str, Any], higher_is_better: bool) -> bool:
    qa, qb = (a["accuracy"], b["accuracy"]) if higher_is_better else \
        (-a["accuracy"], -b["accuracy"])
    no_worse = a["latency_ms"] <= b["latency_ms"] and qa >= qb and \
        a["size_bytes"] <= b["size_bytes"]
    better = a["latency_ms"] < b["latency_ms"] or qa > qb or a["size_bytes"] < b["size_bytes"]
    return no_worse and better


def pareto(rows: Sequence[dict[str, Any]], higher_is_better: bool) -> list[int]:
    """Trial numbers of the complete rows no other complete row dominates (lower latency,
    better metric, smaller size: no worse in all three, better in one)."""
    done = [r for r in rows if r["state"] == "complete"]
    return sorted(r["trial"] for r in done
                  if not any(_dominates(o, r, higher_is_better) for o in done if o is not r))


def choose(rows: Sequence[dict[str, Any]], budget: Budget
           ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the fastest complete row within the budget or None, the closest row when none is:
    the smallest summed relative excess over the budgets, then the fastest). Rows timed
    again side by side (``retimed_ms``) are compared on those numbers, among themselves."""
    done = [r for r in rows if r["state"] == "complete"]
    within = [r for r in done if not budget.violations(r)]
    retimed = [r for r in within if r.get("retimed_ms") is not None]
    if retimed:
        return min(retimed, key=lambda r: (r["retimed_ms"], r["trial"])), None
    if within:
        return min(within, key=lambda r: (r["latency_ms"], r["trial"])), None
    if not done:
        return None, None
    closest = min(done, key=lambda r: (sum(budget.violations(r).values()), r["latency_ms"]))
    return None, closest


def target_report(target: str, rows: list[dict[str, Any]], budget: Budget, *,
                  higher_is_better: bool, metric: str, base_metric: float,
                  retimed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of one target: rows (each marked ``pareto``), the front (on the trial
    timings), the choice (on ``retimed`` where given: the runner's side-by-side timing of the
    points within the budget, ``{"latency_ms": {trial: ms}}`` or ``{"error": ...}``)."""
    front = set(pareto(rows, higher_is_better))
    again = (retimed or {}).get("latency_ms") or {}
    for r in rows:
        r["pareto"] = r["trial"] in front
        r["retimed_ms"] = again.get(r["trial"])
    chosen, closest = choose(rows, budget)
    rep: dict[str, Any] = {
        "target": target, "metric": metric, "higher_is_better": higher_is_better,
        "base_metric": base_metric, "trials": rows,
        "complete": sum(r["state"] == "complete" for r in rows),
        "failed": sum(r["state"] == "fail" for r in rows),
        "pareto": sorted(front), "chosen": None if chosen is None else chosen["trial"],
        "closest": None, "within_budget": chosen is not None, "message": None,
        "retimed": None if retimed is None else
        {"trials": sorted(again), "error": retimed.get("error")}}
    if chosen is None:
        if closest is None:
            rep["message"] = f"{target}: no trial completed"
        else:
            over = budget.violations(closest)
            rep["closest"] = closest["trial"]
            rep["message"] = (
                f"{target}: no point meets the budget ({_budget_text(budget)}); the closest "
                f"is trial {closest['trial']} ({_row_text(closest, metric)}; over by "
                + ", ".join(f"{k} {v:.1%}" for k, v in over.items()) + ")")
    return rep


def _budget_text(b: Budget) -> str:
    parts = [f"drop <= {b.max_drop:g}"]
    if b.max_size_bytes is not None:
        parts.append(f"size <= {b.max_size_bytes} B")
    if b.max_latency_ms is not None:
        parts.append(f"latency <= {b.max_latency_ms:g} ms")
    return ", ".join(parts)


def _row_text(r: dict[str, Any], metric: str) -> str:
    return (f"{r['latency_ms']:.4g} ms, {metric} {r['accuracy']:.4g} (drop {r['drop']:+.3g}), "
            f"{r['size_bytes']} B")


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(point.items()))


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one section per target, its complete trials by latency."""
    lines = [f"# Search: {report['model']}", "",
             f"Budget: {_budget_text(Budget(**report['budget']))}. Base {report['metric']}: "
             f"{report['base_metric']:.4g}.", ""]
    for t in report["targets"].values():
        lines += [f"## {t['target']}", "",
                  f"{t['complete']} complete, {t['failed']} failed; Pareto front: trials "
                  f"{', '.join(map(str, t['pareto'])) or '-'}.", ""]
        again = t.get("retimed") or {}
        if t["chosen"] is not None:
            how = ("fastest within the budget, timed again side by side with the other "
                   f"points within it: trials {', '.join(map(str, again['trials']))}"
                   if again.get("trials") else "fastest within the budget")
            lines += [f"Chosen: trial {t['chosen']} ({how}); bundle "
                      f"`{t.get('bundle') or '-'}`.", ""]
        if again.get("error"):
            lines += [f"Timing the points again failed ({again['error']}); the choice uses "
                      "the trial timings.", ""]
        if t["message"]:
            lines += [t["message"], ""]
        lines += ["| trial | latency ms | again, side by side | " + t["metric"] + " | drop | "
                  "size B | pareto | point | built on | timed on |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        done = sorted((r for r in t["trials"] if r["state"] == "complete"),
                      key=lambda r: r["latency_ms"])
        for r in done:
            mark = "chosen" if r["trial"] == t["chosen"] else ("yes" if r["pareto"] else "")
            lines.append(
                f"| {r['trial']} | {r['latency_ms']:.4g} | "
                f"{'-' if r.get('retimed_ms') is None else format(r['retimed_ms'], '.4g')} | "
                f"{r['accuracy']:.4g} | "
                f"{r['drop']:+.3g} | {r['size_bytes']} | {mark} | {_point_text(r['point'])} | "
                f"{(r['build_node'] or {}).get('node_ip') or (r['build_node'] or {}).get('host')}"
                f" | {(r['time_node'] or {}).get('node_ip') or (r['time_node'] or {}).get('host')}"
                " |")
        lines.append("")
    return "\n".join(lines)


def plot(t: dict[str, Any], path: Path) -> bool:
    """Latency vs metric of one target's complete trials (marker size: artifact size), the
    Pareto front and the choice highlighted. False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[edgekit search] matplotlib not installed: no Pareto PNG "
              '(pip install "edgekit[bench]")', file=sys.stderr)
        return False
    done = [r for r in t["trials"] if r["state"] == "complete"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if done:
        biggest = max(r["size_bytes"] for r in done) or 1
        for group, color, label in ((False, "#9aa5b1", "trial"), (True, "#d1495b", "Pareto")):
            pts = [r for r in done if r["pareto"] == group]
            if pts:
                ax.scatter([r["latency_ms"] for r in pts], [r["accuracy"] for r in pts],
                           s=[20 + 200 * r["size_bytes"] / biggest for r in pts], c=color,
                           label=label, alpha=0.8)
        for r in done:
            if r["trial"] == t["chosen"]:
                ax.scatter([r["latency_ms"]], [r["accuracy"]], s=260, facecolors="none",
                           edgecolors="black", linewidths=1.5, label="chosen")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel(t["metric"])
    ax.set_title(f"{t['target']}: {len(done)} trials (marker area ~ size)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_reports(report: dict[str, Any], out_dir: Path, *, png: bool = True) -> list[str]:
    """``search.json``, ``search.md`` and (with matplotlib) ``pareto-<target>.png``."""
    out_dir = Path(out_dir)
    files = []
    _atomic_text(out_dir / "search.json", json.dumps(report, indent=2, default=str) + "\n")
    files.append("search.json")
    _atomic_text(out_dir / "search.md", markdown(report))
    files.append("search.md")
    if png:
        for name, t in report["targets"].items():
            if plot(t, out_dir / f"pareto-{name}.png"):
                files.append(f"pareto-{name}.png")
    return files
