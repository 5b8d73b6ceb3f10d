"""``edgekit explain BUNDLE``: the per-layer diff of every target against PyTorch."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_explain_parser"]


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..errors import UnknownNameError, UsageError
    from .api import explain

    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be at least 1, not {args.samples}")
    model = None
    if args.model:
        from ..api import load_factory

        if ":" in args.model:
            model = load_factory(args.model)
        else:
            from ..models import get_spec, list_models

            if args.model not in list_models():
                raise UnknownNameError("model", args.model, list_models())
            import torch

            torch.manual_seed(args.seed)
            model = get_spec(args.model).factory().eval()
    report = explain(model, bundle=args.bundle, targets=args.target or None, data=args.data,
                     threads=args.threads, min_sqnr_db=args.min_sqnr_db, jump_db=args.jump_db,
                     progress=not args.quiet, samples=args.samples,
                     measure_suggestion=args.measure_suggestion)
    report.write(json_path=args.json, markdown=args.markdown, plot=args.plot)
    print(report.table())
    return 0


def add_explain_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explain", help="find the layer where an artifact departs from PyTorch",
        description="Run the bundle's reference inputs (or --data) through the PyTorch model "
        "with a hook on every leaf module and through each target's artifact with its "
        "intermediate tensors exposed (ONNX Runtime extra outputs, OpenVINO add_outputs, "
        "LiteRT preserved tensors); map the tensors to module names through the export "
        "metadata and print cosine/SQNR per layer side by side, the first layer where the "
        "error jumps, and a suggested action. The model is rebuilt from the bundle's recipe "
        "when it can be (an untrained zoo model or a module:factory), else give --model.",
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--target", "-t", action="append",
                   help="only this target of the bundle; repeatable (default: all)")
    p.add_argument("--data", metavar="NPZ",
                   help="inputs instead of the reference pairs: a .npz with one key per model "
                   "input, samples along dim 0")
    p.add_argument("--samples", type=int, metavar="N",
                   help="use at most N samples (default: every reference pair, 16 of --data)")
    p.add_argument("--model", metavar="MODEL",
                   help="the PyTorch model the bundle was built from: module:factory (no "
                   "arguments, returns it with its weights) or a zoo name (initialised with "
                   "--seed); it must reproduce the bundle's reference outputs")
    p.add_argument("--seed", type=int, default=0,
                   help="--model ZOO_NAME: the seed its weights were initialised with (default 0)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    p.add_argument("--min-sqnr-db", type=float, default=20.0,
                   help="first jump: effective SQNR below this (default 20 dB) ...")
    p.add_argument("--jump-db", type=float, default=6.0,
                   help="... and this far below the previous mapped layer's (default 6 dB)")
    p.add_argument("--measure-suggestion", action="store_true",
                   help="rebuild each int8 target with its first culprit (then with the layer "
                   "reading it too) in float, calibrated on the explain inputs, and report the "
                   "end-to-end SQNR gained")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the report as Markdown")
    p.add_argument("--plot", metavar="PNG", help="write SQNR along depth, one line a runtime")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_explain)
