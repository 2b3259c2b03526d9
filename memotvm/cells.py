"""The gate math of ONNX LSTM, GRU and RNN, written once.

Every function here takes a *math backend* ``m`` as its first argument and works on
whatever values that backend understands: numpy arrays (:data:`NUMPY`, used by the
reference and the tests) or TIR expressions (``memotvm.kernels.TirMath``, used
by the generated kernels).  The kernels, the numpy reference and the tests therefore
evaluate literally the same formulas; only the dot products differ, and those are what
memoization is about.

Naming follows the ONNX operator documents: LSTM gates are ``i, o, f, c`` (the row order
of W and R), GRU gates ``z, r, h``, RNN has one gate ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows of W/R per hidden unit and the names of those gate blocks, in ONNX order.
GATES = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("i",)}
# Default activations per direction: LSTM (f, g, h), GRU (f, g), RNN (f).
DEFAULT_ACTIVATIONS = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
    "RNN": ("Tanh",),
}


@dataclass(frozen=True)
class Activation:
    """One activation of the ONNX recurrent-op list with its resolved alpha and beta."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    def __call__(self, m, x):
        return _ACTIVATION_FORMULAS[self.name](m, x, self.alpha, self.beta)


# name -> (uses alpha, uses beta, default alpha, default beta).  Defaults are those of
# the ONNX operators of the same name, as the recurrent-op spec says; alphas and betas
# in the attribute lists are consumed only by activations that use them (this is also
# how onnxruntime reads them).
ACTIVATION_PARAMS = {
    "Relu": (False, False, 0.0, 0.0),
    "Tanh": (False, False, 0.0, 0.0),
    "Sigmoid": (False, False, 0.0, 0.0),
    "Affine": (True, True, 1.0, 0.0),
    "LeakyRelu": (True, False, 0.01, 0.0),
    "ThresholdedRelu": (True, False, 1.0, 0.0),
    "ScaledTanh": (True, True, 1.0, 1.0),
    "HardSigmoid": (True, True, 0.2, 0.5),
    "Elu": (True, False, 1.0, 0.0),
    "Softsign": (False, False, 0.0, 0.0),
    "Softplus": (False, False, 0.0, 0.0),
}

_ACTIVATION_FORMULAS = {
    "Relu": lambda m, x, a, b: m.maximum(x, m.const(0.0)),
    "Tanh": lambda m, x, a, b: m.tanh(x),
    "Sigmoid": lambda m, x, a, b: m.sigmoid(x),
    "Affine": lambda m, x, a, b: m.const(a) * x + m.const(b),
    "LeakyRelu": lambda m, x, a, b: m.where(x >= m.const(0.0), x, m.const(a) * x),
    "ThresholdedRelu": lambda m, x, a, b: m.where(x > m.const(a), x, m.const(0.0)),
    "ScaledTanh": lambda m, x, a, b: m.const(a) * m.tanh(m.const(b) * x),
    "HardSigmoid": lambda m, x, a, b: m.minimum(
        m.maximum(m.const(a) * x + m.const(b), m.const(0.0)), m.const(1.0)
    ),
    "Elu": lambda m, x, a, b: m.where(
        x >= m.const(0.0), x, m.const(a) * (m.exp(x) - m.const(1.0))
    ),
    "Softsign": lambda m, x, a, b: x / (m.const(1.0) + m.abs(x)),
    # log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|).
    "Softplus": lambda m, x, a, b: m.maximum(x, m.const(0.0)) + m.log1p(m.exp(-m.abs(x))),
}


def clip(m, x, bound):
    """The ``clip`` attribute: bound the input of every activation, if set."""
    if bound is None:
        return x
    return m.minimum(m.maximum(x, m.const(-bound)), m.const(bound))


def lstm_cell(m, acts, pre, c_prev, peep, bound, input_forget):
    """One LSTM update from the gates' summed dot products.

    ``pre`` maps gate name to ``a + b`` (both biases included), ``peep`` maps ``i, o, f``
    to the peephole weights (or is None).  Returns ``(h, c)``.
    """
    f, g, h = acts
    pi = pre["i"] + peep["i"] * c_prev if peep else pre["i"]
    i_t = m.bind(f(m, clip(m, pi, bound)))
    if input_forget:
        f_t = m.const(1.0) - i_t
    else:
        pf = pre["f"] + peep["f"] * c_prev if peep else pre["f"]
        f_t = f(m, clip(m, pf, bound))
    c_hat = g(m, clip(m, pre["c"], bound))
    c_t = m.bind(f_t * c_prev + i_t * c_hat)
    po = pre["o"] + peep["o"] * c_t if peep else pre["o"]
    o_t = f(m, clip(m, po, bound))
    return o_t * h(m, c_t), c_t


def gru_reset(m, acts, pre_r, bound):
    """The GRU reset gate r_t from its summed dot products."""
    return acts[0](m, clip(m, pre_r, bound))


def gru_cell(m, acts, pre_z, a_h, b_h, r_t, h_prev, bound, linear_before_reset):
    """One GRU update.

    ``a_h`` is the candidate's input part (W_h x + Wb_h).  ``b_h`` is its recurrent part:
    R_h (r (.) h) + Rb_h when ``linear_before_reset`` is 0, R_h h + Rb_h when it is 1
    (then the reset gate scales it here).
    """
    f, g = acts
    z_t = m.bind(f(m, clip(m, pre_z, bound)))
    cand = a_h + (r_t * b_h if linear_before_reset else b_h)
    h_hat = g(m, clip(m, cand, bound))
    return (m.const(1.0) - z_t) * h_hat + z_t * h_prev


def rnn_cell(m, acts, pre_i, bound):
    """One simple-RNN update."""
    return acts[0](m, clip(m, pre_i, bound))


class NumpyMath:
    """The math backend over numpy arrays (element-wise, any shape)."""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)

    def const(self, v):
        return self.dtype.type(v)

    def bind(self, x):
        return x

    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)
    where = staticmethod(np.where)
    tanh = staticmethod(np.tanh)
    exp = staticmethod(np.exp)
    abs = staticmethod(np.abs)
    log1p = staticmethod(np.log1p)

    def sigmoid(self, x):
        # Split by sign so that exp never overflows.
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


NUMPY = NumpyMath()
