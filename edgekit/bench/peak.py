"""This machine's arithmetic ceiling: measured fp32 and int8 matrix-multiply throughput.

An artifact's achieved operations per second (2 x MACs / median latency) divided by the peak
of its precision says how much of the hardware it uses, a number that can be compared across
machines and devices where raw milliseconds cannot.

* fp32: ``torch.mm`` (oneDNN/MKL) and ONNX Runtime ``MatMul`` (MLAS) on square matrices;
* int8: ONNX Runtime ``MatMulInteger`` (uint8 x int8 -> int32, MLAS's VNNI/AVX2 kernels) and
  ``torch._int_mm`` where this torch build has a CPU kernel.

The peak of a precision is the fastest of its kernels, at the thread count the artifacts run
with. Each kernel is timed ``repeats`` times after a warm-up; the fastest call counts (a peak is
the best the hardware gives; on a shared machine the median drifts with the load), and the
median is reported beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["measure_peak", "percent_of_peak"]


def _seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(fastest, median) seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def _ort_matmul(n: int, threads: int, integer: bool) -> Callable[[], Any]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if integer:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "peak", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if integer:
        feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                 "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    else:
        feeds = {"a": rng.standard_normal((n, n), dtype=np.float32),
                 "b": rng.standard_normal((n, n), dtype=np.float32)}
    return lambda: sess.run(None, feeds)


def _torch_mm(n: int, integer: bool) -> Callable[[], Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    if integer:
        a = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=g)
        b = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=g)
        torch._int_mm(a[:32, :32].contiguous(), b[:32, :32].contiguous())  # raises if no kernel
        return lambda: torch._int_mm(a, b)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    return lambda: torch.mm(a, b)


def measure_peak(threads: int = 1, n: int = 1024, repeats: int = 15) -> dict[str, Any]:
    """Peak fp32 and int8 operations per second (1 MAC = 2 ops) at ``threads`` threads.

    Returns ``{"fp32": {"ops_per_s", "kernel", "kernels": {...}}, "int8": {...}, "n", "threads"}``;
    a kernel that cannot run here is listed with its error instead of a number.
    """
    import torch

    ops = 2.0 * n ** 3
    result: dict[str, Any] = {"n": n, "threads": threads, "repeats": repeats}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for precision, integer in (("fp32", False), ("int8", True)):
            kernels: dict[str, Any] = {}
            makers = {"onnxruntime " + ("MatMulInteger" if integer else "MatMul"):
                      lambda i=integer: _ort_matmul(n, threads, i),
                      "torch " + ("_int_mm" if integer else "mm"):
                      lambda i=integer: _torch_mm(n, i)}
            for name, make in makers.items():
                try:
                    best, median = _seconds(make(), repeats)
                    kernels[name] = {"ops_per_s": ops / best, "best_s": best,
                                     "median_s": median}
                except Exception as exc:  # a kernel missing on this build is reported
                    kernels[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
            timed = {k: v for k, v in kernels.items() if "ops_per_s" in v}
            best = max(timed, key=lambda k: timed[k]["ops_per_s"]) if timed else None
            result[precision] = {"ops_per_s": timed[best]["ops_per_s"] if best else None,
                                 "kernel": best, "kernels": kernels}
    finally:
        torch.set_num_threads(before)
    return result


def percent_of_peak(macs: int, median_ms: float, peak_ops_per_s: float | None) -> float | None:
    """Achieved ops/s (2 x MACs per call) as a percentage of ``peak_ops_per_s``."""
    if not peak_ops_per_s or not median_ms or median_ms <= 0:
        return None
    return 100.0 * (2.0 * macs / (median_ms / 1e3)) / peak_ops_per_s
