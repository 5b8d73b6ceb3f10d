"""``edgekit search`` and ``edgekit sweep``: argument parsing and printing only; the work is
in :mod:`.runner` and :mod:`.sweep`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["add_search_parsers"]


def _devices(items: list[str] | None) -> dict[str, str]:
    from ..errors import UsageError

    out: dict[str, str] = {}
    for item in items or []:
        target, sep, remote = item.partition("=")
        if not sep or not target or not remote:
            raise UsageError(f"bad --device {item!r}",
                             hint="write TARGET=[USER@]HOST[:PORT], e.g. "
                             "arm64-tflite-int8=pi@rpi4.local")
        out[target] = remote
    return out


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (file descriptor 1: Ray's notices about nodes, a
    runtime's prints) to stderr while the work runs, so stdout carries only the result."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _cmd_search(args: argparse.Namespace) -> int:
    from .runner import BudgetNotMetError, search
    from .space import parse_space_arg

    try:
        with _stdout_to_stderr():
            report = search(
                args.model, targets=args.target or [], out_dir=args.out, trials=args.trials,
                max_drop=args.max_drop, max_size_bytes=args.max_size,
                max_latency_ms=args.max_latency, space=parse_space_arg(args.space or []),
                address=args.address, devices=_devices(args.device), epochs=args.epochs,
                fine_tune_epochs=args.fine_tune_epochs, seed=args.seed,
                input_shapes=args.input_shape, data=args.data, val_data=args.val_data,
                input_keys=args.input_key, target_key=args.target_key, runs=args.runs,
                progress=not args.quiet)
        status = 0
    except BudgetNotMetError as exc:
        report, status = exc.report, exc.exit_code
        print(f"edgekit: error: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for name, t in report["targets"].items():
            if t["chosen"] is not None:
                row = next(r for r in t["trials"] if r["trial"] == t["chosen"])
                print(f"{name}: trial {t['chosen']}: {row['latency_ms']:.4g} ms, "
                      f"{report['metric']} {row['accuracy']:.4g} (drop {row['drop']:+.3g}), "
                      f"{row['size_bytes']} B -> {t['bundle']}")
            else:
                print(t["message"])
        print(f"report: {args.out}/search.md")
    return status


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .space import parse_space_arg
    from .sweep import sweep

    grid: dict[str, Any] = {}
    for key, values in parse_space_arg(args.grid or []).items():
        grid[key] = values if isinstance(values, list) else [values]
    with _stdout_to_stderr():
        report = sweep(args.recipe, grid=grid, out_dir=args.out, address=args.address,
                       devices=_devices(args.device), runs=args.runs, progress=not args.quiet)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"{len(report['combinations'])} combinations; report: {args.out}/sweep.md")
    failed = [r for r in report["combinations"] if r.get("error")]
    return 1 if failed else 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", required=True, help="output folder (reports, study, bundles)")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="an existing Ray cluster (default: an embedded Ray on this machine)")
    p.add_argument("--device", action="append", metavar="TARGET=[USER@]HOST[:PORT]",
                   help="time TARGET on a remote device over SSH (Ray resource board:HOST); "
                   "repeatable")
    p.add_argument("--runs", type=int, default=100, help="timed calls per point (default 100)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def add_search_parsers(sub: Any) -> None:
    """Add ``search`` and ``sweep`` to the ``edgekit`` subcommands."""
    from ..prune_cli import add_user_data_args

    p = sub.add_parser(
        "search", help="search pruning/quantization/threads for the fastest point per target",
        description="Optuna proposes points (pruning ratio and importance, quantization "
        "settings, threads); Ray builds them on any node and times them where the target's "
        "device is. Reports the Pareto front (latency x metric x size) per target and copies "
        "the fastest point within the budget, verified, to OUT/best/TARGET. The study lives in "
        "OUT/study.db: run the same command again to resume. Exit 1 when a target has no point "
        "within the budget (the front and the closest point are still reported).")
    p.add_argument("model", help="zoo model name, module:factory of a trained model (with "
                   "--input-shape and --data) or a recipe .toml of either")
    p.add_argument("--target", "-t", action="append", required=True,
                   help="target profile name or .toml path; repeat for several")
    p.add_argument("--trials", type=int, default=20,
                   help="complete trials per target (default 20)")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="largest metric drop vs the unpruned model, in points (default 1)")
    p.add_argument("--max-size", type=int, metavar="BYTES", help="size budget of the artifact")
    p.add_argument("--max-latency", type=float, metavar="MS", help="latency budget (median)")
    p.add_argument("--space", action="append", metavar="KEY=VALUES",
                   help="set a dimension: prune_ratio=0..0.5, importance=l1,l2, threads=1,2, "
                   "quant.method=minmax,entropy (repeatable; others keep their defaults)")
    p.add_argument("--epochs", type=int, help="training epochs of the base model")
    p.add_argument("--fine-tune-epochs", type=int, default=1,
                   help="fine-tuning epochs after pruning (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_user_data_args(p, data="the task's data (pruned points are fine-tuned on it)",
                       val_data="the data every point is scored on")
    _common(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "sweep", help="build and time a plain grid over a recipe's fields",
        description="Build every combination of --grid values over the recipe's fields "
        "(dotted for tables: quantization.method, prune.ratio) and time each target, on Ray "
        "like a search. Results go to OUT/sweep.jsonl as they finish (a rerun skips those) and "
        "OUT/sweep.json / sweep.md. Exit 1 when a combination failed.")
    p.add_argument("recipe", help="recipe .toml")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                   help="a recipe field and its values, e.g. quantization.method=minmax,entropy;"
                   " repeatable")
    _common(p)
    p.set_defaults(func=_cmd_sweep)
