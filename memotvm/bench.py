"""Measuring speed: interleaved repeats in one process, medians and ratios.

Machines are noisy, so every comparison runs its candidates round-robin (one call of
each per round, after warm-up) and reports medians; ratios are taken between medians of
the same run.
"""

from __future__ import annotations

import statistics
import time


def interleaved(runners: dict, rounds: int = 20, warmup: int = 2, min_time: float = 0.0) -> dict:
    """Median seconds per call of each runner (name -> zero-argument callable)."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runners}
    start = time.perf_counter()
    r = 0
    while r < rounds or (time.perf_counter() - start) < min_time:
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        r += 1
        if r >= 10 * rounds:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def onnxruntime_runner(model, feeds, threads: int | None = None):
    """A zero-argument callable running ``model`` in onnxruntime (None if not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def memotvm_runner(compiled, feeds):
    """A zero-argument callable running a compiled model with inputs checked once."""
    arrays = compiled.check_inputs(feeds)
    session = compiled._session()
    return lambda: session(arrays)
