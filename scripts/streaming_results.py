"""Measure streaming on the VAD-shaped fixture: computations avoided and output error
per predictor, one call per chunk with and without a session (memo tables carried or
emptied at every call), and the time per call against onnxruntime.

    python scripts/streaming_results.py [--chunks 200] [--json results.json]

The recording is a synthetic one (a slow sine with a random walk, 576 samples per
chunk, sr fixed at 16000); the fixture's weights are random, so the numbers show what
carrying the tables changes, not a trained detector's accuracy.
"""

import argparse
import json
import os

import numpy as np

import memotvm
from memotvm.bench import bench_stream
from memotvm.stats import ReuseStats
from memotvm.streaming import StreamSpec, joined, split_stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAD = os.path.join(ROOT, "tests", "fixtures", "field", "vad_stream.onnx")
PREDICTORS = [("bnn", 0.3), ("lowrank:8", 0.3), ("delta", 0.05), ("oracle", 0.3)]


def recording(chunks, seed=0):
    rng = np.random.default_rng(seed)
    n = 576 * chunks
    audio = np.sin(np.arange(n) / 40.0) * 0.5 + np.cumsum(rng.normal(0, 0.01, n))
    return {"input": audio.astype(np.float32).reshape(chunks, 1, 576)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    feeds = recording(args.chunks)
    spec = StreamSpec()
    plain = memotvm.compile(VAD, fixed_inputs={"sr": 16000})
    calls = split_stream(plain, feeds, spec)
    session = plain.session()
    reference = joined([session.run(c) for c in calls])
    rows = []
    for predictor, threshold in PREDICTORS:
        model = memotvm.compile(VAD, fixed_inputs={"sr": 16000},
                                memo={"predictor": predictor, "threshold": threshold})
        carried = model.session()
        with_tables = joined([carried.run(c) for c in calls])
        # Without a session's tables: the state fed back by hand, tables empty each call.
        state, fresh_out, fresh_stats = np.zeros((2, 1, 64), np.float32), [], ReuseStats()
        for call in calls:
            out = model.run({**call, "state": state})
            state = out[1]
            fresh_out.append(out)
            fresh_stats.add(model.last_stats)
        fresh = joined(fresh_out)
        rows.append({
            "predictor": predictor, "threshold": threshold,
            "avoided_session": carried.stats.computations_avoided,
            "avoided_without_session": fresh_stats.computations_avoided,
            "max_abs_error_session": float(np.abs(with_tables[0] - reference[0]).max()),
            "max_abs_error_without_session": float(np.abs(fresh[0] - reference[0]).max()),
        })
        print(rows[-1])
    timing = bench_stream(_vad_at_16k(), feeds, spec, thresholds=(0.3,), rounds=args.rounds)
    for row in timing["rows"]:
        print(f"{row['name']:<12} {row['us_per_call']:8.1f} us/call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "timing": timing}, f, indent=2)


def _vad_at_16k():
    """The VAD with sr bound (bench_stream takes a model, not compile options)."""
    from memotvm.frontend import load_model
    from memotvm.frontend.folding import bind_inputs

    return bind_inputs(load_model(VAD), {"sr": 16000})


if __name__ == "__main__":
    main()
