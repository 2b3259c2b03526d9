"""Convolutions by constant weights as matrix products (im2col, then the packed GEMM).

TVM legalizes ``conv1d``/``conv2d`` into a loop nest that :mod:`.host_schedule` can only
parallelize and vectorize along the output's last axis -- a few frames wide in the
convolutional front ends of streaming models (a VAD's STFT as a 258-channel, 256-tap
convolution over 5 frames: 88 us of a 140 us call).  ``ConvolutionsAsMatmuls`` rewrites
each float32 convolution whose weight is a constant and whose channels are static (one
group, NCW/NCHW layouts; batch and spatial sizes may be symbolic):

* an im2col kernel copies the input windows into ``cols`` [N x output positions,
  C x kernel taps] (zeros for the padding);
* ``cols @ W^T`` (W reshaped to [O, C x taps], transposed at compile time) is an
  ordinary matmul by a constant, which :mod:`.host_gemm` then packs and register-blocks;
* a reshape and a transpose give the NCW/NCHW result.

Each output is the same sum of products as the loop nest's, in order of (channel, tap),
so results agree to rounding.  Grouped (depthwise) convolutions, symbolic channels and
other layouts keep TVM's lowering.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir import GenericConst
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..kernels import i64
from ..passes._relax_util import add_kernel, rewrite_functions
from .host_schedule import HOST_KERNEL, MIN_PARALLEL_WORK

_LAYOUTS = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW")}


def output_sizes(spatial, taps, strides, padding, dilation) -> list:
    """Output positions per spatial axis (padding: all the befores, then the afters);
    ints, or PrimExprs where ``spatial`` holds symbolic sizes."""
    nd = len(spatial)
    return [(spatial[a] + padding[a] + padding[nd + a] - dilation[a] * (taps[a] - 1) - 1)
            // strides[a] + 1 for a in range(nd)]


def build_im2col(shape, taps, strides, padding, dilation) -> tirx.PrimFunc:
    """cols[n * P + p, c * T + t] = x[n, c, p * stride + t * dilation - pad] (zero in
    the padding), P the output positions and T the taps, both in row-major order.
    ``shape`` is x's [channels, *spatial], None for a symbolic spatial size; the batch
    size is always a parameter."""
    channels, *static = shape
    nd = len(static)
    spatial = [i64(v) if v is not None else tirx.Var(f"size{a}", "int64")
               for a, v in enumerate(static)]
    outs = output_sizes(spatial, taps, strides, padding, dilation)
    ntaps = math.prod(taps)
    positions = i64(1)
    for size in outs:
        positions = positions * size
    cols = channels * ntaps
    name = "im2col_" + "_".join("d" if v is None else str(v)
                                for v in [*shape, *taps, *strides, *padding, *dilation])
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            # (opaque to FuseOps: fused with the producer of x, FuseTIR mismatched the
            # buffers of a symbolic batch)
            T.func_attr({"tir.noalias": True, HOST_KERNEL: True, "op_pattern": 8})
            batch = tirx.Var("batch", "int64")
            rows = batch * positions
            x = T.match_buffer(T.arg("x", T.handle()), [batch, i64(channels), *spatial], "float32")
            out = T.match_buffer(T.arg("cols", T.handle()), (rows, i64(cols)), "float32")
            # The work of one batch element decides (most streaming calls have one); a
            # symbolic size is taken to be large.
            small = None not in static and math.prod(output_sizes(
                static, taps, strides, padding, dilation)) * cols < MIN_PARALLEL_WORK
            loop = T.serial if small else T.parallel
            # In a root block: TVM's reshape detection (one input, one output) reads a
            # function's body as a block.
            # Rows in (element, first output axis) pairs, the other axes inside: one
            # division per pair, not per row.
            with T.sblock("root"), loop(0, batch * outs[0]) as first:
                n, o0 = first // outs[0], first % outs[0]
                with (T.grid(*outs[1:]) if nd > 1 else contextlib.nullcontext([])) as inner:
                    pos = [o0, *([inner] if nd == 2 else inner)]
                    r = n
                    for a in range(nd):
                        r = r * outs[a] + pos[a]
                    with T.grid(*[i64(v) for v in (channels, *taps)]) as (c, *t):
                        inside, index = tirx.const(True), []
                        for a in range(nd):
                            i = pos[a] * i64(strides[a]) + t[a] * i64(dilation[a]) - i64(padding[a])
                            inside = tirx.And(inside, tirx.And(i >= i64(0), i < spatial[a]))
                            # (clamped: the load stays inside x where the value is not used)
                            index.append(tirx.max(tirx.min(i, spatial[a] - i64(1)), i64(0)))
                        col = c
                        for a in range(nd):
                            col = col * i64(taps[a]) + t[a]
                        value = tirx.Select(inside, x[(n, c, *index)], tirx.const(0.0, "float32"))
                        T.buffer_store(out, value, [r, col])
    return ib.get()


@tvm.transform.module_pass(opt_level=0, name="ConvolutionsAsMatmuls")
class ConvolutionsAsMatmuls:
    """Rewrite float32 convolutions by constant weights (static input shapes, one group)
    as im2col and a matmul by a constant (see the module's documentation)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_functions(_ConvRewriter(mod), mod)


@relax.expr_functor.mutator
class _ConvRewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.convs = {tvm.ir.Op.get("relax.nn.conv1d"): 1, tvm.ir.Op.get("relax.nn.conv2d"): 2}
        self.kernels = {}

    def _constant(self, expr):
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        return expr.value.numpy() if isinstance(expr, GenericConst) else None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        nd = self.convs.get(call.op)
        if nd is None:
            return call
        attrs = call.attrs
        x, w_expr = call.args
        w = self._constant(w_expr)
        info = x.ty
        if w is None or w.dtype != np.float32 or int(attrs.groups) != 1 \
                or (str(attrs.data_layout), str(attrs.kernel_layout)) != _LAYOUTS[nd] \
                or str(attrs.out_layout) != _LAYOUTS[nd][0] \
                or attrs.out_dtype not in (None, "", "float32") \
                or not isinstance(info, relax.TensorType) or info.dtype != "float32" \
                or not isinstance(info.shape, relax.ShapeExpr) \
                or not isinstance(info.shape.values[1], tirx.IntImm):
            return call
        # The batch size and spatial sizes may be symbolic; the channels are static.
        batch, channels, *spatial = info.shape.values
        static = [int(d) if isinstance(d, tirx.IntImm) else None for d in spatial]
        taps = [int(v) for v in w.shape[2:]]
        strides = [int(v) for v in attrs.strides]
        padding = [int(v) for v in attrs.padding]
        dilation = [int(v) for v in attrs.dilation]
        if w.shape[1] != int(channels) or 0 in static or (None not in static and min(
                output_sizes(static, taps, strides, padding, dilation)) < 1):
            return call
        outs = output_sizes(spatial, taps, strides, padding, dilation)
        key = ((int(channels), *static), tuple(taps), tuple(strides), tuple(padding), tuple(dilation))
        if key not in self.kernels:
            self.kernels[key] = add_kernel(self.builder_, build_im2col(*key))
        rows = batch
        for size in outs:
            rows = rows * size
        cols = self.builder_.emit(relax.call_tir(
            self.kernels[key], [x], out_ty=relax.TensorType([rows, w[0].size], "float32")))
        weight = relax.const(np.ascontiguousarray(w.reshape(w.shape[0], -1).T), "float32")
        product = self.builder_.emit(relax.op.matmul(cols, weight))
        by_position = self.builder_.emit(
            relax.op.reshape(product, relax.ShapeExpr([batch, *outs, w.shape[0]])))
        return relax.op.permute_dims(by_position, [0, nd + 1, *range(1, nd + 1)])
