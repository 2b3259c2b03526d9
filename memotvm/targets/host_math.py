"""Vectorizable exp, sigmoid, tanh, erf and softmax for the operators around the recurrent layers.

LLVM lowers a float32 ``exp`` (and TVM's sigmoid and tanh, which are built on it) to one
libm call per element, so the loops of an output activation or a softmax over a
vocabulary do not vectorize (a sigmoid or softmax over 100 x 8 x 4096 logits took
6.6-8.8 ms, 6-8x onnxruntime's time), and TVM's softmax reduces down columns of its
input, summing sequentially (10-20x onnxruntime's error over 4096 classes).
``VectorizableMath`` (float32 only; other dtypes keep TVM's legalization):

* erf and GELU (over erf) use polynomials fitted for float32 (within 3 ulp; see
  ``scripts/fit_erf.py``), as libm's erff would be one call per element too;
* exp, sigmoid and tanh use the formulas of the recurrent kernels
  (:class:`memotvm.kernels.TirMath`: Cephes' expf, within 2 ulp) as one
  expression each; unlike the kernels' gate activations, whose arguments saturate,
  ``exp`` here is a user-visible operator: it covers float32's whole range (inf above
  it, denormals and 0 below), and NaN stays NaN;
* softmax and log_softmax along the last axis become a row kernel
  (:func:`build_row_softmax`): one task per row, three vectorized passes; along another
  axis, the same formulas in TVM's loop nests;
* sums and means over consecutive axes (of 64 terms or more) add in float64 and round
  once (:func:`build_trailing_reduction`, :func:`build_block_reduction`), where TVM adds
  float32 terms in sequence.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, tirx
from tvm.script.ir_builder import tirx as T

from ..kernels import TirMath, i64
from ..kernels.tiling import vector_lanes
from ..passes._relax_util import add_kernel, call_on_rows, float32_rows, rewrite_functions
from .host_schedule import host_kernel


class _LetMath(TirMath):
    """TirMath producing one expression: values bound with ``Let`` instead of the
    IRBuilder's bindings (the vectorizer turns a Let into a vector value), and an
    ``exp`` over float32's whole range."""

    def __init__(self):
        super().__init__("float32")
        self.lets = []

    def bind(self, x):
        var = tirx.Var(f"t{len(self.lets)}", x.ty)
        self.lets.append((var, x))
        return var

    def exp(self, x):
        """p * 2^a * 2^b with a + b = n, both halves normal floats: the result
        overflows to inf above ln(FLT_MAX) and rounds once into the denormals below
        ln(FLT_MIN), where the kernels' clamp to [-87, 88] (enough for activations,
        whose arguments saturate) would not."""
        c = self.const
        p, n = self.exp_parts(tirx.min(tirx.max(x, c(-104.0)), c(88.8)))
        half = self.bind(tirx.floor(n * c(0.5)))
        return p * self.power_of_two(half) * self.power_of_two(n - half)

    def erf(self, x):
        """erf(x) within 3 ulp, as ``scripts/fit_erf.py`` fits and measures it: x + x *
        A(x^2) below 0.875, 1 - exp(-x^2) * B(t) up to 3.92 (t the position in that
        interval, in [-1, 1]), 1 above, with x's sign.  (LLVM lowers TVM's erf to one
        libm call per element: a quarter of a PP-OCRv6 detector's call, in its GELUs.)"""
        c = self.const
        ax = self.bind(tirx.abs(x))
        square = self.bind(ax * ax)
        near = ax + ax * _horner(c, _ERF_NEAR, square)
        t = (tirx.min(ax, c(_ERF_TOP)) - c(_ERF_MID)) * c(_ERF_INVERSE_HALF)
        far = c(1.0) - self.exp(-square) * _horner(c, _ERF_FAR, t)
        value = tirx.Select(ax < c(_ERF_SPLIT), near, tirx.Select(ax < c(_ERF_TOP), far, c(1.0)))
        return tirx.copysign(value, x)

    def gelu(self, x):
        """x * (1 + erf(x / sqrt(2))) / 2, ONNX's Gelu."""
        c = self.const
        return x * c(0.5) * (c(1.0) + self.erf(x * c(0.7071067811865476)))

    def gelu_tanh(self, x):
        """x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))) / 2, ONNX's Gelu with
        approximate="tanh"."""
        c = self.const
        return x * c(0.5) * (c(1.0) + self.tanh(c(0.7978845608028654) * (x + c(0.044715) * x * x * x)))

    def formula(self, name, x):
        """``name`` (exp, sigmoid, tanh, erf, gelu or gelu_tanh) of x as one expression;
        NaN stays NaN.
        (One instance per expression: its bindings are this expression's.)"""
        arg = self.bind(x)
        value = tirx.Select(tirx.isnan(arg), arg, getattr(self, name)(arg))
        for var, bound in reversed(self.lets):
            value = tirx.Let(var, bound, value)
        return value


# erf's polynomials (scripts/fit_erf.py): coefficients of x^0, x^2, ... (below the
# split) and of t^0, t^1, ... (from the split to the top).
_ERF_SPLIT, _ERF_TOP, _ERF_MID, _ERF_INVERSE_HALF = 0.875, 3.92, 2.3975, 0.656814455986023
_ERF_NEAR = (0.12837917, -0.37612638, 0.11283741, -0.02686197, 0.0052076215, -0.00082205184, 8.71406e-05)
_ERF_FAR = (0.21869789, -0.1213786, 0.06388874, -0.03208671, 0.015470888, -0.007238945, 0.0032189428,
            -0.0012579402, 0.00056239485, -0.00037412115, 0.00013628331)


def _horner(const, coefficients, u):
    value = const(coefficients[-1])
    for c in coefficients[-2::-1]:
        value = value * u + const(c)
    return value


def _elementwise(name):
    def legalize(bb: relax.BlockBuilder, call):
        x = call.args[0]
        if x.ty.dtype != "float32":
            return call  # TVM's own legalization follows
        return bb.call_te(lambda t: te.compute(t.shape, lambda *i: _LetMath().formula(name, t(*i)),
                                               name=name), x, primfunc_name_hint=name)
    return legalize


def _softmax(log):
    def legalize(bb: relax.BlockBuilder, call):
        x = call.args[0]
        if x.ty.dtype != "float32":
            return call
        return bb.call_te(lambda t: _softmax_te(t, int(call.attrs.axis), log), x,
                          primfunc_name_hint="log_softmax" if log else "softmax")
    return legalize


@relax.expr_functor.mutator
class _RowSoftmaxRewriter(relax.PyExprMutator):
    """(log_)softmax of float32 along the last axis -> the row kernel, on x viewed as
    [rows, n]."""

    def __init__(self, mod):
        super().__init__(mod)
        self.ops = {tvm.ir.Op.get("relax.nn.softmax"): False, tvm.ir.Op.get("relax.nn.log_softmax"): True}
        self.kernels = {}

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op not in self.ops:
            return call
        log = self.ops[call.op]
        shape = float32_rows(call.args[0])
        if shape is None or int(call.attrs.axis) % len(shape) != len(shape) - 1:
            return call
        n = int(shape[-1])
        key = (n, log)
        if key not in self.kernels:
            self.kernels[key] = add_kernel(self.builder_, build_row_softmax(n, log))
        return call_on_rows(self.builder_, self.kernels[key], call.args[0], [], n)


@relax.expr_functor.mutator
class _ConsecutiveAxesReductionRewriter(relax.PyExprMutator):
    """sum and mean of float32 over consecutive axes: the trailing ones (a global
    average pooling) -> :func:`build_trailing_reduction`, others (a mean over the frames
    of [N, T, C]) -> :func:`build_block_reduction`."""

    def __init__(self, mod):
        super().__init__(mod)
        self.ops = {tvm.ir.Op.get("relax.sum"): False, tvm.ir.Op.get("relax.mean"): True}
        self.kernels = {}

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op not in self.ops:
            return call
        x = call.args[0]
        info = x.ty
        if not isinstance(info, relax.TensorType) or info.dtype != "float32" \
                or not isinstance(info.shape, relax.ShapeExpr) or info.ndim < 1:
            return call
        rank = info.ndim
        axes = sorted({int(a) % rank for a in call.attrs.axis}) if call.attrs.axis is not None \
            else list(range(rank))
        first, last = axes[0], axes[-1]
        shape = list(info.shape.values)
        if axes != list(range(first, last + 1)):
            return call
        static = [int(d) for d in shape[first:last + 1] if isinstance(d, tirx.IntImm)]
        if len(static) == len(axes) and math.prod(static) < _FEW_TERMS:
            return call  # (TVM's loop nest sums so few exactly enough)
        key = (rank, first, last, bool(call.attrs.keepdims), self.ops[call.op])
        if key not in self.kernels:
            build = build_trailing_reduction(rank, rank - first, *key[3:]) if last == rank - 1 \
                else build_block_reduction(*key)
            self.kernels[key] = add_kernel(self.builder_, build)
        return relax.call_tir(self.kernels[key], [x], out_ty=call.ty)


# Below this many terms a float32 sum is within a few ulp however it is ordered.
_FEW_TERMS = 64


def build_trailing_reduction(rank: int, reduced: int, keepdims: bool, mean: bool) -> tirx.PrimFunc:
    """y = sum (or mean) of x over its last ``reduced`` axes: one task per element of
    y, the terms added in float64 lanes, vectorized, then the lanes and the rest.  TVM's
    reduction adds float32 terms one after another: over a 160 x 160 map (the global
    average pooling of a squeeze-and-excitation block) its error was 7e-5 relative, 12x
    onnxruntime's, and it grew through a PP-OCRv6 detector to 1.5e-3 in its output
    probabilities."""
    lanes = vector_lanes()
    with host_kernel(f"{'mean' if mean else 'sum'}_last_{reduced}_of_{rank}{'_keep' if keepdims else ''}") \
            as (ib, _rows):
        dims = [tirx.Var(f"d{a}", "int64") for a in range(rank)]
        lead, tail = dims[:rank - reduced], dims[rank - reduced:]
        x = T.match_buffer(T.arg("x", T.handle()), dims, "float32")
        y = T.match_buffer(T.arg("y", T.handle()), lead + ([i64(1)] * reduced if keepdims else []),
                           "float32")
        rows, n = i64(1), i64(1)
        for d in lead:
            rows = rows * d
        for d in tail:
            n = n * d
        with T.sblock("root"):
            flat_x = T.decl_buffer((rows * n,), "float32", data=x.data)
            flat_y = T.decl_buffer((rows,), "float32", data=y.data)
            with T.parallel(0, rows) as r:
                acc = T.alloc_buffer((lanes,), "float64")
                with T.vectorized(0, lanes) as lane:
                    T.buffer_store(acc, tirx.const(0.0, "float64"), [lane])
                with T.serial(0, n // i64(lanes)) as k0:
                    with T.vectorized(0, lanes) as lane:
                        term = tirx.Cast("float64", flat_x[r * n + k0 * i64(lanes) + lane])
                        T.buffer_store(acc, acc[lane] + term, [lane])
                total = T.alloc_buffer((1,), "float64")
                T.buffer_store(total, tirx.const(0.0, "float64"), [0])
                with T.serial(0, lanes) as lane:
                    T.buffer_store(total, total[0] + acc[lane], [0])
                with T.serial(n // i64(lanes) * i64(lanes), n) as k:
                    T.buffer_store(total, total[0] + tirx.Cast("float64", flat_x[r * n + k]), [0])
                value = total[0] / tirx.Cast("float64", n) if mean else total[0]
                T.buffer_store(flat_y, tirx.Cast("float32", value), [r])
    return ib.get()


# Columns per task of build_block_reduction: four AVX-512 vectors of float32.
_BLOCK_COLUMNS = 64


def build_block_reduction(rank: int, first: int, last: int, keepdims: bool, mean: bool) -> tirx.PrimFunc:
    """y[o, i] = sum (or mean) over r of x[o, r, i], x viewed as [outer, reduced,
    inner] (the axes before ``first``, ``first`` to ``last``, those after): one task per
    outer index and block of :data:`_BLOCK_COLUMNS` inner ones, each adding its block's
    rows in float64, vectorized along the block (contiguous in x), then rounding once,
    as :func:`build_trailing_reduction` does."""
    block = _BLOCK_COLUMNS
    label = f"{'mean' if mean else 'sum'}_axes_{first}_{last}_of_{rank}{'_keep' if keepdims else ''}"
    with host_kernel(label) as (ib, _rows):
        dims = [tirx.Var(f"d{a}", "int64") for a in range(rank)]
        x = T.match_buffer(T.arg("x", T.handle()), dims, "float32")
        kept = [i64(1)] * (last + 1 - first) if keepdims else []
        y = T.match_buffer(T.arg("y", T.handle()), dims[:first] + kept + dims[last + 1:], "float32")
        outer, count, inner = i64(1), i64(1), i64(1)
        for a, d in enumerate(dims):
            if a < first:
                outer = outer * d
            elif a <= last:
                count = count * d
            else:
                inner = inner * d
        blocks = (inner + i64(block - 1)) // i64(block)
        with T.sblock("root"):
            flat_x = T.decl_buffer((outer * count * inner,), "float32", data=x.data)
            flat_y = T.decl_buffer((outer * inner,), "float32", data=y.data)
            with T.parallel(0, outer * blocks) as task:
                o, start = task // blocks, task % blocks * i64(block)
                acc = T.alloc_buffer((block,), "float64")
                with T.vectorized(0, block) as i:
                    T.buffer_store(acc, tirx.const(0.0, "float64"), [i])

                def add_rows(columns):
                    with T.serial(0, count) as r:
                        with columns() as i:
                            term = tirx.Cast("float64", flat_x[(o * count + r) * inner + start + i])
                            T.buffer_store(acc, acc[i] + term, [i])

                def store(columns):
                    with columns() as i:
                        total = acc[i] / tirx.Cast("float64", count) if mean else acc[i]
                        T.buffer_store(flat_y, tirx.Cast("float32", total), [o * inner + start + i])

                whole = start + i64(block) <= inner
                with T.If(whole):
                    with T.Then():
                        add_rows(lambda: T.vectorized(0, block))
                        store(lambda: T.vectorized(0, block))
                    with T.Else():
                        add_rows(lambda: T.serial(0, inner - start))
                        store(lambda: T.serial(0, inner - start))
    return ib.get()


def build_row_softmax(n: int, log: bool) -> tirx.PrimFunc:
    """(log-)softmax of each row of y = f(x[rows, n]): one task per row, three
    vectorized passes over it (max; exp(x - max) and its sum; the normalization), the
    lanes' partial max and sum combined at the end of their pass."""
    lanes = vector_lanes()
    full = n // lanes
    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    with host_kernel(f"{'log_softmax' if log else 'softmax'}_rows_{n}") as (ib, rows):
        x = T.match_buffer(T.arg("x", T.handle()), (rows, n), "float32")
        y = T.match_buffer(T.arg("y", T.handle()), (rows, n), "float32")
        # In a root block: TVM's reshape detection (which one input and one output
        # of its size trigger) reads a function's body as a block.
        with T.sblock("root"), T.parallel(0, rows) as r:
            def each(body, vector_init, combine, scalar):
                """body(k) over the row: vectorized, then the tail; returns the
                lanes' values combined."""
                acc = T.alloc_buffer((lanes,), "float32")
                with T.vectorized(0, lanes) as lane:
                    T.buffer_store(acc, vector_init, [lane])
                with T.serial(0, full) as k0:
                    with T.vectorized(0, lanes) as lane:
                        T.buffer_store(acc, combine(acc[lane], body(k0 * i64(lanes) + lane)), [lane])
                total = T.alloc_buffer((1,), "float32")
                T.buffer_store(total, scalar, [0])
                with T.serial(0, lanes) as lane:
                    T.buffer_store(total, combine(total[0], acc[lane]), [0])
                with T.serial(i64(full * lanes), i64(n)) as k:
                    T.buffer_store(total, combine(total[0], body(k)), [0])
                return T.bind(total[0])

            top = each(lambda k: x[r, k], f32(float("-inf")), tirx.max, f32(float("-inf")))

            def exp_shifted(k):
                return _LetMath().formula("exp", x[r, k] - top)

            if log:
                total = each(exp_shifted, f32(0.0), lambda a, b: a + b, f32(0.0))
                shift = T.bind(top + tirx.log(total))
                value = lambda k: x[r, k] - shift  # noqa: E731
            else:
                def stored(k):
                    e = exp_shifted(k)
                    T.buffer_store(y, e, [r, k])
                    return y[r, k]
                total = each(stored, f32(0.0), lambda a, b: a + b, f32(0.0))
                value = lambda k: y[r, k] / total  # noqa: E731
            with T.serial(0, full) as k0:
                with T.vectorized(0, lanes) as lane:
                    T.buffer_store(y, value(k0 * i64(lanes) + lane), [r, k0 * i64(lanes) + lane])
            with T.serial(i64(full * lanes), i64(n)) as k:
                T.buffer_store(y, value(k), [r, k])
    return ib.get()


def _softmax_te(x, axis, log):
    """max, then sum of exp(x - max) over ``axis``; x - max - log(sum) or exp(x - max) / sum."""
    ndim = len(x.shape)
    axis = axis % ndim
    rest = [d for i, d in enumerate(x.shape) if i != axis]

    def full(idx, k):
        return list(idx[:axis]) + [k] + list(idx[axis:])

    k1 = te.reduce_axis((0, x.shape[axis]), "k")
    top = te.compute(rest, lambda *i: te.max(x(*full(i, k1)), axis=k1), name="max")
    k2 = te.reduce_axis((0, x.shape[axis]), "k")
    total = te.compute(rest, lambda *i: te.sum(
        _LetMath().formula("exp", x(*full(i, k2)) - top(*i)), axis=k2), name="sum_exp")

    def out(*idx):
        i = list(idx[:axis]) + list(idx[axis + 1:])
        shifted = x(*idx) - top(*i)
        if log:
            return shifted - tirx.log(total(*i))
        return _LetMath().formula("exp", shifted) / total(*i)

    return te.compute(x.shape, out, name="log_softmax" if log else "softmax")


_LEGALIZE = {
    "relax.exp": _elementwise("exp"),
    "relax.sigmoid": _elementwise("sigmoid"),
    "relax.tanh": _elementwise("tanh"),
    "relax.erf": _elementwise("erf"),
    "relax.nn.gelu": _elementwise("gelu"),
    "relax.nn.gelu_tanh": _elementwise("gelu_tanh"),
    "relax.nn.softmax": _softmax(log=False),
    "relax.nn.log_softmax": _softmax(log=True),
}


@tvm.transform.module_pass(opt_level=0, name="VectorizableMath")
class VectorizableMath:
    """Float32 softmax and log_softmax along rows by :func:`build_row_softmax`, sums and
    means over consecutive axes in float64; float32 exp, sigmoid, tanh, erf, GELU and the
    other softmaxes legalized with vectorizable formulas;
    other operators and dtypes are left to TVM's legalization."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = rewrite_functions(_RowSoftmaxRewriter(mod), mod)
        mod = rewrite_functions(_ConsecutiveAxesReductionRewriter(mod), mod)
        return relax.transform.LegalizeOps(_LEGALIZE)(mod)
