"""Transposed convolutions by constant weights as a matrix product and a col2im.

TVM legalizes ``conv1d_transpose``/``conv2d_transpose`` into a convolution over the
input dilated by the stride and padded by the taps: most of the products it computes
are by the zeros it inserted.  The upsampling head of a text detector (two 2 x 2
transposed convolutions of stride 2 over a quarter and a half of the image) took 37 % of
its call that way.

A transposed convolution is a product and a scatter: with W [C, O, *taps] and the
input's positions i,

    y[n, o, i * stride + t * dilation - pad] += sum over c of W[c, o, t] * x[n, c, i]

for every tap t.  :class:`memotvm.targets.host_conv.ConvolutionsAsMatmuls` computes the
sums as the channel-by-channel product of :mod:`.host_conv` (the rows of W^T [O x taps,
C] by the input's channels: ``products`` [N, O x taps, *input sizes]) and
:func:`build_col2im` adds them into place, tap after tap in row-major order over a zero
output, as onnxruntime's col2im does.  Output positions no tap reaches (an
``output_padding`` past the last one) stay zero.
"""

from __future__ import annotations

import itertools
import math

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..kernels import i64
from .host_schedule import HOST_KERNEL, MIN_PARALLEL_WORK


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def build_col2im(channels_out: int, inputs: list, taps, strides, padding, dilation) -> tirx.PrimFunc:
    """y[n, o, Y] = sum over taps t (in row-major order) of products[n, o * T + t, i]
    for the input position i with i * stride + t * dilation - pad = Y (per axis), zero
    where there is none.  ``inputs``: the input's spatial sizes, None where symbolic;
    the batch and output sizes are taken from the buffers.  1-d or 2-d.

    A task fills one output row (one channel of one image in 1-d): it zeroes it, then
    adds each tap's products along the row in a loop whose bounds keep every store
    inside it (no test per element)."""
    nd = len(inputs)
    if nd not in (1, 2):
        raise ValueError(f"col2im is 1-d or 2-d, not {nd}-d")
    ntaps = math.prod(taps)
    name = "col2im_" + "_".join("d" if v is None else str(v) for v in
                                [channels_out, *inputs, *taps, *strides, *padding, *dilation])
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tir.noalias": True, HOST_KERNEL: True, "op_pattern": 8})
            batch = tirx.Var("batch", "int64")
            ins = [i64(v) if v is not None else tirx.Var(f"in{a}", "int64") for a, v in enumerate(inputs)]
            outs = [tirx.Var(f"out{a}", "int64") for a in range(nd)]
            products = T.match_buffer(T.arg("products", T.handle()),
                                      [batch, i64(channels_out * ntaps), *ins], "float32")
            y = T.match_buffer(T.arg("y", T.handle()), [batch, i64(channels_out), *outs], "float32")
            rows = batch * i64(channels_out) * (outs[0] if nd == 2 else i64(1))
            small = None not in inputs and math.prod(inputs) * channels_out * ntaps < MIN_PARALLEL_WORK
            with T.sblock("root"), (T.serial if small else T.parallel)(0, rows) as task:
                if nd == 2:
                    n, o, row = task // (i64(channels_out) * outs[0]), task // outs[0] % i64(channels_out), \
                        task % outs[0]
                else:
                    n, o, row = task // i64(channels_out), task % i64(channels_out), None
                at = [n, o] if row is None else [n, o, row]
                with T.serial(0, outs[-1]) as x:
                    T.buffer_store(y, tirx.const(0.0, "float32"), [*at, x])
                # (taps in row-major order: the k-th is row o * T + k of the products)
                for k, t in enumerate(itertools.product(*(range(n) for n in taps))):
                    column = o * i64(ntaps) + i64(k)
                    if nd == 1:
                        _add_run(y, products, at, [n, column], ins[-1], outs[-1], t[-1], strides[-1],
                                 padding[nd - 1], dilation[-1])
                        continue
                    # (the input row feeding this output row through tap t[0], if any)
                    shifted = row + i64(padding[0] - t[0] * dilation[0])
                    source = tirx.floordiv(shifted, i64(strides[0]))
                    hit = tirx.And(tirx.And(shifted >= i64(0), tirx.floormod(shifted, i64(strides[0])) == i64(0)),
                                   source < ins[0])
                    with T.If(hit):
                        with T.Then():
                            _add_run(y, products, at, [n, column, source], ins[-1], outs[-1], t[-1],
                                     strides[-1], padding[nd - 1], dilation[-1])
    return ib.get()


def _add_run(y, products, at, source, size_in, size_out, tap, stride, pad, dilation):
    """y[*at, j * stride + tap * dilation - pad] += products[*source, j] for the j that
    land inside the row."""
    offset = tap * dilation - pad
    first = max(0, _ceil_div(-offset, stride))
    end = tirx.min(size_in, tirx.floordiv(size_out - i64(1 + offset), i64(stride)) + i64(1))
    end = tirx.max(end, i64(first))
    with T.serial(i64(first), end) as j:
        place = [*at, j * i64(stride) + i64(offset)]
        T.buffer_store(y, y[tuple(place)] + products[(*source, j)], place)
