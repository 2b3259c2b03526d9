"""Register-blocked matrix products for the linear layers around the recurrent ones.

A head over every step (a language model's or a tagger's: ``MatMul(Y, W)``, ``Gemm``)
is a matrix product of (steps x batch) rows by a constant weight.  TVM legalizes it into
a loop nest that :mod:`.host_schedule` can only parallelize and vectorize along the
output row: every multiply-add then loads and stores its output, three memory operations
per operation (the char LM's 97-way head ran at a third of onnxruntime's speed).
``PackConstantMatmuls`` replaces each ``matmul(x, W)`` with a constant W by a kernel
that keeps a block of outputs in registers:

* W is packed at compile time into panels of up to
  :func:`~memotvm.kernels.panels.panel_vectors` vectors of
  columns (vectors of the target's width), each panel [K, width] contiguous and its
  last vector zero-padded, so the kernel never loads outside W and never masks a load;
* a task owns ``ROW_CHUNK`` rows and one panel; it computes ``TILE_ROWS`` rows x the
  panel's vectors at a time, 4 x 6 = 24 accumulators where the target has 32 vector
  registers (AVX-512, NEON), 4 x 2 = 8 where it has 16 (AVX2, SSE): per k one
  broadcast of each row's x and one load of each of the panel's vectors;
* each output is the sum of its K products in order of k, as the legalized loop nest
  sums them (fused multiply-adds);
* where the module's weights are at reduced precision (the
  ``memotvm.products_precision`` attribute, :mod:`memotvm.passes.precision`), W is
  packed as bfloat16, or as int8 with one scale per column that multiplies the column's
  sums before they are stored; the products still accumulate in float32.

Other matrix products (both operands computed, float64, integer) keep TVM's lowering.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir import GenericConst
from tvm.script.ir_builder import tirx as T

from ..kernels import i64
from ..kernels.panels import TILE_ROWS, for_panel, panel_widths, register_block
from ..kernels.tiling import vector_lanes
from ..passes._relax_util import add_kernel, call_on_rows, float32_rows, rewrite_functions
from ..passes.precision import PRODUCTS_ATTR
from ..precision import STORAGE, store_weights
from .host_schedule import host_kernel

ROW_CHUNK = 64


def pack_weight(w: np.ndarray, precision: str = "fp32") -> tuple:
    """W [K, N] as panels [K, width * lanes] laid end to end (zero-padded columns), in
    the storage of ``precision``; and, for int8, the columns' scales (padded with 1)."""
    k, n = w.shape
    lanes = vector_lanes()
    stored = store_weights(np.ascontiguousarray(w.T), precision)  # a row per column of W
    padded = np.zeros((k, -(-n // lanes) * lanes), stored.values.dtype)
    padded[:, :n] = stored.values.T
    panels, col = [], 0
    for width in panel_widths(n):
        panels.append(padded[:, col:col + width * lanes].ravel())
        col += width * lanes
    scales = None
    if stored.scales is not None:
        scales = np.ones(padded.shape[1], np.float32)
        scales[:n] = stored.scales
    return np.concatenate(panels), scales


def build_gemm(k: int, n: int, weights: str = "float32") -> tirx.PrimFunc:
    """y[M, n] = x[M, k] @ W, W given packed by :func:`pack_weight` (stored as
    ``weights``: float32, bfloat16, or int8 followed by the columns' scales); M is
    dynamic."""
    widths, lanes = panel_widths(n), vector_lanes()
    suffix = "" if weights == "float32" else f"_{weights}"
    with host_kernel(f"packed_matmul_{k}x{n}{suffix}") as (ib, rows):
        x = T.match_buffer(T.arg("x", T.handle()), (rows, k), "float32")
        wp = T.match_buffer(T.arg("w_packed", T.handle()), (k * sum(widths) * lanes,), weights)
        scales = None
        if weights == "int8":
            scales = T.match_buffer(T.arg("scales", T.handle()), (sum(widths) * lanes,), "float32")
        y = T.match_buffer(T.arg("y", T.handle()), (rows, n), "float32")
        chunks = (rows + i64(ROW_CHUNK - 1)) // i64(ROW_CHUNK)
        with T.parallel(0, chunks * i64(len(widths))) as task:
            chunk, panel = task // i64(len(widths)), task % i64(len(widths))
            for_panel(panel, n, lambda col, width, _whole: _panel(x, wp, y, rows, k, n, chunk, col,
                                                                  width, lanes, scales))
    return ib.get()


def _panel(x, wp, y, rows, k, n, chunk, col, width, lanes, scales=None):
    """Rows chunk * ROW_CHUNK ... of the output columns col ... col + width * lanes."""
    stride = width * lanes
    base = i64(col) * i64(k)  # the panel's offset in wp

    def weight(kk, j, lane):
        w = wp[base + kk * i64(stride) + i64(j * lanes) + lane]
        return w if wp.dtype == "float32" else tirx.Cast("float32", w)

    def store(acc, row, j):
        _store(y, acc, row, col + j * lanes, n, lanes, scales)

    with T.serial(0, ROW_CHUNK // TILE_ROWS) as block:
        first = chunk * i64(ROW_CHUNK) + block * i64(TILE_ROWS)
        with T.If(first < rows):
            with T.Then():
                register_block(first, rows, k, width, lanes, lambda row, kk: x[row, kk], weight, store)


def _store(y, acc, row, col, n, lanes, scales=None):
    """y[row, col + lane] = acc[lane] (times its column's scale), for the columns < n
    (``col`` a TIR expression in a panel of whole vectors: all of them)."""
    start = i64(col)

    def value(lane):
        return acc[lane] if scales is None else acc[lane] * scales[start + lane]

    if not isinstance(col, int) or col + lanes <= n:
        with T.vectorized(0, lanes) as lane:
            T.buffer_store(y, value(lane), [row, start + lane])
    else:
        with T.serial(0, n - col) as lane:
            T.buffer_store(y, value(lane), [row, start + lane])


@tvm.transform.module_pass(opt_level=0, name="PackConstantMatmuls")
class PackConstantMatmuls:
    """Replace ``matmul(x, W)`` (float32, W a constant [K, N], possibly transposed by
    ``permute_dims``) with a call of :func:`build_gemm` on W packed at compile time."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        precision = str(mod.attrs[PRODUCTS_ATTR]) if mod.attrs and PRODUCTS_ATTR in mod.attrs \
            else "fp32"
        mod = rewrite_functions(_MatmulRewriter(mod, precision), mod)
        # A transposed weight's permute_dims is left unused: it would run every call.
        return relax.transform.DeadCodeElimination()(mod)


@relax.expr_functor.mutator
class _MatmulRewriter(relax.PyExprMutator):
    def __init__(self, mod, precision="fp32"):
        super().__init__(mod)
        self.precision = precision
        self.matmul = tvm.ir.Op.get("relax.matmul")
        self.permute = tvm.ir.Op.get("relax.permute_dims")
        self.kernels = {}

    def _constant_weight(self, expr):
        """W as a numpy array when ``expr`` is a constant or a transposed constant."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is None:
                return None
            expr = bound
        if isinstance(expr, GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Call) and expr.op == self.permute \
                and isinstance(expr.args[0], GenericConst):
            axes = expr.attrs.axes
            w = expr.args[0].value.numpy()
            if w.ndim == 2 and (axes is None or [int(a) for a in axes] == [1, 0]):
                return w.T
        return None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op != self.matmul:
            return call
        x, w_expr = call.args
        if call.attrs.out_dtype is not None and str(call.attrs.out_dtype) != "float32":
            return call
        w = self._constant_weight(w_expr)
        shape = float32_rows(x)
        if w is None or w.ndim != 2 or w.dtype != np.float32 or 0 in w.shape \
                or shape is None or len(shape) < 2 or int(shape[-1]) != w.shape[0]:
            return call
        k, n = w.shape
        key = (k, n)
        weights = STORAGE[self.precision]
        if key not in self.kernels:
            self.kernels[key] = add_kernel(self.builder_, build_gemm(k, n, weights))
        packed, scales = pack_weight(w, self.precision)
        args = [relax.const(packed, weights)]
        if scales is not None:
            args.append(relax.const(scales, "float32"))
        return call_on_rows(self.builder_, self.kernels[key], x, args, n)
