"""memotvm as an ONNX backend (``onnx.backend.base.Backend``), so that the onnx package's
own backend test runner, and any tool written against that interface, can drive it::

    import onnx.backend.test
    from memotvm.backend import MemoTVMBackend

    tests = onnx.backend.test.BackendTest(MemoTVMBackend, __name__)
    tests.include(r"^test_(lstm|gru|rnn)_.*_cpu$")
    globals().update(tests.test_cases)

or directly: ``rep = memotvm.backend.prepare(model); outputs = rep.run([x])``.  Keyword
arguments of ``prepare`` go to :func:`memotvm.compile` (``memo=0.3``, ``target=...``).
"""

from __future__ import annotations

import onnx.backend.base

from .api import compile as compile_model


class MemoTVMRep(onnx.backend.base.BackendRep):
    """A compiled model behind the ONNX backend interface."""

    def __init__(self, compiled):
        self.compiled = compiled

    def run(self, inputs, **kwargs):
        """Run on ``inputs``: a dict by input name, or a sequence in input order."""
        if isinstance(inputs, dict):
            feeds = inputs
        else:
            feeds = dict(zip(self.compiled.input_names, inputs))
        return tuple(self.compiled.run(feeds))


class MemoTVMBackend(onnx.backend.base.Backend):
    """Compiles with :func:`memotvm.compile` for the CPU."""

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return MemoTVMRep(compile_model(model, **kwargs))

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device):
        return device == "CPU"


prepare = MemoTVMBackend.prepare
run_model = MemoTVMBackend.run_model
supports_device = MemoTVMBackend.supports_device
