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

VERBOSE_HELP = ("show third-party output (converter progress, runtime logs and warnings); "
                "by default it is captured and shown only when a step fails "
                "(also: EDGEKIT_VERBOSE=1)")
FORCE_HELP = ("replace --out even if it is not an edgekit bundle or holds files its manifest "
              "does not list (never the root, home or current folder, or a mount point)")


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import get_spec, list_models

    rows = []
    for name in list_models(realistic=True):
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


def _check_out(out: str, force: bool) -> None:
    """Refuse a dangerous or foreign --out before any work (see bundle.check_out_dir)."""
    from .bundle import check_out_dir

    check_out_dir(out, overwrite=force)


def _cmd_build(args: argparse.Namespace) -> int:
    from .api import build_zoo_model, load_factory, parse_input_spec
    from .models import list_models
    from .pipeline import compress

    progress = not args.quiet
    _check_out(args.out, args.force)
    if args.recipe:
        return _cmd_build_recipe(args)
    if not args.model or not args.target:
        from .errors import UsageError

        raise UsageError(
            "build needs a MODEL and at least one --target (or --recipe FILE)",
            hint="e.g. `edgekit build cnn -t x86-onnxruntime-fp32 -o build/cnn`",
        )
    if args.depfile or args.trust_checkpoint:
        from .errors import UsageError

        raise UsageError(f"{'--depfile' if args.depfile else '--trust-checkpoint'} needs --recipe")
    if ":" not in args.model:
        if args.model not in list_models(realistic=True):
            from .errors import UnknownNameError

            raise UnknownNameError("model", args.model, list_models(realistic=True))
        if args.input_shape:
            from .errors import UsageError

            raise UsageError("--input-shape is only for user models (module:factory)")
        bundle, _ = build_zoo_model(
            args.model, targets=args.target, out_dir=args.out, epochs=args.epochs,
            train=not args.no_train, seed=args.seed, progress=progress, overwrite=args.force,
        )
    else:
        if not args.input_shape:
            from .errors import UsageError

            raise UsageError(
                f"{args.model} needs --input-shape for each model input",
                hint="e.g. --input-shape 1x3x32x32 (add int64: for token inputs)",
            )
        inputs = tuple(parse_input_spec(s) for s in args.input_shape)
        model = load_factory(args.model)
        bundle = compress(
            model, inputs, targets=args.target, out_dir=args.out,
            input_names=args.input_name or None, output_names=args.output_name or None,
            recipe={"model": args.model, "input_shapes": args.input_shape,
                    "targets": list(args.target)},
            progress=progress,
            calibration=getattr(args, "calibration", None),
            verify_data=getattr(args, "verify_data", None),
            quantization=({"method": args.quant_method}
                          if getattr(args, "quant_method", None) else None),
            overwrite=args.force,
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


def _cmd_build_recipe(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .recipe import build_recipe, load_recipe

    if args.model:
        raise UsageError(f"give either a MODEL ({args.model}) or --recipe, not both")
    ignored = [flag for flag, value in (
        ("--epochs", args.epochs is not None), ("--no-train", args.no_train),
        ("--seed", args.seed != 0), ("--input-shape", bool(args.input_shape)),
        ("--input-name", bool(args.input_name)), ("--output-name", bool(args.output_name)),
    ) if value]
    if ignored:
        raise UsageError(f"{', '.join(ignored)} cannot be combined with --recipe",
                         hint="put the setting in the recipe file")
    recipe = load_recipe(args.recipe)
    if args.trust_checkpoint:
        recipe.trust_weights = True
    bundle = build_recipe(recipe, args.out, targets=args.target or None,
                          cache=not args.no_cache, progress=not args.quiet,
                          overwrite=args.force)
    if args.depfile:
        _write_depfile(args.depfile, args.depfile_target or args.out, recipe.dependencies())
    if bundle.cache_hit:
        print(f"edgekit: cache hit, bundle {bundle.root} restored without rebuilding",
              file=sys.stderr)
    summary = {**_bundle_summary(bundle), "cache_hit": bundle.cache_hit}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle: {bundle.root}{' (from cache)' if bundle.cache_hit else ''}")
    return 0


def _write_depfile(path: str, target: str, deps: Sequence[Any]) -> None:
    """A Makefile-style depfile (for CMake's DEPFILE / Ninja's depfile), absolute paths."""
    from pathlib import Path

    def esc(p: Any) -> str:
        return str(Path(p).absolute()).replace("\\", "/").replace(" ", "\\ ").replace("$", "$$")

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f"{esc(target)}: {' '.join(esc(d) for d in deps)}\n", encoding="utf-8")


def _cmd_embed(args: argparse.Namespace) -> int:
    from .embed import embed_artifact

    c_path, h_path = embed_artifact(args.artifact, args.out, identifier=args.name,
                                    max_bytes=args.max_bytes, target=args.target, file=args.file)
    if args.json:
        print(json.dumps({"c": str(c_path), "h": str(h_path)}, indent=2))
    else:
        print(c_path)
        print(h_path)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .bundle_check import verify_bundle

    report = verify_bundle(args.bundle, targets=args.target or None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"bundle: {report['bundle']}")
        print(f"  checksums: ok ({len(report['checksums']['files'])} files)")
        for name, t in report["targets"].items():
            if t["status"] == "skipped":
                print(f"  {name:<22} skipped: {t['reason']} ({t['install']})")
            elif "error" in t:
                print(f"  {name:<22} FAILED: {t['error']}")
            else:
                rt = " ".join(str(v) for v in (t.get("runtime") or {}).values() if v)
                print(f"  {name:<22} {t['status']}" + (f"  ({rt})" if rt else ""))
                for o in t["outputs"]:
                    mark = "ok" if o["passed"] else "FAILED " + "; ".join(o["failures"])
                    rel = o.get("max_rel")
                    rel_s = f"max rel {rel:.2e}  " if isinstance(rel, float) else ""
                    print(f"    {o['name']:<20} max abs diff {o['max_abs']:.2e}  {rel_s}"
                          f"cosine {o['cosine']:.6f}  {mark}")
    if not report["passed"]:
        print("edgekit: error: verification failed", file=sys.stderr)
        return 1
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from .archive import pack_bundle

    print(pack_bundle(args.bundle, args.out or f"{str(args.bundle).rstrip('/')}.tar.gz"))
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from .archive import unpack_bundle

    _check_out(args.out, args.force)
    bundle = unpack_bundle(args.archive, args.out, overwrite=args.force)
    print(f"bundle: {bundle.root} (checksums ok)")
    return 0


def _cmd_cmake_dir(args: argparse.Namespace) -> int:
    from pathlib import Path

    print(sys.executable if args.python else Path(__file__).resolve().parent / "cmake")
    return 0


def _bundle_summary(bundle: Any) -> dict[str, Any]:
    targets = []
    for name in bundle.targets:
        entry = bundle.target(name)
        targets.append({
            "target": name,
            "file": entry.files[0].path,
            "bytes": entry.size_bytes,
            "max_abs_diff": entry.max_abs_diff,
        })
    return {"bundle": str(bundle.root), "targets": targets}


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import run_demo

    _check_out(str(Path(args.out) / args.model), args.force)
    report = run_demo(out_dir=args.out, model=args.model, runs=args.runs,
                      threads=args.threads, progress=not args.quiet, overwrite=args.force)
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
    p.add_argument("model", nargs="?",
                   help="zoo model name (see `edgekit models`) or module:factory")
    p.add_argument("--recipe", metavar="FILE",
                   help="build from a TOML recipe instead (model, targets, epochs, seed, "
                   "weights, ...); --target then picks some of the recipe's targets")
    p.add_argument("--no-cache", action="store_true",
                   help="recipe builds: bypass the build cache ($EDGEKIT_CACHE_DIR or "
                   "~/.cache/edgekit)")
    p.add_argument("--depfile", metavar="FILE",
                   help="recipe builds: write a Makefile-style depfile of the files read")
    p.add_argument("--depfile-target", metavar="PATH", help="the depfile's target (default --out)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="recipe builds: unpickle the weights file fully even when safe "
                   "(weights_only) loading refuses it; this runs code from the file, so only "
                   "for files you trust")
    p.add_argument("--target", "-t", action="append",
                   help="target profile name or .toml path; repeat for several")
    p.add_argument("--out", "-o", required=True,
                   help="bundle folder to write (replaced atomically)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--epochs", type=int, help="training epochs (zoo models; default: the model's)")
    p.add_argument("--no-train", action="store_true", help="export the randomly initialised model")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--input-shape", action="append",
                   help="user models: one per input, e.g. 1x3x32x32 or int64:1x64")
    p.add_argument("--input-name", action="append", help="user models: input names, in order")
    p.add_argument("--output-name", action="append", help="user models: output names, in order")
    p.add_argument("--calibration", metavar="NPZ",
                   help="user models, int8 targets: calibration samples (.npz, one key per input)")
    p.add_argument("--verify-data", metavar="NPZ",
                   help="user models, int8 targets: held-out samples (.npz, one key per input) "
                   "the int8 build must match fp32 on (the profile's [gate])")
    p.add_argument("--quant-method", choices=["minmax", "percentile", "entropy"],
                   help="user models, int8 targets: calibration method (default minmax)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "embed", help="turn an artifact into a C array (.c + .h) for firmware",
        description="Write <name>.c and <name>.h: the artifact's bytes as an alignas(16) "
        "const array, its size and sha256, and (from a bundle) the model's input/output names, "
        "shapes, dtypes and quantization parameters. The output is byte-deterministic.",
    )
    p.add_argument("artifact", help="an artifact file, or a bundle folder (then see --target)")
    p.add_argument("--target", "-t", help="bundle: which target's artifact")
    p.add_argument("--file", help="bundle: which of the target's files (default: its only one)")
    p.add_argument("--out", "-o", default=".", help="output folder (default .)")
    p.add_argument("--name", help="C identifier (default: sanitised from the file or bundle name)")
    p.add_argument("--max-bytes", type=int,
                   help="fail if the artifact is larger than this (default 64 MiB)")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "verify", help="check a bundle's checksums and re-run its reference inputs",
        description="Check every file of a bundle against the manifest's sha256, then run the "
        "stored reference inputs through each target whose runtime is installed and compare "
        "every output with the stored PyTorch outputs (profile tolerance). Runtimes that are "
        "not installed are reported as skipped. Exit 1 when a check fails.",
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--target", "-t", action="append", help="only this target; repeatable")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "pack", help="pack a bundle folder into one .tar.gz",
        description="Check a bundle's checksums and write it as a deterministic .tar.gz.",
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--out", "-o", help="archive path (default BUNDLE.tar.gz)")
    p.set_defaults(func=_cmd_pack)

    p = sub.add_parser(
        "unpack", help="safely unpack a bundle archive and check its checksums",
        description="Unpack a .tar.gz written by `edgekit pack` into a bundle folder. Members "
        "that are links, devices, absolute paths or climb out with '..' are refused before "
        "anything is written; every file is checked against the manifest's sha256; the folder "
        "appears (atomically) only when all checks pass.",
    )
    p.add_argument("archive", help="a .tar.gz from `edgekit pack`")
    p.add_argument("--out", "-o", required=True,
                   help="bundle folder to write (replaced atomically)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=_cmd_unpack)

    p = sub.add_parser(
        "cmake-dir", help="print the folder of edgekit's CMake module",
        description="Print the folder holding Edgekit.cmake and edgekit-config.cmake, for "
        "CMAKE_MODULE_PATH (include(Edgekit)) or find_package(edgekit CONFIG PATHS ...).",
    )
    p.add_argument("--python", action="store_true",
                   help="print this Python interpreter instead (for -DEDGEKIT_EXECUTABLE=...)")
    p.set_defaults(func=_cmd_cmake_dir)

    p = sub.add_parser(
        "demo", help="the main job on the bundled default",
        description="Train the seed CNN on the bundled digits, export it for ONNX Runtime, "
        "OpenVINO and TFLite, verify, benchmark on this CPU, print a table, write a report.",
    )
    p.add_argument("--out", "-o", default="build/demo", help="output folder (default build/demo)")
    p.add_argument("--force", action="store_true", help="replace OUT/MODEL even if it is not an "
                   "edgekit bundle or holds files its manifest does not list")
    p.add_argument("--model", default="cnn", help="zoo model (default cnn)")
    p.add_argument("--runs", type=int, default=300, help="timed calls per runtime (default 300)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per runtime (default: profile's)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=_cmd_demo)

    from .bench.cli import add_bench_parser

    add_bench_parser(sub)

    from .prune_cli import add_prune_parser

    add_prune_parser(sub)

    from .explain.cli import add_explain_parser

    add_explain_parser(sub)

    from .search.cli import add_search_parsers

    add_search_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ._quiet import set_verbose
    from ._signals import exit_code_for, last_signal, terminate_as_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    set_verbose(True if getattr(args, "verbose", False) else None)
    try:
        with terminate_as_interrupt():  # SIGTERM/SIGHUP are handled like Ctrl-C
            return int(args.func(args))
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):  # e.g. a failed step's captured output
            print(note, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        sig = last_signal()
        print(f"edgekit: interrupted ({sig or 'Ctrl-C'}); nothing was half-written: the previous "
              "output is intact and partial work was removed", file=sys.stderr)
        return exit_code_for(sig)
    finally:
        set_verbose(None)


if __name__ == "__main__":
    sys.exit(main())
