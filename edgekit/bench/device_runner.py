"""Self-contained benchmark runner copied to a device (ARM board) and run there.

It imports nothing from edgekit: only the standard library, numpy and the device's own
runtime (ai-edge-litert or tflite-runtime, onnxruntime, openvino, or executorch). Usage on the
device::

    python3 device_runner.py --model model.onnx --inputs inputs.npz --out result.json \
        [--runtime auto|onnxruntime|openvino|tflite|executorch] [--threads 2] [--runs 50]
        [--warmup 5]

``inputs.npz`` holds one array per model input, keys ``input.<i>`` in model order. The result
JSON holds load time, first inference, every steady-state latency (ms), the outputs of the
first inference (in ``outputs.npz`` next to the result) and the device's description.
``emulated`` is true when ``EDGEKIT_EMULATED`` is set (the qemu wrapper sets it).
Exit codes: 0 ok, 3 runtime missing (the JSON says which and how to install it), 1 failure.
"""

import argparse
import json
import os
import platform
import sys
import time
import traceback

RUNNER_VERSION = 1

INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install openvino",
    "tflite": "pip install ai-edge-litert  (or: pip install tflite-runtime)",
    "executorch": "pip install executorch",
}


class MissingRuntime(Exception):
    def __init__(self, runtime, detail):
        super().__init__(f"{runtime} is not installed on this device: {detail}")
        self.runtime = runtime
        self.detail = detail


def _runtime_for(path, wanted):
    if wanted != "auto":
        return wanted
    ext = os.path.splitext(path)[1].lower()
    return {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "tflite",
            ".pte": "executorch"}.get(ext, "?")


def _load_onnxruntime(path, threads):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingRuntime("onnxruntime", str(exc)) from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names_in = [i.name for i in sess.get_inputs()]
    names_out = [o.name for o in sess.get_outputs()]

    def run(feeds):
        return sess.run(names_out, dict(zip(names_in, feeds)))

    return run, {"runtime": "onnxruntime", "version": ort.__version__,
                 "providers": sess.get_providers()}


def _load_openvino(path, threads):
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingRuntime("openvino", str(exc)) from exc
    core = ov.Core()
    compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                "PERFORMANCE_HINT": "LATENCY",
                                                "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    n_out = len(compiled.outputs)

    def run(feeds):
        for i, x in enumerate(feeds):
            req.get_input_tensor(i).data[...] = x
        req.infer()
        return [req.get_output_tensor(i).data.copy() for i in range(n_out)]

    ran = compiled.get_property("INFERENCE_PRECISION_HINT")
    return run, {"runtime": "openvino", "version": ov.get_version(),
                 "precision": ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran)}


def _load_tflite(path, threads):
    mod = name = None
    errors = []
    for candidate in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            mod = __import__(candidate, fromlist=["Interpreter"])
            name = candidate.split(".")[0]
            break
        except ImportError as exc:
            errors.append(f"{candidate}: {exc}")
    if mod is None:
        raise MissingRuntime("tflite", "; ".join(errors))
    interp = mod.Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    sigs = interp.get_signature_list()
    if sigs:
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        runner = interp.get_signature_runner(key)
        in_det, out_det = runner.get_input_details(), runner.get_output_details()

        def order(names):
            def k(n):
                tail = n.rsplit("_", 1)[-1]
                return (0, int(tail)) if tail.isdigit() else (1, n)
            return sorted(names, key=k)

        in_idx = [in_det[n]["index"] for n in order(sigs[key]["inputs"])]
        out_idx = [out_det[n]["index"] for n in order(sigs[key]["outputs"])]
    else:
        in_idx = [d["index"] for d in interp.get_input_details()]
        out_idx = [d["index"] for d in interp.get_output_details()]

    def run(feeds):
        for idx, x in zip(in_idx, feeds):
            interp.set_tensor(idx, x)
        interp.invoke()
        return [interp.get_tensor(idx).copy() for idx in out_idx]

    try:
        from importlib.metadata import version
        ver = version("ai-edge-litert" if name == "ai_edge_litert" else "tflite-runtime")
    except Exception:
        ver = "?"
    return run, {"runtime": name, "version": ver}


def _load_executorch(path, threads):
    # XNNPACK's threadpool is process-wide and keeps the device's core count (not resized).
    try:
        import torch
        from executorch.extension.pybindings import _C
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise MissingRuntime("executorch", str(exc)) from exc
    method = Runtime.get().load_program(path).load_method("forward")

    def run(feeds):
        return [o.numpy() for o in method.execute([torch.from_numpy(x) for x in feeds])]

    try:
        from importlib.metadata import version
        ver = version("executorch")
    except Exception:
        ver = "?"
    return run, {"runtime": "executorch", "version": ver,
                 "threads_used": int(_C._threadpool_get_thread_count())}


LOADERS = {"onnxruntime": _load_onnxruntime, "openvino": _load_openvino, "tflite": _load_tflite,
           "executorch": _load_executorch}


def _device():
    info = {"machine": platform.machine(), "system": platform.system(),
            "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "CPU part", "Hardware")):
                    key, _, val = line.partition(":")
                    info.setdefault(key.strip().lower().replace(" ", "_"), val.strip())
    except OSError:
        pass
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--runtime", default="auto", choices=["auto", *LOADERS])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--emulated", action="store_true", help="label timings as emulated")
    args = p.parse_args(argv)

    emulated = bool(args.emulated or os.environ.get("EDGEKIT_EMULATED"))
    result = {"runner_version": RUNNER_VERSION, "status": "failed", "device": _device(),
              "emulated": emulated, "emulator": os.environ.get("EDGEKIT_EMULATED") or None,
              "threads": args.threads, "warmup": args.warmup}
    out_dir = os.path.dirname(os.path.abspath(args.out))
    runtime = _runtime_for(args.model, args.runtime)
    result["runtime_requested"] = runtime
    code = 1
    samples = []
    try:
        try:
            import numpy as np
        except ImportError as exc:
            raise MissingRuntime("numpy", str(exc)) from exc
        if runtime not in LOADERS:
            raise ValueError(f"cannot tell the runtime of {args.model}; pass --runtime")
        with np.load(args.inputs) as data:
            keys = sorted((k for k in data.files if k.startswith("input.")),
                          key=lambda k: int(k.split(".", 1)[1]))
            feeds = [np.ascontiguousarray(data[k]) for k in keys]
        t0 = time.perf_counter()
        run, info = LOADERS[runtime](args.model, args.threads)
        result["load_ms"] = (time.perf_counter() - t0) * 1e3
        result.update(info)
        t0 = time.perf_counter()
        outs = run(feeds)
        result["first_inference_ms"] = (time.perf_counter() - t0) * 1e3
        np.savez(os.path.join(out_dir, "outputs.npz"),
                 **{f"output.{i}": np.asarray(o) for i, o in enumerate(outs)})
        result["outputs_file"] = "outputs.npz"
        for _ in range(args.warmup):
            run(feeds)
        clock = time.perf_counter
        for _ in range(args.runs):
            t = clock()
            run(feeds)
            samples.append((clock() - t) * 1e3)
        result["status"] = "ok"
        code = 0
    except MissingRuntime as exc:
        result.update(status="missing_runtime", error=str(exc), missing=exc.runtime,
                      install=INSTALL.get(exc.runtime, f"pip install {exc.runtime}"))
        code = 3
    except KeyboardInterrupt:
        result.update(status="interrupted", error="interrupted")
        code = 130
    except Exception as exc:
        result.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    result["latencies_ms"] = samples
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
