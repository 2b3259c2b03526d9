"""``memotvm demo``: the whole story on a bundled zoo model in under two minutes.

Compile the unmodified and the memoized model, load the calibrated configuration (or
calibrate, if the model has none), validate on the held-out split with its labels, time
both against onnxruntime on the CPU, cost both on the modelled accelerator, draw the
reuse / loss curves, and print one short report.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from .api import compile as compile_model
from .bench import has_onnxruntime, time_variants
from .calibrate import calibrate
from .passes import MemoConfig
from .sweep import layers_text, plot, sweep
from .validate import validate

MODELS = os.path.join(os.path.dirname(__file__), "models")
DEFAULT_MODEL = "digits_bigru"


def zoo() -> dict:
    with open(os.path.join(MODELS, "zoo.json")) as f:
        return json.load(f)


def load_split(name, split=""):
    """(inputs, labels) of a zoo model's test split ("") or calibration split ("_calib")."""
    inputs = dict(np.load(os.path.join(MODELS, f"{name}{split}_inputs.npz")))
    labels = np.load(os.path.join(MODELS, f"{name}{split}_labels.npz"))["labels"]
    return inputs, labels


def calibrated_config(name, info, out=print, recalibrate=False) -> tuple[MemoConfig, str]:
    """The model's committed calibrated configuration, or a fresh calibration."""
    path = os.path.join(MODELS, f"{name}_memo.json")
    if os.path.exists(path) and not recalibrate:
        return MemoConfig.load(path), f"calibrated, loaded from {os.path.relpath(path)}"

    out("calibrating (bnn, lowrank:8, delta) on the calibration split ...")
    cal_in, cal_y = load_split(name, "_calib")
    test_in, test_y = load_split(name)
    result = calibrate(os.path.join(MODELS, name + ".onnx"), cal_in, cal_y, info["metric"],
                       test_in, test_y, predictors=("bnn", "lowrank:8", "delta"),
                       output=info["output"], progress=False)
    return result.config, "calibrated now"


def run_demo(model_name: str = DEFAULT_MODEL, plot_path="memotvm_demo.png", out=print,
             recalibrate=False) -> dict:
    info = zoo()[model_name]
    path = os.path.join(MODELS, model_name + ".onnx")
    feeds, labels = load_split(model_name)
    metric, output = info["metric"], info["output"]
    t0 = time.perf_counter()
    plain = compile_model(path)
    compile_s = time.perf_counter() - t0
    out(f"== memotvm demo: {model_name}, {info['task']} ==")
    out("recurrent nodes: " + ", ".join(
        f"{l.op} '{l.name}' (D={l.input_size}, H={l.hidden_size}, {l.direction})" for l in plain.loops))
    config, origin = calibrated_config(model_name, info, out, recalibrate)
    report = validate(path, feeds, config, labels=labels, metric=metric, output=output,
                      baseline=plain)
    measured = time_variants(path, [feeds], {"unmodified": None, "memoized": config}, rounds=10)
    times = {name: t.median for name, t in measured["timings"].items()}
    ort = has_onnxruntime()

    accel_plain = compile_model(path, target="accel")
    accel_memo = compile_model(path, target="accel", memo=config)
    accel_plain.run(feeds)
    accel_memo.run(feeds)
    base_cost, memo_cost = accel_plain.last_cost, accel_memo.last_cost

    rows = sweep(path, feeds, [0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5], ("bnn", "delta", "oracle"),
                 labels=labels, metric=metric, output=output, progress=False)
    m = report.metric
    if plot_path:
        plot(rows, plot_path, title=f"{model_name} ({layers_text(plain.loops)}; {info['task']}): computations "
             f"avoided and {metric} loss, held-out split",
             calibrated={"loss": m["loss"], "computations_avoided": report.stats.computations_avoided,
                         "predictor": config.predictor})

    thresholds = config.thresholds_text()
    batch = next(iter(feeds.values())).shape
    lines = [
        f"configuration: {config.predictor} ({origin}): {thresholds}",
        f"{metric} on the held-out split (inputs {batch}): unmodified {m['unmodified']:.4f}, "
        f"memoized {m['memoized']:.4f}, loss {m['loss']:.2%} "
        f"({'within' if m['loss'] <= 0.01 else 'OVER'} the 1 % bound)",
        f"computations avoided: {report.stats.computations_avoided:.1%} of the recurrent "
        f"layers' multiply-adds",
        f"CPU (medians; each in its own process, taking turns): unmodified {times['unmodified'] * 1e3:.1f} ms, "
        f"memoized {times['memoized'] * 1e3:.1f} ms ({times['unmodified'] / times['memoized']:.2f}x)"
        + (f", onnxruntime {times['onnxruntime'] * 1e3:.1f} ms (memoized: "
           f"{times['onnxruntime'] / times['memoized']:.2f}x onnxruntime's speed)" if ort else ""),
        f"accelerator (epur, modelled): {base_cost.seconds * 1e3:.2f} ms -> "
        f"{memo_cost.seconds * 1e3:.2f} ms ({base_cost.cycles / memo_cost.cycles:.2f}x), energy "
        f"{base_cost.energy_total_pj / 1e6:.1f} -> {memo_cost.energy_total_pj / 1e6:.1f} uJ "
        f"({1 - memo_cost.energy_total_pj / base_cost.energy_total_pj:.1%} saved)",
        f"compile: {compile_s:.1f} s unmodified",
    ]
    if plot_path:
        lines.append(f"plot: {plot_path} (computations avoided and {metric} loss against the "
                     "threshold: bnn, delta, oracle)")
    out("\n".join(lines))
    if measured["warning"]:
        out("note: " + measured["warning"])
    if not ort:
        out("(onnxruntime not installed: pip install 'memotvm[bench]' to compare)")
    return {"report": report.to_dict(), "times": times, "sweep": rows,
            "accelerator": {"unmodified": base_cost.to_dict(), "memoized": memo_cost.to_dict()}}
