"""The onnx package's own backend node tests for LSTM, GRU and RNN, and for the operators
memotvm converts or lowers itself, run through memotvm's ONNX backend
(:mod:`memotvm.backend`)."""

import numpy as np
import onnx.backend.test

import memotvm.backend
from memotvm.backend import MemoTVMBackend
from memotvm.testing import make_inputs, make_recurrent_model

backend_test = onnx.backend.test.BackendTest(MemoTVMBackend, __name__)
backend_test.include(r"^test_(lstm|gru|simple_rnn|rnn)_.*_cpu$")
# Operators memotvm converts or lowers itself around the recurrent layers: Slice and
# Expand (frontend/converters.py), products by constants and softmax (targets/host_*).
backend_test.include(r"^test_(slice|expand|matmul|gemm|softmax|logsoftmax)_.*_cpu$")
# Loop (frontend/loops.py), Range as its function body expands it (a Loop), and Scan
# from opset 9 on (frontend/scan.py).
backend_test.include(r"^test_(loop11|range_(float|int32)_type_\w+|scan9_\w+)_cpu$")
globals().update(backend_test.test_cases)


def test_module_level_functions_and_compile_options():
    """The module-level prepare/run_model of the backend interface, with compile options
    passed through (a memoized model at threshold 0 equals the unmodified one)."""
    model = make_recurrent_model("GRU", 5, 12)
    x = make_inputs(model, 6, 2)["X"]
    assert memotvm.backend.supports_device("CPU") and not memotvm.backend.supports_device("CUDA")
    plain = memotvm.backend.run_model(model, [x])
    rep = memotvm.backend.prepare(model, memo=0.0)
    memoized = rep.run({"X": x})
    assert rep.compiled.memo is not None
    for a, b in zip(plain, memoized):
        np.testing.assert_array_equal(a, b)
