"""Resident memory and TVM's function registry over many compiles and runs.

    python scripts/memory_check.py [--target cpu|accel] [--compiles 1000] [--runs 5000]

After 10 warm-up compiles, compiles and drops --compiles models of a small LSTM, then
runs one model --runs times, and prints how much resident memory (as the system reports
it, no trimming here) and the number of TVM's global functions grew.  docs/reliability.md
gives the bounds (10 MB per 1000 compiles, 0 functions, 1 MB per 5000 runs).
"""

import argparse
import gc
import os
import sys
import time

import tvm_ffi

import memotvm
from memotvm.testing import make_inputs, make_recurrent_model


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--memo", type=float, default=0.3, help="threshold (negative: none)")
    parser.add_argument("--compiles", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args(argv)
    model = make_recurrent_model("LSTM", 4, 8)
    feeds = make_inputs(model, 5, 2)
    memo = args.memo if args.memo >= 0 else None
    compile_ = lambda: memotvm.compile(model, target=args.target, memo=memo)
    for _ in range(10):
        compile_().run(feeds)
    gc.collect()
    start, functions, began = resident_mib(), len(tvm_ffi.registry.list_global_func_names()), time.time()
    for _ in range(args.compiles):
        compile_().run(feeds)
    gc.collect()
    grown = resident_mib() - start
    added = len(tvm_ffi.registry.list_global_func_names()) - functions
    print(f"{args.compiles} compiles ({args.target}, memo {memo}): resident +{grown:.2f} MiB, "
          f"registry +{added} functions, {time.time() - began:.0f} s")
    kept = compile_()
    kept.run(feeds)
    gc.collect()
    start = resident_mib()
    for _ in range(args.runs):
        kept.run(feeds)
    gc.collect()
    ran = resident_mib() - start
    print(f"{args.runs} runs: resident +{ran:.2f} MiB")
    ok = grown < max(10 * args.compiles / 1000, 2) and added == 0 and ran < 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
