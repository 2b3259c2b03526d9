"""``memotvm demo``: the whole story on a bundled model in well under two minutes."""

from __future__ import annotations

import os
import time

import numpy as np

from .api import compile as compile_model
from .bench import interleaved, memotvm_runner, onnxruntime_runner
from .frontend import load_model
from .passes import MemoConfig
from .sweep import plot, sweep
from .validate import validate

MODELS = os.path.join(os.path.dirname(__file__), "models")
DEFAULT_MODEL = "torch_lstm_gru"


def run_demo(model_name: str = DEFAULT_MODEL, threshold: float = 0.2, plot_path="memotvm_demo.png",
             out=print) -> dict:
    path = os.path.join(MODELS, model_name + ".onnx")
    feeds = dict(np.load(os.path.join(MODELS, model_name + "_inputs.npz")))
    model = load_model(path)
    t0 = time.perf_counter()
    plain = compile_model(model)
    t1 = time.perf_counter()
    config = MemoConfig(threshold=threshold)
    memo = compile_model(model, memo=config)
    t2 = time.perf_counter()
    out(f"model {model_name}: recurrent nodes "
        + ", ".join(f"{l.op} '{l.name}' (D={l.input_size}, H={l.hidden_size}, {l.direction})" for l in plain.loops))
    out(f"compile: unmodified {t1 - t0:.2f} s, memoized {t2 - t1:.2f} s")

    report = validate(model, feeds, config, baseline=plain)
    out(report.format())

    runners = {"memotvm": memotvm_runner(plain, feeds), "memotvm+memo": memotvm_runner(memo, feeds)}
    ort = onnxruntime_runner(model, feeds)
    if ort is not None:
        runners["onnxruntime"] = ort
    times = interleaved(runners, rounds=30)
    out("time per call (median of 30 interleaved rounds):")
    for name, t in times.items():
        line = f"  {name:<13} {t * 1e3:8.3f} ms"
        if "onnxruntime" in times:
            line += f"   {times['onnxruntime'] / t:5.2f}x onnxruntime"
        out(line)
    if ort is None:
        out("  (onnxruntime not installed: pip install 'memotvm[bench]' to compare)")

    large = _large_layer(out)

    rows = sweep(model, feeds, [0, 0.1, 0.2, 0.3, 0.5, 0.8], progress=False)
    if plot_path:
        plot(rows, plot_path, title=f"{model_name}: reuse and output error vs threshold")
        out(f"wrote {plot_path} (reuse and error against the threshold, BNN and oracle)")
    return {"report": report.to_dict(), "times": times, "sweep": rows, "large_layer": large}


def _large_layer(out, hidden=1024, steps=100, threshold=0.5):
    """Memoization pays where the weights do not fit in cache: one generated LSTM layer
    (random weights, smooth inputs) timed the same way."""
    from .bench import bench_model, format_rows
    from .testing import make_inputs, make_recurrent_model

    layer = make_recurrent_model("LSTM", hidden, hidden, weight_scale=1.0)
    inputs = make_inputs(layer, steps, 1, smooth=True)
    result = bench_model(layer, inputs, thresholds=(threshold,), rounds=10, ort_threads=2)
    out(f"one LSTM layer D=H={hidden}, T={steps}, batch 1 (weights beyond the L2 caches):")
    out("\n".join("  " + line for line in format_rows(result["rows"]).splitlines()))
    return result["rows"]
