"""The predictor interface: a cheap guess of how much a neuron's pre-activation changed.

See :mod:`memotvm.predictors` for how predictors plug into the kernels, the pass and the
numpy reference.
"""

from __future__ import annotations

import numpy as np


def words(n: int) -> int:
    """64-bit words needed for the sign bits of an n-vector."""
    return (n + 63) // 64


class Predictor:
    """Base class; see the module docstring."""

    name = ""
    floor = 1e-6  # e of the spec: 1 for integer predictors
    q_dtype = "float32"
    fresh_input = False  # True: only the recurrent part is memoized
    # "memo" (neuron-level memoization) or "delta" (delta execution: counts are
    # multiply-adds, not neuron evaluations)
    scheme = "memo"
    # True: the kernel keeps the packed sign bits of x, h (and r (.) h) for it
    # (``kb.sign_bits(ref)``), each packed once instead of by every task.
    reads_signs = False
    # Neurons whose values group_values computes together (None: value only).
    group = None

    def weight_data(self, loop, W, R) -> dict:
        return {}

    def declare(self, kb) -> None:
        """Declare the kernel parameters holding weight_data, in its order."""

    def prepare(self, kb, d, b, s, x_ref, u_ref):
        raise NotImplementedError

    def value(self, kb, d, j, state):
        raise NotImplementedError

    def group_values(self, kb, d, j0, state, out):
        """Store the values of neurons j0 .. j0 + group - 1 (j0 a multiple of group)
        into the buffer ``out``."""
        raise NotImplementedError

    def reference(self, data, d, rows, x, u, a) -> np.ndarray:
        raise NotImplementedError

    def reference_data(self, W, R) -> dict:
        return {}

    def data_bytes(self, loop) -> int:
        """Bytes of weight_data (kept with the compiled model)."""
        return 0

    def skipped_share(self, loop) -> float:
        """Share of a neuron's multiply-adds a reuse skips."""
        if self.fresh_input:
            return loop.hidden_size / (loop.input_size + loop.hidden_size)
        return 1.0

    def extra_cost(self, loop) -> int:
        """Multiply-adds (or equivalent word operations) per step and direction."""
        return 0
