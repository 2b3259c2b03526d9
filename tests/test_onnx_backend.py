"""The onnx package's own backend node tests for LSTM, GRU and RNN, and for the operators
memotvm converts or lowers itself, run through memotvm."""

import onnx.backend.base
import onnx.backend.test

import memotvm


class MemoTVMRep(onnx.backend.base.BackendRep):
    def __init__(self, compiled):
        self.compiled = compiled

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = inputs
        else:
            feeds = dict(zip(self.compiled.input_names, inputs))
        return tuple(self.compiled.run(feeds))


class MemoTVMBackend(onnx.backend.base.Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return MemoTVMRep(memotvm.compile(model))

    @classmethod
    def supports_device(cls, device):
        return device == "CPU"


backend_test = onnx.backend.test.BackendTest(MemoTVMBackend, __name__)
backend_test.include(r"^test_(lstm|gru|simple_rnn|rnn)_.*_cpu$")
# Operators memotvm converts or lowers itself around the recurrent layers: Slice and
# Expand (frontend/converters.py), products by constants and softmax (targets/host_*).
backend_test.include(r"^test_(slice|expand|matmul|gemm|softmax|logsoftmax)_.*_cpu$")
globals().update(backend_test.test_cases)
