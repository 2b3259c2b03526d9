"""The layers around the recurrent ones: onnxruntime vs memotvm, one operator per model.

    python benchmarks/bench_host_ops.py [--rounds 10] [--json bench_host_ops.json]

Linear heads over every step (MatMul by a constant weight, as torch exports a Linear on
[T, N, K] inputs; Gemm as it exports one on [N, K]) and the output activations after
them (sigmoid, tanh, softmax, log_softmax), on (steps x batch) rows.  Each side runs in
a process of its own, taking turns (medians); memotvm's times are of ``model.run``, so
they include what every call pays: the input checks and copies in and out.  Conv stands for the convolutions and poolings
that TVM lowers to loop nests with several reduction axes.
"""

import argparse
import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from memotvm.bench import time_variants

# (operator, steps, batch, K, N): K only for the products and Conv (its input channels;
# N its output channels; input [batch, K, steps]).
CASES = [
    ("MatMul", 150, 16, 256, 97),     # the char LM's head
    ("MatMul", 100, 8, 512, 4096),    # a word-level vocabulary
    ("Gemm", 1, 360, 256, 10),        # a classifier on the last step
    ("Sigmoid", 150, 16, None, 97),
    ("Tanh", 150, 16, None, 97),
    ("Softmax", 150, 16, None, 97),
    ("Softmax", 100, 8, None, 4096),
    ("LogSoftmax", 100, 8, None, 4096),
    ("Conv", 400, 8, 40, 64),         # a 1-D convolutional front end (kernel width 5)
]


def _model(op, k, n):
    rng = np.random.default_rng(0)
    inits = []
    if op == "Conv":
        inits = [numpy_helper.from_array((rng.standard_normal((n, k, 5)) / 14).astype(np.float32), "w")]
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 2])
        dims, out = ["N", k, "L"], ["N", n, "L"]
    elif op == "Gemm":
        inits = [numpy_helper.from_array((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
        dims, out = ["N", k], ["N", n]
    elif op == "MatMul":
        inits = [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        dims, out = ["T", "N", k], ["T", "N", n]
    else:
        extra = {"axis": -1} if "Softmax" in op else {}
        node = helper.make_node(op, ["x"], ["y"], **extra)
        dims = out = ["T", "N", n]
    graph = helper.make_graph([node], op.lower(), [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", default="bench_host_ops.json")
    args = parser.parse_args(argv)
    results = []
    print(f"{'operator':<11} {'shape':<22} {'memotvm ms':>10} {'onnxruntime ms':>14} {'vs onnxruntime':>14}")
    for op, steps, batch, k, n in CASES:
        model = _model(op, k, n)
        width = k if k is not None else n
        shape = {"Gemm": (batch, width), "Conv": (batch, width, steps)}.get(op, (steps, batch, width))
        feeds = {"x": (np.random.default_rng(1).standard_normal(shape) * 3).astype(np.float32)}
        measured = time_variants(model, [feeds], {"memotvm": None}, rounds=args.rounds)
        times = {name: t.median for name, t in measured["timings"].items()}
        label = f"{'x'.join(map(str, shape))}" + (f" -> {n}" if k is not None else "")
        ratio = times["onnxruntime"] / times["memotvm"]
        print(f"{op:<11} {label:<22} {times['memotvm'] * 1e3:>10.3f} {times['onnxruntime'] * 1e3:>14.3f} "
              f"{ratio:>13.2f}x", flush=True)
        results.append({"op": op, "input": list(shape), "n": n, "memotvm_s": times["memotvm"],
                        "onnxruntime_s": times["onnxruntime"], "speedup_vs_onnxruntime": ratio})
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
