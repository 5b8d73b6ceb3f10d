"""The ``edgekit`` command. Progress goes to stderr, data to stdout; ``--json`` for machines.

Exit codes: 0 success, 1 a failed job, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import EdgekitError


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        rows.append({"name": name, "family": spec.family, "inputs": list(spec.input_names),
                     "outputs": list(spec.output_names), "description": spec.description})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<14} {r['family']:<14} {r['description']}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from .profiles import list_profiles, load_profile

    profiles = [load_profile(n) for n in list_profiles()]
    if args.json:
        print(json.dumps([p.to_json() for p in profiles], indent=2))
    else:
        for p in profiles:
            print(f"{p.name:<22} {p.backend:<12} {p.arch:<8} {p.precision:<5} {p.description}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .api import build_zoo_model, load_factory, parse_input_spec
    from .models import list_models
    from .pipeline import compress

    progress = not args.quiet
    if ":" not in args.model:
        if args.model not in list_models():
            from .errors import UnknownNameError

            raise UnknownNameError("model", args.model, list_models())
        if args.input_shape:
            from .errors import UsageError

            raise UsageError("--input-shape is only for user models (module:factory)")
        bundle, _ = build_zoo_model(
            args.model, targets=args.target, out_dir=args.out, epochs=args.epochs,
            train=not args.no_train, seed=args.seed, progress=progress,
        )
    else:
        if not args.input_shape:
            from .errors import UsageError

            raise UsageError(
                f"{args.model} needs --input-shape for each model input",
                hint="e.g. --input-shape 1x3x32x32 (add int64: for token inputs)",
            )
        model = load_factory(args.model)
        inputs = tuple(parse_input_spec(s) for s in args.input_shape)
        bundle = compress(
            model, inputs, targets=args.target, out_dir=args.out,
            input_names=args.input_name or None, output_names=args.output_name or None,
            recipe={"model": args.model, "input_shapes": args.input_shape,
                    "targets": list(args.target)},
            progress=progress,
        )
    summary = _bundle_summary(bundle)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle: {bundle.root}")
        for t in summary["targets"]:
            print(f"  {t['target']:<22} {t['file']:<40} {t['bytes']:>10,} bytes  "
                  f"max abs diff {t['max_abs_diff']:.2e}  verified")
    return 0


def _bundle_summary(bundle: Any) -> dict[str, Any]:
    targets = []
    for name in bundle.targets:
        entry = bundle.manifest["targets"][name]
        targets.append({
            "target": name,
            "file": entry["files"][0]["path"],
            "bytes": sum(f["bytes"] for f in entry["files"]),
            "max_abs_diff": max(o["max_abs"] for o in entry["verification"]["outputs"]),
        })
    return {"bundle": str(bundle.root), "targets": targets}


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(out_dir=args.out, model=args.model, runs=args.runs,
                      threads=args.threads, progress=not args.quiet)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekit",
        description="Take PyTorch models to edge devices: export, verify, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the model zoo",
                       description="List the zoo models and the real task each one is trained on.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("targets", help="list the bundled target profiles",
                       description="List the bundled deployment target profiles.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser(
        "build", help="export and verify a model into a bundle",
        description="Build a bundle: a zoo model (trained on its real task first) or a user "
        "model given as module:factory, exported for each --target and verified.",
    )
    p.add_argument("model", help="zoo model name (see `edgekit models`) or module:factory")
    p.add_argument("--target", "-t", action="append", required=True,
                   help="target profile name or .toml path; repeat for several")
    p.add_argument("--out", "-o", required=True, help="bundle folder to write (replaced atomically)")
    p.add_argument("--epochs", type=int, help="training epochs (zoo models; default: the model's)")
    p.add_argument("--no-train", action="store_true", help="export the randomly initialised model")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--input-shape", action="append",
                   help="user models: one per input, e.g. 1x3x32x32 or int64:1x64")
    p.add_argument("--input-name", action="append", help="user models: input names, in order")
    p.add_argument("--output-name", action="append", help="user models: output names, in order")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "demo", help="the main job on the bundled default",
        description="Train the seed CNN on the bundled digits, export it for ONNX Runtime, "
        "OpenVINO and TFLite, verify, benchmark on this CPU, print a table, write a report.",
    )
    p.add_argument("--out", "-o", default="build/demo", help="output folder (default build/demo)")
    p.add_argument("--model", default="cnn", help="zoo model (default cnn)")
    p.add_argument("--runs", type=int, default=300, help="timed calls per runtime (default 300)")
    p.add_argument("--threads", type=int, default=None, help="threads per runtime (default: profile's)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgekit: interrupted; nothing was half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
