"""``edgekit prune``: a zoo model (trained on its task first) or the user's own model
(``module:factory`` with ``--data``) -> pruned -> fine-tuned with distillation -> bundle."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

from .errors import UsageError
from .manifest import StageRecord, add_stage

__all__ = ["DEFAULT_TARGET", "add_prune_parser", "add_user_data_args", "first_samples",
           "input_keys", "run_prune", "user_task"]

DEFAULT_TARGET = "x86-onnxruntime-fp32"


def add_prune_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prune", help="prune a zoo model or your own, fine-tune it and build a bundle",
        description="Prune a model structurally (channels, hidden units, attention heads or "
        "head dimensions) to a channel ratio, a MACs/parameter reduction or a measured "
        "latency, fine-tune it with distillation from the unpruned model, then export and "
        "verify it for each --target. A zoo model is trained on its real task first; your own "
        "model (module:factory, already trained) needs --input-shape and, to fine-tune, "
        "--data train.npz (arrays x and y; integer y: classification, float y: regression) "
        "and optionally --val-data. The manifest records the pruning history (replay it with "
        "edgekit.prune.replay).",
    )
    p.add_argument("model", help="zoo model name (see `edgekit models`) or module:factory")
    p.add_argument("--target", "-t", action="append",
                   help="target profile name or .toml path; repeat for several "
                   f"(default: {DEFAULT_TARGET})")
    add_user_data_args(p, data="training data for fine-tuning",
                       val_data="validation data, scored before and after")
    p.add_argument("--attention", default="head_dim", choices=["head_dim", "heads", "keep"],
                   help="attention layers: shrink every head alike (default), remove whole "
                   "heads, or keep them")
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
    from .profiles import resolve_targets
    from .prune.recipe import add_prune_record
    from .train import evaluate

    progress = not args.quiet
    check_out_dir(args.out, overwrite=args.force)  # fail fast, before any training
    profiles = resolve_targets(args.target or [DEFAULT_TARGET])
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    torch.manual_seed(args.seed)
    history: list[StageRecord] = []
    if ":" in args.model:
        model, x, task, names = _user_model(args)
    else:
        model, x, task, names = _zoo_model(args, history, progress)
    if task is not None:
        before = evaluate(model, task.test, task)
    teacher = None if args.no_distill or task is None else copy.deepcopy(model).eval()
    opts = dict(importance=args.importance, global_pruning=args.global_pruning,
                round_to=args.round_to, keep_layers=args.keep or None, attention=args.attention)
    ft_epochs = 0 if task is None else args.fine_tune_epochs
    report = _prune_and_recover(args, model, x, task, teacher, opts, ft_epochs, profiles,
                                progress)
    res = report.pop("result")
    if task is not None:
        report["before"] = before
    scores = {f"test_{k}": round(report[k], 4) for k in ("before", "after_prune",
                                                           "after_fine_tune") if k in report}
    add_prune_record(history, res, **({"metric": task.metric} if task else {}), **scores)
    recipe = {"model": args.model, "train": not args.no_train and task is not None and
              ":" not in args.model, "seed": args.seed, "targets": [p.name for p in profiles],
              **({"input_shapes": args.input_shape} if ":" in args.model else {}),
              "prune": {k: v for k, v in {
                  "ratio": args.ratio, "macs_reduction": args.macs_reduction,
                  "params_reduction": args.params_reduction, "latency_ms": args.latency_ms,
                  "importance": args.importance, "global": args.global_pruning,
                  "round_to": args.round_to, "keep": args.keep, "steps": args.steps,
                  "attention": args.attention, "fine_tune_epochs": ft_epochs,
                  "distill": not args.no_distill}.items()
                  if v is not None}}
    from .pipeline import compress

    bundle = compress(model, x, targets=profiles, out_dir=args.out,
                      name=args.model.rpartition(":")[2] or args.model,
                      input_names=names[0], output_names=names[1], task=task, recipe=recipe,
                      history=history, progress=progress, overwrite=args.force)
    summary: dict[str, Any] = {
               "bundle": str(bundle.root), "macs": [res.macs_before, res.macs_after],
               "params": [res.params_before, res.params_after],
               "metric": task.metric if task else None,
               **{k: report[k] for k in ("before", "after_prune", "after_fine_tune")
                  if k in report},
               "targets": [p.name for p in profiles]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle: {bundle.root}")
        print(f"  MACs {res.macs_before:,} -> {res.macs_after:,} ({res.macs_ratio:.2f}x fewer), "
              f"parameters {res.params_before:,} -> {res.params_after:,}")
        if task is not None:
            print(f"  {task.metric}: {report['before']:.4g} before, "
                  f"{report['after_prune']:.4g} after pruning, "
                  f"{report['after_fine_tune']:.4g} after fine-tuning")
    sys.stdout.flush()
    return 0


def add_user_data_args(p: argparse.ArgumentParser, *, data: str, val_data: str) -> None:
    """The flags that give a user model (module:factory) its input shapes and task data:
    ``--input-shape``, ``--data``, ``--val-data``, ``--input-key``, ``--target-key``
    (read by :func:`user_task`); ``data`` / ``val_data`` say what each file is for."""
    p.add_argument("--input-shape", action="append",
                   help="user models: one per input, e.g. 1x3x32x32 or int64:1x64")
    p.add_argument("--data", metavar="NPZ",
                   help=f"user models: {data} (.npz with the input key(s) and the target key; "
                   "integer targets: classification, float: regression)")
    p.add_argument("--val-data", metavar="NPZ",
                   help=f"user models: {val_data} (default: the last fifth of --data)")
    p.add_argument("--input-key", action="append",
                   help="user models: .npz key of each input, in order (default x)")
    p.add_argument("--target-key", default="y", help="user models: .npz key of the targets")


def _zoo_model(args: argparse.Namespace, history: list[StageRecord], progress: bool):
    """A zoo model, trained on its task unless --no-train; its example inputs, task, names."""
    from .models import build, get_spec
    from .train import evaluate, fit

    for flag, given in (("--input-shape", args.input_shape), ("--data", args.data),
                        ("--val-data", args.val_data), ("--input-key", args.input_key)):
        if given:
            raise UsageError(f"{flag} is only for user models (module:factory); zoo models "
                             "bring their own task data")
    spec = get_spec(args.model)
    model, task = build(args.model), spec.task()
    if not args.no_train:
        fit(model, task, epochs=args.epochs, seed=args.seed, progress=progress)
        add_stage(history, "train", task=task.name, metric=task.metric,
                  test=round(evaluate(model, task.test, task), 4))
    return model, spec.example_inputs(1), task, (spec.input_names, spec.output_names)


def _user_model(args: argparse.Namespace):
    """The user's model from module:factory, its example inputs and (with --data) the task."""
    from .api import load_factory, parse_input_spec

    if not args.input_shape:
        raise UsageError(f"{args.model} needs --input-shape for each model input",
                         hint="e.g. --input-shape 1x3x32x32 (add int64: for token inputs)")
    if args.epochs is not None:
        raise UsageError("--epochs trains zoo models before pruning; a user model comes "
                         "trained", hint="use --fine-tune-epochs for the fine-tuning after")
    if args.val_data and not args.data:
        raise UsageError("--val-data needs --data (the training data for fine-tuning)")
    inputs = tuple(parse_input_spec(s) for s in args.input_shape)
    input_keys(args.input_key, len(inputs))
    model = load_factory(args.model).eval()
    task = None
    if args.data:
        task = user_task(args.data, args.val_data, args.input_key, args.target_key, inputs)
        inputs = first_samples(task.train, inputs)
    elif args.fine_tune_epochs:
        raise UsageError("--fine-tune-epochs needs --data to fine-tune on",
                         hint="give --data train.npz (and --val-data val.npz)")
    return model, inputs, task, (None, None)


def input_keys(given, n: int) -> tuple[str, ...]:
    """The .npz key of each of ``n`` inputs: ``given``, else ``x`` (one input) or
    ``x0, x1, ...``; a count that does not match is a UsageError."""
    keys = tuple(given or (["x"] if n == 1 else [f"x{i}" for i in range(n)]))
    if len(keys) != n:
        raise UsageError(f"{len(keys)} --input-key for {n} --input-shape",
                         hint="give one --input-key per model input, in order")
    return keys


def first_samples(train, examples) -> tuple:
    """The first samples of the user's training data as the example inputs, as many as each
    example's batch (where an input's data has the example's dtype), so reference outputs and
    the int8 calibration range check are about data like theirs; ``examples`` elsewhere."""
    return tuple(t[: ex.shape[0]].clone() if t.shape[0] >= ex.shape[0] and t.dtype == ex.dtype
                 else ex for t, ex in zip(train.inputs, examples))


def user_task(train: str, val: str | None, keys, target_key: str, inputs):
    """A :class:`~edgekit.data.task.Task` over the user's .npz files: classification (cross
    entropy, top-1 %) for integer targets, regression (MSE) for float ones. Without ``val``
    the last fifth of ``train`` is held out. ``keys``: the .npz key of each input
    (:func:`input_keys`: None for the default)."""
    names = input_keys(keys, len(inputs))
    import torch.nn.functional as F

    from .data import Split, Task, load_npz
    from .data.tasks import classification_loss, mse_score, top1
    from .errors import DataError

    tr = load_npz(train, names, target_key)
    if val:
        va = load_npz(val, names, target_key)
    else:
        if len(tr) < 5:
            raise DataError(f"data file {train} has {len(tr)} samples: too few to hold out "
                            "validation samples", hint="give --val-data val.npz")
        cut = len(tr) - len(tr) // 5
        tr, va = (Split(tuple(t[:cut] for t in tr.inputs), tr.targets[:cut]),
                  Split(tuple(t[cut:] for t in tr.inputs), tr.targets[cut:]))
    for where, split in ((train, tr), (val or train, va)):
        for key, data, example in zip(names, split.inputs, inputs):
            if tuple(data.shape[1:]) != tuple(example.shape[1:]):
                raise DataError(f"data file {where}: {key!r} holds samples of shape "
                                f"{tuple(data.shape[1:])}, the model input is "
                                f"{tuple(example.shape[1:])} (--input-shape)",
                                hint="store one sample per row of dim 0, shaped like the input")
    if not tr.targets.is_floating_point():
        classes = int(max(tr.targets.max(), va.targets.max())) + 1
        return Task(name="user", kind="classification", metric="top1", higher_is_better=True,
                    train=tr, val=va, test=va, loss=classification_loss, score=top1,
                    num_classes=classes, description=f"{train} (classification)")

    def mse_loss(outputs, targets, _inputs):
        out = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        return F.mse_loss(out.reshape(targets.shape), targets)

    return Task(name="user", kind="regression", metric="mse", higher_is_better=False,
                train=tr, val=va, test=va, loss=mse_loss, score=mse_score,
                description=f"{train} (regression)")


def _prune_and_recover(args, model, x, task, teacher, opts, ft_epochs, profiles,
                       progress: bool) -> dict[str, Any]:
    """Prune to the goal and fine-tune; the result and the task scores after each phase."""
    from .prune.latency import prune_to_latency
    from .prune.pruner import prune
    from .prune.recover import fine_tune, prune_and_fine_tune
    from .train import evaluate

    def score() -> dict[str, float]:
        return {} if task is None else {"v": evaluate(model, task.test, task)}

    if args.latency_ms is not None:
        target = args.latency_target or profiles[0]
        res, lat = prune_to_latency(model, x, latency_ms=args.latency_ms, target=target,
                                    progress=progress, task=task, **opts)
        after = score()
        if ft_epochs != 0 and task is not None:
            fine_tune(model, task, teacher=teacher, epochs=ft_epochs, seed=args.seed,
                      progress=progress)
        out: dict[str, Any] = {"result": res, "latency": lat}
        if task is not None:
            out.update(after_prune=after["v"], after_fine_tune=score()["v"])
        return out
    if ft_epochs == 0:
        goal = {k: v for k, v in (("ratio", args.ratio), ("macs_reduction", args.macs_reduction),
                                  ("params_reduction", args.params_reduction)) if v is not None}
        res = prune(model, x, **goal, task=task, progress=progress, **opts)
        after = score()
        return {"result": res, **({"after_prune": after["v"], "after_fine_tune": after["v"]}
                                  if task is not None else {})}
    res, report = prune_and_fine_tune(
        model, x, task, ratio=args.ratio, macs_reduction=args.macs_reduction,
        params_reduction=args.params_reduction, steps=args.steps, final_epochs=ft_epochs,
        distill=not args.no_distill, teacher=teacher, seed=args.seed, progress=progress,
        **opts)
    return {"result": res, "after_prune": report["after_prune"],
            "after_fine_tune": report["after_fine_tune"]}
