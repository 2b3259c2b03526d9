"""The layer benchmark of issue 4: onnxruntime vs memotvm unmodified vs memotvm memoized.

    python benchmarks/bench_layers.py [--quick] [--json results.json]

LSTM and GRU with D = H in {256, 512, 1024}, T in {100, 200}, batch 1 and 8, inputs with
realistic temporal smoothness; every variant and onnxruntime (at its defaults) runs in a
process of its own, taking turns (medians and quartiles; see memotvm.timing).
"""

import argparse
import json
import sys

from memotvm.bench import bench_model, format_machine, format_rows, memo_memory
from memotvm.frontend import from_onnx
from memotvm.testing import make_inputs, make_recurrent_model


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one size, T=100, batch 1")
    parser.add_argument("--json", default="bench_layers.json")
    parser.add_argument("--thresholds", default="0.1,0.3,0.5", help="'' for none")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batches", default="1,8", help="batch sizes to run")
    parser.add_argument("--sizes", default="256,512,1024", help="hidden sizes (D = H) to run")
    parser.add_argument("--steps", default="100,200", help="sequence lengths to run")
    parser.add_argument("--predictor", default="bnn", help="memo predictor (bnn, delta, lowrank:8, ...)")
    parser.add_argument("--openvino", action="store_true", help="also time OpenVINO (default precision and f32)")
    parser.add_argument("--precision", default="", help="also time memotvm with its recurrent weights "
                        "at these precisions: bf16,bf16-act,int8 (docs/precision.md)")
    parser.add_argument("--memo-precision", default="",
                        help="the memoized variants at this precision (bf16 or int8) instead of fp32")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    grid = [(op, h, t, b) for op in ("LSTM", "GRU") for h in _ints(args.sizes)
            for t in _ints(args.steps) for b in _ints(args.batches)]
    if args.quick:
        grid = [("LSTM", 256, 100, 1), ("GRU", 256, 100, 1)]
    results = []
    for op, H, T, B in grid:
        model = make_recurrent_model(op, H, H, weight_scale=1.0)
        feeds = make_inputs(model, T, B, smooth=True)
        config = None
        if args.memo_precision:  # every threshold's variant at this precision
            from memotvm.passes import MemoConfig
            from memotvm.precision import PrecisionConfig

            config = {f"memo@{t:g}-{args.memo_precision}": (MemoConfig(threshold=t, predictor=args.predictor),
                                                             PrecisionConfig(args.memo_precision))
                      for t in thresholds}
        res = bench_model(model, feeds, thresholds=() if config else thresholds,
                          predictor=args.predictor, rounds=args.rounds, openvino=args.openvino,
                          precisions=[p for p in args.precision.split(",") if p.strip()],
                          extra_variants=config)
        mem = memo_memory(from_onnx(model).loops, batch=B, predictor=args.predictor)
        print(f"\n{op} D=H={H} T={T} batch={B}", flush=True)
        print(format_rows(res["rows"]), flush=True)
        print(format_machine(res), flush=True)
        results.append({"op": op, "hidden": H, "steps": T, "batch": B, "predictor": args.predictor,
                        **res, "memory_bytes": mem})
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.json}")


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    sys.exit(main())
