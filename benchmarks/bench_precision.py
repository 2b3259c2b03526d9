"""Precision and memoization calibrated together on the bundled zoo, timed against
onnxruntime and OpenVINO.

    python benchmarks/bench_precision.py [--max-loss 1%] [--rounds 10] [--json bench_precision.json]

For each zoo model: ``calibrate`` with the precisions fp32, bf16, bf16-act and int8 and the
predictors bnn, lowrank:8 and delta, for the time objective (the fastest configuration
within the loss bound, confirmed on the held-out split); then memotvm unmodified, memotvm
with the committed memoization configuration (fp32), memotvm with the calibrated
combination, onnxruntime at its defaults and OpenVINO at its default precision and at
f32, each in a process of its own, taking turns (:mod:`memotvm.timing`), on the test split.
"""

import argparse
import json
import os
import sys

from memotvm.bench import bench_model, format_machine, format_rows
from memotvm.calibrate import calibrate, parse_loss
from memotvm.demo import MODELS, load_split
from memotvm.passes import MemoConfig


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-loss", default="1%")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: all)")
    parser.add_argument("--json", default="bench_precision.json")
    args = parser.parse_args(argv)
    with open(os.path.join(MODELS, "zoo.json")) as f:
        zoo = json.load(f)
    names = [n for n in args.models.split(",") if n] or sorted(zoo)
    results = []
    for name in names:
        info, path = zoo[name], os.path.join(MODELS, f"{name}.onnx")
        cal_in, cal_y = load_split(name, "_calib")
        test_in, test_y = load_split(name)
        result = calibrate(path, cal_in, cal_y, info["metric"], test_in, test_y,
                           max_loss=parse_loss(args.max_loss), output=info["output"],
                           predictors=("bnn", "lowrank:8", "delta"),
                           precisions=("fp32", "bf16", "bf16-act", "int8"), objective="time", progress=False)
        print(f"\n{name}: {result.format()}", flush=True)
        committed = MemoConfig.load(os.path.join(MODELS, f"{name}_memo.json"))
        res = bench_model(path, test_in, thresholds=(), rounds=args.rounds, openvino=True,
                          extra_variants={"memo (committed)": (committed, None),
                                          "calibrated": (result.config, result.precision)})
        print(format_rows(res["rows"]), flush=True)
        print(format_machine(res), flush=True)
        results.append({"model": name, "calibration": result.to_dict(), **res})
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
