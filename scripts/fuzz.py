"""Fuzz memotvm: seeded mutations of ONNX models, inputs, memo configurations and
command lines (tests/fuzz/fuzzer.py says what each outcome means).

    python scripts/fuzz.py --cases 500 --seed 7 [--kind model|inputs|config|cli] [--verbose]

Prints the count of each outcome and every failure (with its case number: rerun one
with --start N --cases 1); exits 1 if any case failed.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz"))
from fuzzer import FAILURES, KINDS, run_campaign  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case number")
    parser.add_argument("--kind", choices=KINDS, help="only cases of this kind")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a case may take")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args(argv)
    began = time.time()

    def progress(index, kind, outcome, detail):
        if args.verbose or outcome in FAILURES:
            print(f"case {index} ({kind}): {outcome} {detail}", flush=True)

    result = run_campaign(args.seed, args.cases, args.kind, args.timeout, args.start, progress)
    counts = result["counts"]
    print(f"seed {args.seed}, cases {args.start}..{args.start + args.cases - 1}, "
          f"{time.time() - began:.0f} s")
    for outcome in sorted(counts, key=lambda o: (o in FAILURES, o)):
        print(f"  {outcome:<12} {counts[outcome]}")
    for index, kind, outcome, detail in result["failures"]:
        print(f"FAILED case {index} ({kind}): {outcome}: {detail}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
