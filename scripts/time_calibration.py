"""Calibrating for time against calibrating for computations, on every bundled model.

    python scripts/time_calibration.py [--rounds 10] [--json time_calibration.json]

For each zoo model: calibrate with ``objective="time"`` (bnn, lowrank:8 and delta; 1 %
loss bound, as the committed configurations were calibrated for computations avoided),
then time on the held-out batch the unmodified model, the committed
computations-calibrated configuration, the time-calibrated one and onnxruntime at its
defaults, each in its own process, taking turns (memotvm.timing).
"""

import argparse
import json
import os

import numpy as np

from memotvm.bench import time_variants
from memotvm.calibrate import calibrate
from memotvm.passes import MemoConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "memotvm", "models")


def split(name, which=""):
    inputs = dict(np.load(os.path.join(MODELS, f"{name}{which}_inputs.npz")))
    labels = np.load(os.path.join(MODELS, f"{name}{which}_labels.npz"))["labels"]
    return inputs, labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", default="time_calibration.json")
    args = parser.parse_args(argv)
    with open(os.path.join(MODELS, "zoo.json")) as f:
        zoo = json.load(f)
    results = []
    print("| model | computations-calibrated (avoided) | vs unmodified | vs onnxruntime | "
          "time-calibrated (avoided) | vs unmodified | vs onnxruntime |")
    print("|---|---|---|---|---|---|---|")
    for name, info in sorted(zoo.items()):
        path = os.path.join(MODELS, f"{name}.onnx")
        cal_in, cal_y = split(name, "_calib")
        test_in, test_y = split(name)
        result = calibrate(path, cal_in, cal_y, info["metric"], test_in, test_y,
                           predictors=("bnn", "lowrank:8", "delta"), output=info["output"],
                           objective="time", progress=False)
        computations = MemoConfig.load(os.path.join(MODELS, f"{name}_memo.json"))
        variants = {"memotvm": None, "computations": computations}
        if result.memoized:
            variants["time"] = result.config
        measured = time_variants(path, [test_in], variants, rounds=args.rounds)
        t = {k: v.median for k, v in measured["timings"].items()}
        avoided = {k: i.get("computations_avoided", 0.0) for k, i in measured["info"].items()}

        def cell(key):
            if key not in t:
                return "unmodified (memoization does not pay)", "1.00x", f"{t['onnxruntime'] / t['memotvm']:.2f}x"
            return (f"{t[key] * 1e3:.2f} ms ({avoided[key]:.1%})", f"{t['memotvm'] / t[key]:.2f}x",
                    f"{t['onnxruntime'] / t[key]:.2f}x")

        row = [name, *cell("computations"), *cell("time")]
        print("| " + " | ".join(row) + " |", flush=True)
        if measured["warning"]:
            print("  warning:", measured["warning"])
        results.append({"model": name, "calibration": result.to_dict(),
                        "times_ms": {k: v * 1e3 for k, v in t.items()}, "avoided": avoided,
                        "machine": measured["machine"], "warning": measured["warning"]})
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
