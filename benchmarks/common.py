"""Pieces the benchmark scripts share: trained zoo models (cached), artifact sizes, and a
timing view of a session that leaves Python-side conversions out of the timed call."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RUNTIMES = ("onnxruntime", "openvino", "tflite")
FP32 = {"onnxruntime": "x86-onnxruntime-fp32", "openvino": "x86-openvino-fp32",
        "tflite": "x86-tflite-fp32"}
INT8 = {"onnxruntime": "x86-onnxruntime-int8", "openvino": "x86-openvino-int8",
        "tflite": "arm64-tflite-int8"}
WEIGHT_SUFFIXES = (".onnx", ".bin", ".tflite", ".data")


def log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """Trained weights for benchmarks: ``$EDGEKIT_CACHE_DIR/bench`` or ~/.cache/edgekit/bench."""
    base = os.environ.get("EDGEKIT_CACHE_DIR")
    root = (Path(base) if base else Path.home() / ".cache" / "edgekit") / "bench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(p, dict):
            for k in sorted(p):
                h.update(k.encode())
                h.update(_digest(p[k]).encode())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def weights_digest(model: torch.nn.Module) -> str:
    return _digest(model.state_dict())


def trained(name: str, epochs: int | None = None, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A zoo model trained on its real task (``epochs`` None = the zoo default), in eval mode.

    Cached by the model's initial weights (architecture + seed), the training split's bytes,
    the epochs, torch's version and the training fingerprint (the recipe: optimizer, learning
    rate, warm-up, weight decay, batch size; and a hash of the training code), so a rerun of a
    benchmark does not retrain and a changed recipe or training loop does.
    """
    from edgekit.models import build, get_spec
    from edgekit.train import fit, training_fingerprint

    spec = get_spec(name)
    task = spec.task()
    epochs = spec.default_epochs if epochs is None else epochs
    torch.manual_seed(seed)
    model = build(name)
    recipe = training_fingerprint(model, spec)
    key = _digest(model.state_dict(), {"x": task.train.inputs[0]}, epochs, seed,
                  torch.__version__, recipe)
    path = cache_root() / f"{name}-{epochs}e-{key}.pt"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), json.loads(meta_path.read_text())
    t0 = time.perf_counter()
    fit(model, task, epochs=epochs, seed=seed, progress=False)
    meta = {"epochs": epochs, "seed": seed, "train_seconds": round(time.perf_counter() - t0, 1),
            "training": recipe}
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(meta))
    return model.eval(), meta


def pruned(name: str, model: torch.nn.Module, plan: dict, *, teacher_epochs: int | None = None,
           progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """``model`` pruned by ``plan`` (prune_and_fine_tune arguments plus ``steps`` and
    ``epochs_scale``, or ``fine_tune_epochs`` for an exact count) with distillation from the
    unpruned model; cached like :func:`trained`
    (the pruned structure is rebuilt from its history, then the weights loaded)."""
    from edgekit.models import build, get_spec
    from edgekit.prune import prune_and_fine_tune, replay

    spec = get_spec(name)
    plan = dict(plan)
    key = _digest(weights_digest(model), plan)
    path = cache_root() / f"{name}-pruned-{key}.pt"
    meta_path = path.with_suffix(".json")
    x = spec.example_inputs(1)
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        fresh = build(name)
        replay(fresh, meta["history"], x)
        fresh.load_state_dict(torch.load(path, weights_only=True))
        return fresh.eval(), meta
    task = spec.task()
    scale = plan.pop("epochs_scale", 1.0)
    steps = plan.pop("steps", 1)
    exact = plan.pop("fine_tune_epochs", None)
    final = max(2, round(spec.default_epochs * scale)) if exact is None else int(exact)
    per_step = max(2, final // 2) if exact is None else max(1, final)
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    res, rep = prune_and_fine_tune(work, x, task, steps=steps, epochs_per_step=per_step,
                                   final_epochs=final, teacher=copy.deepcopy(model),
                                   progress=progress, **plan)
    meta = {"history": res.to_json(), "macs": [res.macs_before, res.macs_after],
            "params": [res.params_before, res.params_after],
            "macs_reduction_x": round(res.macs_ratio, 3),
            "params_reduction_x": round(res.params_ratio, 3),
            "metric_before": round(rep["before"], 4),
            "metric_after_prune": round(rep["after_prune"], 4),
            "metric_after_fine_tune": round(rep["after_fine_tune"], 4),
            "steps": rep["steps"], "fine_tune_epochs": final,
            "prune_fine_tune_seconds": round(time.perf_counter() - t0, 1)}
    tmp = path.with_suffix(".tmp")
    torch.save(work.state_dict(), tmp)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(meta))
    return work.eval(), meta


def artifact_size(target_dir: Path) -> int:
    """Bytes of the weight-bearing files of one exported target folder."""
    return sum(f.stat().st_size for f in Path(target_dir).iterdir()
               if f.suffix in WEIGHT_SUFFIXES)



def _machine_paths(text: str) -> str:
    """``text`` without this machine's folders: the installed packages' folder (an error
    quoting a library's source line) as ``<site-packages>``, the working folder as ``.``."""
    import sysconfig

    for folder, name in ((sysconfig.get_paths()["purelib"], "<site-packages>"),
                         (str(Path.cwd()), ".")):
        text = text.replace(folder, name)
    return text


def write_results(out: Path, stem: str, data: Any, markdown: list[str]) -> None:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md`` (the folder made), the Markdown printed;
    neither names this machine's folders."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(_machine_paths(json.dumps(data, indent=2)) + "\n")
    (out / f"{stem}.md").write_text(_machine_paths("\n".join(markdown)))
    print("\n".join(markdown))


def run_models(names: list[str], res: dict[str, Any], run_model: Any, out: Path, stem: str,
               markdown: Any) -> None:
    """``run_model(name, tmp)`` for each model in its own temporary folder, appending its row
    (or its failure, as a row) to ``res["models"]`` and writing the results after each."""
    import tempfile

    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"edgekit-{stem}-{name}-") as tmp:
            try:
                res["models"].append(run_model(name, Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - one model's failure is its row
                res["models"].append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
        write_results(out, stem, res, markdown(res))


def cpu_name() -> str:
    """This machine's CPU model, for result headers."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def task_fidelity(sess: Any, task: Any, ref: Any) -> dict[str, Any]:
    """Accuracy and fidelity of ``sess`` on the task's test split against the PyTorch fp32
    outputs ``ref`` (centred cosine, top-1 agreement, SQNR)."""
    from edgekit.measure.metrics import centred_cosine, json_number, sqnr_db, top1_agreement
    from edgekit.measure.scoring import session_outputs

    outs = session_outputs(sess, task.test, batch=1)
    used = len(outs[0])
    inputs = [t[:used].numpy() for t in task.test.inputs]
    acc = float(task.score(outs, task.test.targets[:used].numpy(), inputs))
    out, r = np.asarray(outs[0], dtype=np.float64), ref[:used]
    agree = top1_agreement(r, out)
    return {"accuracy": round(acc, 3),
            "centred_cosine": round(float(np.nanmean(centred_cosine(r, out))), 5),
            "top1_agreement": None if agree is None else round(float(agree), 4),
            "sqnr_db": json_number(round(float(sqnr_db(r, out)), 2))}


def settle_batchnorm(model: torch.nn.Module, feeds: list[list[np.ndarray]]) -> torch.nn.Module:
    """Random weights with BatchNorm statistics estimated on real inputs (one batch of
    ``feeds``), so each layer passes on normalised activations as a trained network does.
    With default statistics a deep random network's output barely depends on its input (a
    MobileNetV2's is constant to int8 precision), which makes int8 fidelity meaningless."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
    batch = [torch.from_numpy(np.concatenate([f[i] for f in feeds]))
             for i in range(len(feeds[0]))]
    model.train()
    with torch.no_grad():
        model(*batch)
    for m in bns:
        m.momentum = 0.1
    return model.eval()
