"""One search point, in two steps that run where they must:

* :func:`build_point` (any node): the base model, pruned to the point's ratio (and fine-tuned),
  built for one target by :func:`edgekit.compress` with the point's quantization settings,
  verified, scored on the task's test split; returns the bundle packed as bytes, so a node
  on another machine can time it.
* :func:`time_point` (only where the target's timing resource is): the bundle timed by the
  bench harness (:func:`edgekit.bench`, the interleaved timer), median latency.

Both take and return plain dicts (JSON-able, plus the packed bundle bytes) so they run the
same in this process and as Ray tasks. :func:`prepare_base` trains the model once per search.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import EdgekitError
from .source import ModelSource, bundle_name, model_spec

__all__ = ["ModelSource", "prepare_base", "build_point", "time_point", "retime_points",
           "node_identity", "pack_bundle_dir"]

BASE_DIR = "base"
BASE_WEIGHTS = "model.pt"
BASE_INFO = "base.json"


def node_identity() -> dict[str, Any]:
    """Where this code runs: the Ray node id and IP, the resources this task holds and the
    node's custom resources when inside Ray; the host name and the pid."""
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                            "node_id": None, "node_ip": None}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            info["node_id"] = ctx.get_node_id()
            info["node_ip"] = ray.util.get_node_ip_address()
            info["assigned"] = dict(ctx.get_assigned_resources())
            node: dict[str, Any] = next(
                (n for n in ray.nodes() if n.get("NodeID") == info["node_id"]), {})
            info["node_resources"] = sorted(
                k for k in node.get("Resources", {})
                if not k.startswith("node:") and k not in ("CPU", "GPU", "memory",
                                                           "object_store_memory"))
    except Exception:  # not inside Ray (or Ray missing): host and pid say enough
        pass
    return info


def prepare_base(source: ModelSource, out_dir: Path, *, progress: bool = True
                 ) -> dict[str, Any]:
    """Train (or load) the base model once; its weights and test metric live in
    ``out_dir/base`` and are reused by a resumed search."""
    import torch

    from ..train import evaluate, fit

    base = out_dir / BASE_DIR
    info_path = base / BASE_INFO
    if info_path.is_file() and (base / BASE_WEIGHTS).is_file():
        info = json.loads(info_path.read_text())
        if info.get("source") == source.to_json():
            return dict(info)
    spec = model_spec(source.to_json())
    torch.manual_seed(source.seed)
    model = spec.factory()
    if source.weights is not None and not source.is_user:  # a user spec loads its own
        from ..recipe import load_weights

        load_weights(model, source.weights, trust=source.trust_weights,
                     where=f"weights {source.weights}")
    task = spec.task()
    epochs = spec.default_epochs if source.epochs is None else source.epochs
    if epochs > 0:  # a zoo model (a user model comes trained)
        fit(model, task, epochs=epochs, seed=source.seed, progress=progress, spec=spec)
    model.eval()
    metric = float(evaluate(model, task.test, task))
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{BASE_WEIGHTS}.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, base / BASE_WEIGHTS)
    info = {"source": source.to_json(), "weights": str((base / BASE_WEIGHTS).resolve()),
            "metric": task.metric, "higher_is_better": task.higher_is_better,
            "test": metric, "epochs": epochs}
    tmp_info = base / f".{BASE_INFO}.tmp"
    tmp_info.write_text(json.dumps(info, indent=2))
    os.replace(tmp_info, info_path)
    return info


def pack_bundle_dir(bundle_dir: Path) -> bytes:
    """A bundle folder packed as archive bytes (for a node that does not share the folder)."""
    from ..archive import pack_bundle

    with tempfile.TemporaryDirectory(prefix="edgekit-search-") as tmp:
        archive = pack_bundle(bundle_dir, Path(tmp) / "bundle.tar.gz")
        return archive.read_bytes()


def _bundle_size(bundle_dir: Path, target: str) -> int:
    from ..bundle import load_bundle

    entry = load_bundle(bundle_dir).target(target)
    return int(sum(f.bytes or 0 for f in entry.files))


def build_point(job: dict[str, Any]) -> dict[str, Any]:
    """Build, verify and score one point for one target (see the module notes).

    ``job``: ``source`` (:meth:`ModelSource.to_json`), ``base`` (:func:`prepare_base`'s
    info), ``profile`` (a :class:`~edgekit.profiles.TargetProfile`), ``point`` (a space
    point), ``out``
    (the bundle folder to write). Returns ``status`` ("built" or "failed" with ``error``),
    ``accuracy``, ``drop``, ``size_bytes``, ``build_s``, ``node``, ``bundle`` (packed bytes).
    """
    import dataclasses

    import torch

    from ..manifest import StageRecord
    from ..measure.scoring import evaluate_session
    from ..pipeline import compress
    from ..profiles import validate_options
    from .space import point_options, split_point

    torch.set_num_threads(1)
    start = time.perf_counter()
    node = node_identity()
    src = job["source"]
    ratio, importance, threads, quant = split_point(job["point"])
    profile = job["profile"]
    if threads is not None:
        profile = dataclasses.replace(profile, threads=threads)
    options = point_options(job["point"])
    if options:
        profile = dataclasses.replace(profile, options=validate_options(
            {**profile.options, **options}, profile.backend,
            where=f"search point for {profile.name}"))
    out = Path(job["out"])
    try:
        spec = model_spec(src)
        task = spec.task()
        model = spec.factory()
        model.load_state_dict(torch.load(job["base"]["weights"], weights_only=True))
        model.eval()
        history: list[StageRecord] = []
        if ratio > 0:
            from ..prune.recipe import apply_prune_table

            table = {**src.get("prune", {}), "ratio": ratio, "importance": importance,
                     "fine_tune_epochs": int(src.get("fine_tune_epochs", 1))}
            apply_prune_table(model, spec, task, table, history, targets=[profile],
                              seed=int(src.get("seed", 0)), progress=False)
        quantization = None
        if profile.precision == "int8":
            # the search times every point on its device: no timing on the build node
            quantization = {**src.get("quantization", {}), **quant, "latency_check": False}
        compress(model, spec.example_inputs(1), targets=[profile], out_dir=out,
                 name=bundle_name(src["model"]), input_names=spec.input_names,
                 output_names=spec.output_names, task=task, history=history,
                 quantization=quantization, progress=False, overwrite=True,
                 recipe={"search_point": dict(job["point"]), "model": src["model"]})
        from ..bundle import load_bundle

        session = load_bundle(out).load(profile.name)
        accuracy = evaluate_session(session, task.test, task)
        drop = task.drop(float(job["base"]["test"]), accuracy)
        result = {"status": "built", "accuracy": accuracy, "drop": drop,
                  "size_bytes": _bundle_size(out, profile.name), "bundle": pack_bundle_dir(out)}
    except EdgekitError as exc:  # a point the pipeline refuses (gate, parity): a failed trial
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    result.update(node=node, build_s=time.perf_counter() - start, out=str(out),
                  threads=profile.threads)
    return result


def _here(out: Path, packed: bytes, tmp: Path, name: str) -> Path:
    """``out`` where this node has the bundle folder, else ``packed`` unpacked into
    ``tmp/name``."""
    if (out / "manifest.json").is_file():
        return out
    from ..archive import unpack_bundle

    archive = tmp / f"{name}.tar.gz"
    archive.write_bytes(packed)
    unpack_bundle(archive, tmp / name)
    return tmp / name


def _remote(job: dict[str, Any]) -> Any:
    """The job's remote device (``[user@]host[:port]``), or None to time here."""
    if not job.get("remote"):
        return None
    from ..bench.remote import RemoteDevice

    return RemoteDevice.parse(job["remote"])


def time_point(job: dict[str, Any]) -> dict[str, Any]:
    """Time a built point with the bench harness where this task runs (the node holding the
    target's timing resource), or on ``job["remote"]`` (``[user@]host[:port]``) over SSH.

    ``job``: ``out`` (the bundle folder), ``bundle`` (its packed bytes, unpacked into a
    temporary folder when ``out`` is not on this node), ``target``, ``threads``, ``runs``,
    ``warmup``. Returns ``status``, ``latency_ms`` (median), ``latency`` (the statistics),
    ``node``, ``time_s``.
    """
    from ..bench.harness import bench

    start = time.perf_counter()
    node = node_identity()
    out = Path(job["out"])
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-time-"))  # used when out is elsewhere
    try:
        out = _here(out, job["bundle"], tmp, "bundle")
        remote = _remote(job)
        report = bench(out, targets=[job["target"]], threads=job.get("threads"),
                       runs=int(job.get("runs", 100)), warmup=int(job.get("warmup", 10)),
                       data="none", memory=False, remote=remote, progress=False)
        row = report["results"][0]
        if not row.get("latency"):
            raise EdgekitError(f"the bench harness did not time {job['target']}: "
                               f"{row.get('reason') or report.get('errors')}")
        result = {"status": "timed", "latency_ms": float(row["latency"]["median_ms"]),
                  "latency": row["latency"], "runtime": row.get("runtime")}
    except EdgekitError as exc:
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(node=node, time_s=time.perf_counter() - start)
    return result


def retime_points(job: dict[str, Any]) -> dict[str, Any]:
    """Time several built points again, together, interleaved, where the target's timing
    resource is (after the builds: the device is quiet), so the choice among them is made on
    numbers taken side by side rather than on trial timings taken at different moments.

    ``job``: ``target``, ``points`` (a list of ``{"trial", "out", "bundle"}``: the bundle
    folder and its packed bytes, unpacked when the folder is not on this node), ``runs``,
    ``warmup``, ``remote``. Each bundle is timed at its own thread count. Returns
    ``status``, ``latency_ms`` (trial -> median), ``node``, ``time_s``.
    """
    from ..bench.harness import bench

    start = time.perf_counter()
    node = node_identity()
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-retime-"))
    try:
        folders: dict[int, Path] = {}
        for p in job["points"]:
            folders[int(p["trial"])] = _here(Path(p["out"]), p["bundle"], tmp,
                                             str(p["trial"])).resolve()
        report = bench(list(folders.values()), targets=[job["target"]],
                       runs=int(job.get("runs", 100)), warmup=int(job.get("warmup", 10)),
                       data="none", memory=False, remote=_remote(job), progress=False)
        by_source = {str(Path(r["source"]).resolve()): r for r in report["results"]}
        latency: dict[int, float] = {}
        for trial, folder in folders.items():
            row = by_source.get(str(folder))
            if row and row.get("latency"):
                latency[trial] = float(row["latency"]["median_ms"])
        if not latency:
            raise EdgekitError(f"the bench harness timed none of the points: "
                               f"{report.get('errors')}")
        result: dict[str, Any] = {"status": "timed", "latency_ms": latency}
    except EdgekitError as exc:
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(node=node, time_s=time.perf_counter() - start)
    return result
