"""``edgekit prune``: zoo model -> trained -> pruned -> fine-tuned (distilled) -> bundle."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

from .errors import UsageError
from .manifest import StageRecord, add_stage

__all__ = ["add_prune_parser", "run_prune"]


def add_prune_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prune", help="prune a zoo model, fine-tune it and build a bundle",
        description="Train a zoo model on its real task, prune it structurally (channels, "
        "hidden units, attention head dimensions) to a channel ratio, a MACs/parameter "
        "reduction or a measured latency, fine-tune it with distillation from the unpruned "
        "model, then export and verify it for each --target. The manifest records the pruning "
        "history (replay it with edgekit.prune.replay).",
    )
    p.add_argument("model", help="zoo model name (see `edgekit models`)")
    p.add_argument("--target", "-t", action="append", required=True,
                   help="target profile name or .toml path; repeat for several")
    p.add_argument("--out", "-o", required=True, help="bundle folder to write")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it is not an edgekit bundle or holds files its "
                   "manifest does not list")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--ratio", type=float, help="fraction of channels removed per layer")
    goal.add_argument("--macs-reduction", type=float,
                      help="fraction of MACs to remove (0.5 = 2x fewer)")
    goal.add_argument("--params-reduction", type=float, help="fraction of parameters to remove")
    goal.add_argument("--latency-ms", type=float,
                      help="prune until the median latency on --latency-target is at most this")
    p.add_argument("--latency-target", default=None,
                   help="profile timed for --latency-ms (default: the first --target)")
    p.add_argument("--importance", default="l2", choices=["l1", "l2", "bn_scale", "taylor"])
    p.add_argument("--global", dest="global_pruning", action="store_true",
                   help="rank channels across layers instead of the same ratio per layer")
    p.add_argument("--round-to", type=int, help="keep widths multiples of this (e.g. 8)")
    p.add_argument("--keep", action="append", default=[],
                   help="a layer name that keeps its width (besides the automatic ones)")
    p.add_argument("--steps", type=int, default=1, help="prune/fine-tune steps (default 1)")
    p.add_argument("--epochs", type=int, help="training epochs before pruning (default: model's)")
    p.add_argument("--fine-tune-epochs", type=int,
                   help="fine-tuning epochs after the last step (default: the model's; 0: none)")
    p.add_argument("--no-train", action="store_true", help="prune the initialised model")
    p.add_argument("--no-distill", action="store_true", help="plain fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    import torch

    from .bundle import check_out_dir
    from .models import build, get_spec
    from .pipeline import compress
    from .profiles import resolve_targets
    from .prune.latency import prune_to_latency
    from .prune.pruner import prune
    from .prune.recipe import add_prune_record
    from .prune.recover import fine_tune, prune_and_fine_tune
    from .train import evaluate, fit

    progress = not args.quiet
    check_out_dir(args.out, overwrite=args.force)  # fail fast, before any training
    spec = get_spec(args.model)
    profiles = resolve_targets(args.target)
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    torch.manual_seed(args.seed)
    model = build(args.model)
    task = spec.task()
    x = spec.example_inputs(1)
    history: list[StageRecord] = []
    if not args.no_train:
        fit(model, task, epochs=args.epochs, seed=args.seed, progress=progress)
    before = evaluate(model, task.test, task)
    if not args.no_train:
        add_stage(history, "train", task=task.name, metric=task.metric, test=round(before, 4))
    teacher = None if args.no_distill else copy.deepcopy(model).eval()
    opts = dict(importance=args.importance, global_pruning=args.global_pruning,
                round_to=args.round_to, keep_layers=args.keep or None)
    ft_epochs = args.fine_tune_epochs
    if args.latency_ms is not None:
        target = args.latency_target or profiles[0]
        res, lat = prune_to_latency(model, x, latency_ms=args.latency_ms, target=target,
                                    progress=progress, task=task, **opts)
        after_prune = evaluate(model, task.test, task)
        if ft_epochs != 0:
            fine_tune(model, task, teacher=teacher, epochs=ft_epochs, seed=args.seed,
                      progress=progress)
        report = {"before": before, "after_prune": after_prune,
                  "after_fine_tune": evaluate(model, task.test, task), "latency": lat}
    elif ft_epochs == 0:
        goal = {k: v for k, v in (("ratio", args.ratio), ("macs_reduction", args.macs_reduction),
                                  ("params_reduction", args.params_reduction)) if v is not None}
        res = prune(model, x, **goal, task=task, progress=progress, **opts)
        after = evaluate(model, task.test, task)
        report = {"before": before, "after_prune": after, "after_fine_tune": after}
    else:
        res, report = prune_and_fine_tune(
            model, x, task, ratio=args.ratio, macs_reduction=args.macs_reduction,
            params_reduction=args.params_reduction, steps=args.steps,
            final_epochs=ft_epochs, distill=not args.no_distill, teacher=teacher,
            seed=args.seed, progress=progress, **opts)
    add_prune_record(history, res, metric=task.metric, test_before=round(report["before"], 4),
                     test_after_prune=round(report["after_prune"], 4),
                     test_after_fine_tune=round(report["after_fine_tune"], 4))
    recipe = {"model": args.model, "train": not args.no_train, "seed": args.seed,
              "targets": [p.name for p in profiles],
              "prune": {k: v for k, v in {
                  "ratio": args.ratio, "macs_reduction": args.macs_reduction,
                  "params_reduction": args.params_reduction, "latency_ms": args.latency_ms,
                  "importance": args.importance, "global": args.global_pruning,
                  "round_to": args.round_to, "keep": args.keep, "steps": args.steps,
                  "fine_tune_epochs": ft_epochs, "distill": not args.no_distill}.items()
                  if v is not None}}
    bundle = compress(model, x, targets=profiles, out_dir=args.out, name=args.model,
                      input_names=spec.input_names, output_names=spec.output_names, task=task,
                      recipe=recipe, history=history, progress=progress,
                      overwrite=args.force)
    summary = {"bundle": str(bundle.root), "macs": [res.macs_before, res.macs_after],
               "params": [res.params_before, res.params_after], "metric": task.metric,
               "before": report["before"], "after_prune": report["after_prune"],
               "after_fine_tune": report["after_fine_tune"],
               "targets": [p.name for p in profiles]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle: {bundle.root}")
        print(f"  MACs {res.macs_before:,} -> {res.macs_after:,} ({res.macs_ratio:.2f}x fewer), "
              f"parameters {res.params_before:,} -> {res.params_after:,}")
        print(f"  {task.metric}: {report['before']:.4g} before, {report['after_prune']:.4g} "
              f"after pruning, {report['after_fine_tune']:.4g} after fine-tuning")
    sys.stdout.flush()
    return 0
