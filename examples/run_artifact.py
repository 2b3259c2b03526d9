"""Run a memotvm artifact with the TVM runtime and numpy alone (no memotvm, no onnx).

    python run_artifact.py model.so inputs.npz      # prints each output and the reuse

``model.so`` and ``model.so.json`` come from ``memotvm compile MODEL -o model.so`` (or
``model.export("model.so")``); the JSON lists the function's arguments and results.
"""
import json
import os
import sys

import numpy as np
import tvm
from tvm import relax

library, inputs = sys.argv[1], np.load(sys.argv[2])
meta = json.load(open(library + ".json"))
if meta["threads"]:  # the thread count it was compiled with (else TVM's own default)
    n, cpus = meta["threads"], sorted(os.sched_getaffinity(0))  # -3: share the listed CPUs
    pool = [str(cpus[i % len(cpus)]) for i in range(max(n, len(cpus)))]
    tvm.get_global_func("runtime.config_threadpool")(-3, n, pool)
main = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())["main"]
args = [inputs[i["name"]].astype(i["dtype"]) for i in meta["inputs"]]
if meta["tunable"]:  # the compiled thresholds, one tensor per recurrent node
    args += [np.array(lp["thresholds"], "float64") for lp in meta["loops"]]
if meta["memo"]:  # empty memo tables: this call continues no earlier one
    args += [np.zeros([lp["directions"], 1, lp["memo_table"]["shape"][2]]) for lp in meta["loops"]]
results = main(*[tvm.runtime.tensor(np.require(a, requirements="C")) for a in args])
results = [r.numpy() for r in results] if hasattr(results, "__len__") and not hasattr(results, "numpy") \
    else [results.numpy()]
for out, value in zip(meta["outputs"], results):
    print(out["name"], value.shape, value.ravel()[:4])
counts = results[len(meta["outputs"]):len(meta["outputs"]) + 2 * len(meta["loops"]):2]
computed, reused = sum(c[..., 0].sum() for c in counts), sum(c[..., 1].sum() for c in counts)
print(f"reuse: {reused / max(computed + reused, 1):.1%} of {computed + reused} neuron evaluations")
