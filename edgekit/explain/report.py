"""The explanation of every target of one model: JSON, Markdown, a terminal table and the
side-by-side view (the same layer across runtimes, so a runtime-specific divergence stands
out)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnknownNameError
from .layers import CAP_DB, TargetResult

__all__ = ["ExplainReport"]


def _db(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return f"{x:.1f}"


def _measured(m: dict[str, Any] | None) -> list[str]:
    """Lines for a suggestion's measured gain (:mod:`edgekit.explain.measure`)."""
    if not m:
        return []
    if "error" in m:
        return [f"measuring the suggestion failed: {m['error']}"]
    out = [f"measured (rebuilt, calibrated on {m['calibration']}; shipped artifact "
           f"{_db(m.get('shipped_sqnr_db'))} dB):"]
    for v in m["variants"]:
        keep = ", ".join(v["keep_float"]) or "as recorded"
        gain = v.get("gain_db")
        out.append(f"  keep_float [{keep}]: {_db(v['sqnr_db'])} dB end to end"
                   + (f" ({gain:+.1f} dB)" if isinstance(gain, float) and v["keep_float"]
                      else ""))
    return out


@dataclass
class ExplainReport:
    """Returned by :func:`edgekit.explain`; ``targets`` in the order asked for."""

    model: str
    inputs: str
    samples: int
    layers: list[dict[str, Any]]
    targets: list[TargetResult] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    def target(self, name: str) -> TargetResult:
        for t in self.targets:
            if t.target == name:
                return t
        raise UnknownNameError("explained target", name, [t.target for t in self.targets])

    def culprit_layers(self, target: str | None = None) -> list[str]:
        """PyTorch module names ranked by the SQNR the runtime's own tensors lose there
        (the first target when ``target`` is None)."""
        t = self.target(target) if target else self.targets[0]
        return t.culprit_names()

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "inputs": self.inputs, "samples": self.samples,
                "thresholds": {**self.thresholds, "cap_db": CAP_DB},
                "layers": self.layers, "targets": {t.target: t.to_json() for t in self.targets}}

    def _ok(self) -> list[TargetResult]:
        return [t for t in self.targets if t.status == "ok"]

    def side_by_side(self) -> list[list[str]]:
        """Rows: depth, module, kind, then per target ``effective SQNR (precision)``; a ``*``
        marks each target's first jump, ``~`` a fused layer, ``-`` an unmapped one."""
        ok = self._ok()
        head = ["#", "module", "kind", *(t.target for t in ok)]
        rows = [head]
        for i, layer in enumerate(self.layers):
            cells = [str(i), layer["module"], layer["kind"]]
            for t in ok:
                r = t.rows[i]
                if not r.mapped:
                    cells.append("-")
                    continue
                mark = "*" if t.jump is not None and t.jump.module == r.module else ""
                mark += "~" if r.how.startswith("fused") else ""
                cells.append(f"{_db(r.effective_sqnr_db)}{mark} {r.precision or ''}".strip())
            rows.append(cells)
        return rows

    def table(self) -> str:
        """The terminal view: the side-by-side table (effective SQNR in dB) and one summary
        line per target."""
        rows = self.side_by_side()
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [f"edgekit explain: {self.model} ({self.samples} samples from {self.inputs}); "
                 "effective SQNR in dB vs PyTorch, * first jump, ~ fused, - unmapped"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for t in self.targets:
            if t.status != "ok":
                lines.append(f"{t.target}: {t.status}: {t.reason}")
                continue
            cov = t.coverage
            jump = t.jump.module if t.jump else "none"
            lines.append(f"{t.target}: coverage {cov['mapped']}/{cov['total']}; first jump: "
                         f"{jump}; culprits: {', '.join(t.culprit_names()[:3]) or 'none'}")
            if t.jump is not None and t.suggestion:
                lines.append(f"  {t.suggestion['symptom']}")
                lines.append(f"  suggested: {t.suggestion['action']}")
            lines += [f"  {m}" for m in _measured(t.measured)]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = self.side_by_side()
        out = [f"# edgekit explain: {self.model}", "",
               f"{self.samples} reference samples from {self.inputs}. Cells: effective SQNR "
               "(dB, the smaller of the tensor's and the median channel's) of the runtime's "
               "own tensor against the PyTorch module's output, then the precision the runtime "
               "ran it in. `*` first jump, `~` fused into the next layer, `-` unmapped. Per "
               "target, *local SQNR*: the layer alone fed with PyTorch's own inputs (n/a where "
               "the runtime cannot run one layer alone).", "",
               "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
        for t in self.targets:
            out += ["", f"## {t.target} ({t.backend}, {t.precision})", ""]
            if t.status != "ok":
                out.append(f"{t.status}: {t.reason}")
                continue
            cov = t.coverage
            out.append(f"- coverage: {cov['mapped']}/{cov['total']} leaf modules mapped"
                       + (f"; unmapped: {', '.join(cov['unmapped'])}" if cov["unmapped"] else "")
                       + (f"; fused: {', '.join(cov['fused'])}" if cov["fused"] else ""))
            if t.output:
                out.append(f"- output: SQNR {_db(t.output.get('sqnr_db'))} dB, cosine "
                           f"{t.output.get('cosine_min')}")
            out.append(f"- first jump: {t.jump.module if t.jump else 'none'}")
            out.append(f"- culprits: {', '.join(t.culprit_names()[:5]) or 'none'}")
            if t.suggestion and t.jump is not None:
                out.append(f"- symptom: {t.suggestion['symptom']}")
                out.append(f"- suggested: {t.suggestion['action']}")
            out += [f"- {m}" for m in _measured(t.measured)]
            out += ["", "| module | tensor | how | precision | cosine | SQNR dB | channel SQNR "
                    "dB | local SQNR dB | max abs | rel error |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
            for r in t.rows:
                if not r.mapped:
                    out.append(f"| {r.module} | - | unmapped | | | | | | | |")
                    continue
                local = "n/a" if r.local_sqnr_db is None else _db(r.local_sqnr_db)
                out.append(f"| {r.module} | `{str(r.tensor)[:60]}` | {r.how} | {r.precision} | "
                           f"{r.cosine:.6f} | {_db(r.sqnr_db)} | {_db(r.channel_sqnr_db)} | "
                           f"{local} | {r.max_abs:.3g} | {r.rel_error:.3g} |")
        return "\n".join(out) + "\n"

    def write(self, *, json_path: str | Path | None = None, markdown: str | Path | None = None,
              plot: str | Path | None = None) -> list[Path]:
        """Write the chosen files (atomically); returns their paths."""
        import json

        from ..fsio import atomic_write_text
        from .plot import plot_sqnr

        written: list[Path] = []
        for target in (json_path, markdown, plot):
            if target:
                folder = Path(target).parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    from ..errors import OutputPathError

                    raise OutputPathError(f"cannot create the folder {folder} for {target}: "
                                          f"{exc.strerror or exc}") from exc
        if json_path:
            atomic_write_text(Path(json_path), json.dumps(self.to_json(), indent=2) + "\n")
            written.append(Path(json_path))
        if markdown:
            atomic_write_text(Path(markdown), self.to_markdown())
            written.append(Path(markdown))
        if plot:
            plot_sqnr(self, plot)
            written.append(Path(plot))
        return written
