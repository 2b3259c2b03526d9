"""Whole models against onnxruntime: the bundled zoo and the field fixtures.

    python benchmarks/bench_models.py [--rounds 10] [--chunks 100] [--json bench_models.json]

Every model runs unmodified and memoized (the zoo with its committed calibrated
configuration, the fixtures, whose weights are random, with BNN at threshold 0.3), and
onnxruntime at its default settings, each in a process of its own, taking turns
(:mod:`memotvm.timing`).  Whole-sequence models are timed per call on their test inputs;
the streaming fixtures one chunk per call in a session (memotvm) or with the state
outputs fed back (onnxruntime), the VAD with its sample rate fixed at compile time and
as a run-time input, each compiled with its batch symbolic and again with the chunk's
shapes static (``--shape``, as a stream is deployed).
"""

import argparse
import json
import os

import numpy as np

from memotvm.bench import bench_model, bench_stream, format_machine
from memotvm.frontend import load_model
from memotvm.frontend.folding import bind_inputs
from memotvm.passes import MemoConfig
from memotvm.streaming import StreamSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "memotvm", "models")
FIELD = os.path.join(ROOT, "tests", "fixtures", "field")
FIXTURE_MEMO = MemoConfig(threshold=0.3)


def zoo_cases():
    with open(os.path.join(MODELS, "zoo.json")) as f:
        names = sorted(json.load(f))
    for name in names:
        feeds = dict(np.load(os.path.join(MODELS, f"{name}_inputs.npz")))
        config = MemoConfig.load(os.path.join(MODELS, f"{name}_memo.json"))
        yield name, os.path.join(MODELS, f"{name}.onnx"), feeds, config


def field_cases():
    data = np.load(os.path.join(FIELD, "inputs.npz"))
    for name in ("crnn_recognizer", "gru_denoiser", "quantized_lstm", "vad_stream", "greedy_decoder",
                 "seq2seq_attention"):
        feeds = {k.split("/", 1)[1]: data[k] for k in data if k.startswith(name + "/")}
        yield name, os.path.join(FIELD, f"{name}.onnx"), feeds, FIXTURE_MEMO


def stream_cases(chunks):
    rng = np.random.default_rng(0)
    n = 576 * chunks
    audio = np.sin(np.arange(n) / 40.0) * 0.5 + np.cumsum(rng.normal(0, 0.01, n))
    recording = {"input": audio.astype(np.float32).reshape(chunks, 1, 576)}
    vad = load_model(os.path.join(FIELD, "vad_stream.onnx"))
    vad_shapes = {"input": [1, 576], "state": [2, 1, 64]}
    spec = rng.standard_normal((1, 65, chunks)).astype(np.float32)
    cases = [
        ("vad_stream, sr fixed", bind_inputs(vad, {"sr": 16000}), recording, StreamSpec(), vad_shapes),
        ("vad_stream, sr at run time", vad, {**recording, "sr": np.array(16000, np.int64)},
         StreamSpec(), vad_shapes),
        ("gru_denoiser", os.path.join(FIELD, "gru_denoiser.onnx"), {"spec": spec},
         StreamSpec(time_axes={"spec": 2}), {"spec": [1, 65, 1], "h": [1, 1, 48]}),
    ]
    for name, model, feeds, spec_, shapes in cases:
        yield name, model, feeds, spec_, {}
        # As a stream is deployed: compiled for its chunk's shapes (--shape).
        yield name + ", static shapes", model, feeds, spec_, {"shapes": shapes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--chunks", type=int, default=100, help="calls per stream")
    parser.add_argument("--json", default="bench_models.json")
    parser.add_argument("--openvino", action="store_true", help="also time OpenVINO (default precision and f32)")
    parser.add_argument("--precision", default="", help="also time memotvm unmodified with its "
                        "weights at these precisions: bf16,bf16-act,int8 (docs/precision.md)")
    parser.add_argument("--fields-only", action="store_true", help="only the field fixtures and streams")
    args = parser.parse_args(argv)
    precisions = [p for p in args.precision.split(",") if p.strip()]
    results = []
    print(f"{'model':<28} {'memotvm ms':>10} {'memoized ms':>11} {'onnxruntime ms':>14} "
          f"{'unmod vs ort':>12} {'memo vs ort':>11}")
    for name, path, feeds, config in [*([] if args.fields_only else zoo_cases()), *field_cases()]:
        res = bench_model(path, feeds, thresholds=(), config=config, rounds=args.rounds,
                          openvino=args.openvino, precisions=precisions)
        results.append({"model": name, "mode": "whole", **res})
        _print(name, res["rows"], "ms", 1.0)
        for note in res["notes"]:
            print("  note:", note)
        if res["warning"]:
            print("  warning:", res["warning"])
    for name, model, feeds, spec, options in stream_cases(args.chunks):
        res = bench_stream(model, feeds, spec, thresholds=(), config=FIXTURE_MEMO, rounds=args.rounds,
                           openvino=args.openvino, precisions=precisions, **options)
        results.append({"model": name, "mode": "stream", **res})
        _print(name + " (per call)", res["rows"], "us_per_call", 1e-3)
        for note in res["notes"]:
            print("  note:", note)
        if res["warning"]:
            print("  warning:", res["warning"])
    print(format_machine(results[-1]))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"wrote {args.json}")


def _print(name, rows, key, scale):
    by = {r["name"]: r for r in rows}
    plain, memo, ort = by["memotvm"], by["config"], by.get("onnxruntime")
    o = f"{ort[key] * scale:14.3f}" if ort else f"{'-':>14}"
    ratio = (lambda r: f"{r['speedup_vs_onnxruntime']:11.2f}x" if ort else f"{'-':>12}")
    print(f"{name:<28} {plain[key] * scale:10.3f} {memo[key] * scale:11.3f} {o} "
          f"{ratio(plain):>12} {ratio(memo):>11}", flush=True)
    others = [r for n, r in by.items() if n.startswith(("memotvm-", "openvino"))]
    if others:
        print(" " * 28 + "  ".join(f"{r['name']} {r[key] * scale:.3f}" for r in others), flush=True)


if __name__ == "__main__":
    main()
