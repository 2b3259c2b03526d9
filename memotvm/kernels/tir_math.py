"""TIR math for the gate formulas of :mod:`memotvm.cells`."""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T


class TirMath:
    """The :mod:`memotvm.cells` math backend that emits TIR expressions.

    In float32, exp, sigmoid and tanh are written out as arithmetic (Cephes' expf:
    range reduction and a degree-6 polynomial, within 2 ulp) so that the cell-update
    loops vectorize: LLVM's exp intrinsic becomes one libm call per element, which made
    the cell update the largest cost of small layers at large batches.  sigmoid and tanh
    keep the formulas TVM's own lowering uses (1 / (1 + e^-x); (1 - e) / (1 + e) with
    e = e^(-2|x|), sign restored).  float64 keeps TVM's intrinsics.
    """

    def __init__(self, dtype: str):
        self.dtype = dtype

    def const(self, v):
        return tirx.const(float(v), self.dtype)

    def bind(self, x):
        return T.bind(x)

    # LLVM's maximum/minimum (IEEE 754-2019) return a NaN operand, as numpy and
    # onnxruntime do; tirx.max/min become maxnum/minnum, which return the other operand
    # and so turn a NaN pre-activation into a bound.  As one opaque call per element
    # they also leave TVM's simplifier nothing to expand (NaN-keeping selects did, and
    # made a clipped LSTM compile ten times slower).
    def maximum(self, x, c):
        return tirx.call_llvm_pure_intrin(self.dtype, "llvm.maximum", x, c)

    def minimum(self, x, c):
        return tirx.call_llvm_pure_intrin(self.dtype, "llvm.minimum", x, c)

    where = staticmethod(tirx.Select)
    abs = staticmethod(tirx.abs)
    log1p = staticmethod(tirx.log1p)

    def exp(self, x):
        if self.dtype != "float32":
            return tirx.exp(x)
        c = self.const
        x = self.bind(x)
        p, n = self.exp_parts(tirx.min(tirx.max(x, c(-87.0)), c(88.0)))
        # n lies in [-126, 127] after the clamp: 2^n is a normal float.  The clamp
        # would make a NaN finite: it is given back as it came.
        return tirx.Select(self.isnan(x), x, p * self.power_of_two(n))

    def isnan(self, x):
        """Whether x (of this backend's type) is a NaN, from its bits: TVM's simplifier
        folds x != x to false, and its vectorizer scalarizes tirx.isnan (a call) and
        loses the bindings around it; integer operations vectorize."""
        bits, ints = (64, "int64") if self.dtype == "float64" else (32, "int32")
        magnitude = tirx.reinterpret(ints, x) & tirx.const((1 << (bits - 1)) - 1, ints)
        infinity = 0x7FF0000000000000 if bits == 64 else 0x7F800000
        return magnitude > tirx.const(infinity, ints)

    def exp_parts(self, x):
        """exp(x) = p * 2^n (float32, Cephes' expf: n = round(x / ln 2), p the
        polynomial of the rest); x must lie within [-150 ln 2, 128 ln 2]."""
        c = self.const
        x = self.bind(x)
        n = self.bind(tirx.floor(x * c(1.44269504088896341) + c(0.5)))
        r = self.bind(x - n * c(0.693359375) - n * c(-2.12194440e-4))
        p = c(1.9875691500e-4)
        for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                     5.0000001201e-1):
            p = p * r + c(coef)
        return p * r * r + r + c(1.0), n

    @staticmethod
    def power_of_two(n):
        """2^n from its exponent bits, for an integral float n in [-126, 127]."""
        bits = (tirx.Cast("int32", n) + tirx.const(127, "int32")) << tirx.const(23, "int32")
        return tirx.reinterpret("float32", bits)

    def sigmoid(self, x):
        if self.dtype != "float32":
            return tirx.sigmoid(x)
        one = self.const(1.0)
        return one / (one + self.exp(-x))

    def tanh(self, x):
        if self.dtype != "float32":
            return tirx.tanh(x)
        one = self.const(1.0)
        e = self.bind(self.exp(self.const(-2.0) * tirx.abs(x)))
        t = (one - e) / (one + e)
        return tirx.Select(x >= self.const(0.0), t, -t)

