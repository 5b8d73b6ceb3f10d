"""The ``edgekit bench`` subcommand (registered by :mod:`edgekit.cli`).

Progress goes to stderr, the table (or ``--json``) to stdout. Exit codes: 0 complete, 1 a
measurement failed or is partial, 2 bad usage (unknown device, data that does not fit, a
runtime missing on the device), 130 interrupted (the results so far are kept and marked).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import UsageError


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="benchmark bundles or artifacts: latency, accuracy, fidelity, memory",
        description="Benchmark a bundle (all its targets, or --target) or single .onnx/.xml/"
        ".tflite files, interleaved so machine noise hits them alike: load time, first "
        "inference, steady-state latency statistics, throughput, peak memory, file size, "
        "accuracy on labelled data and fidelity against the fp32 PyTorch reference. Writes "
        "bench.json, bench.md and PNG plots with --out.",
    )
    p.add_argument("sources", nargs="+", metavar="BUNDLE_OR_FILE",
                   help="bundle folder(s) and/or artifact files (.onnx, .xml, .tflite)")
    p.add_argument("--target", "-t", action="append", help="bundle target(s) to include")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt", "gpu"],
                   help="where to run (default cpu); GPU paths without a GPU fail with exit 2")
    p.add_argument("--threads", help="threads per runtime, 1-256 (default: the profile's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--runs", default=None,
                   help="timed rounds, 1 to 1000000 (default 200)")
    g.add_argument("--duration", help="time for this many seconds instead (at most 3600; "
                   "timing also stops at 1000000 rounds)")
    p.add_argument("--warmup", default="20", help="untimed calls first, 0 to 100000 "
                   "(default 20)")
    p.add_argument("--data", help="labelled .npz for accuracy (default: the bundle's zoo task; "
                   "'none' to skip)")
    p.add_argument("--input-key", action="append",
                   help="--data: key of each model input, in order (default x)")
    p.add_argument("--target-key", default="y", help="--data: key of the labels (default y)")
    p.add_argument("--metric", metavar="NAME",
                   help="metric for --data (default: the zoo task's, else top1): top1, topK "
                   "(e.g. top5), macro_recall, macro_f1 (classification, in %%), recall@K "
                   "(retrieval: scores vs relevant item indices or a 0/1 relevance matrix, "
                   "in %%), mse, auc; classification results also carry top-1, macro recall "
                   "and macro F1")
    p.add_argument("--limit", help="score at most this many samples (>= 1)")
    p.add_argument("--baseline", help="result name the ratios are taken against "
                   "(default: the first fp32 one)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--profile", action="store_true",
                   help="also profile each artifact per op with its runtime's own profiler "
                   "(ONNX Runtime, OpenVINO; LiteRT: op counts and precisions only) and write "
                   "profile.json and profile.md beside the report (with --out)")
    p.add_argument("--input-shape", action="append", metavar="1x3x224x224",
                   help="shape to run and time artifacts with dynamic dimensions at, one per "
                   "model input in order (default: the data's, else batch 1)")
    p.add_argument("--out", "-o", help="folder for bench.json, bench.md and the PNG plots")
    p.add_argument("--format", action="append", choices=["json", "md", "png"],
                   help="report files to write with --out (default all)")
    p.add_argument("--remote", metavar="[USER@]HOST[:PORT]",
                   help="run the artifacts on this device over SSH instead")
    p.add_argument("--remote-key", help="SSH private key for --remote")
    p.add_argument("--remote-python", default="python3", help="Python on the device")
    p.add_argument("--remote-timeout", default="600",
                   help="seconds for each remote command (default 600)")
    p.add_argument("--connect-timeout", default="10",
                   help="SSH connect timeout in seconds (default 10)")
    p.add_argument("--emulated", action="store_true",
                   help="label the remote device's timings as emulated")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    from .arguments import check_bench_args, seconds_arg
    from .harness import bench
    from .local_run import parse_shape
    from .report import summary_text

    # every number checked (NaN, inf, zero, negative, huge) before anything is loaded
    runs, duration, warmup, threads, limit = check_bench_args(
        runs=args.runs if args.runs is not None or args.duration is not None else 200,
        duration=args.duration, warmup=args.warmup, threads=args.threads, limit=args.limit,
        flag="--")
    remote_timeout = seconds_arg("remote-timeout", args.remote_timeout, 86400.0, "--")
    connect_timeout = seconds_arg("connect-timeout", args.connect_timeout, 3600.0, "--")
    remote = None
    if args.remote:
        from .remote import RemoteDevice

        remote = RemoteDevice.parse(args.remote, key=args.remote_key, python=args.remote_python,
                                    command_timeout=remote_timeout,
                                    connect_timeout=connect_timeout, emulated=args.emulated)
    if args.metric is not None:
        from ..measure.scoring import plain_metric

        plain_metric(args.metric)  # an unknown name: exit 2 before anything is loaded
    if args.format and not args.out:
        raise UsageError("--format needs --out")
    report = bench(
        args.sources, targets=args.target, device=args.device, threads=threads,
        runs=runs, duration=duration, warmup=warmup, data=args.data,
        input_keys=tuple(args.input_key or ("x",)), target_key=args.target_key,
        metric=args.metric, limit=limit, baseline=args.baseline,
        memory=not args.no_memory, remote=remote, out_dir=args.out,
        formats=tuple(args.format or ("json", "md", "png")), progress=not args.quiet,
        input_shapes=[parse_shape(s) for s in args.input_shape] if args.input_shape else None,
        profile=args.profile,
    )
    if args.json:
        from .report import _jsonable

        print(json.dumps(_jsonable(report), indent=2))
    else:
        print(summary_text(report))
    if report["interrupted"]:
        from .._signals import exit_code_for

        by = report.get("interrupted_by")
        print(f"edgekit: interrupted ({by or 'Ctrl-C'}); the results measured so far are kept "
              "and marked interrupted", file=sys.stderr)
        return exit_code_for(by if by != "SIGINT" else None)
    if report["errors"]:
        for e in report["errors"]:
            print(f"edgekit: error: {e['error']}", file=sys.stderr)
        return max(int(e.get("exit_code", 1)) for e in report["errors"])
    return 0 if report["status"] == "complete" else 1
