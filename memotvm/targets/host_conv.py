"""Convolutions by constant weights as matrix products.

TVM legalizes ``conv1d``/``conv2d`` into a loop nest that :mod:`.host_schedule` can only
parallelize and vectorize along the output's last axis -- a few frames wide in the
convolutional front ends of streaming models (a VAD's STFT as a 258-channel, 256-tap
convolution over 5 frames: 88 us of a 140 us call).  ``ConvolutionsAsMatmuls`` rewrites
each float32 convolution whose weight is a constant and whose channels are static (one
group, NCW/NCHW layouts) in one of two forms.

Channel by channel, where the output positions per image make vectors
(:func:`by_channel`: an image, of static or symbolic sizes; a long sequence):

* :func:`build_bordered` copies each channel into a border of zeros, split along each
  strided axis into the phases that the taps read (:class:`Windows`), so that the
  windows of consecutive output positions are consecutive;
* :func:`build_conv_matmul` multiplies the weight [O, C x taps] by the rows ``cols``
  [C x taps, positions], the row of channel c and tap t being that copy shifted by the
  tap's offset (no im2col is written): the output channels are the rows of the
  register-blocked kernel of :mod:`.host_gemm` and the positions its vectors, so the
  result is NCW/NCHW as it is stored, and the elementwise work after it is done as it
  stores (:mod:`.host_conv_epilogue`).  A pointwise convolution of stride 1 without
  padding reads x itself.

Position by position otherwise (a stream's frames, often one a call):

* an im2col kernel copies the windows into ``cols`` [N x output positions, C x taps];
* ``cols @ W^T`` (W reshaped to [O, C x taps], transposed at compile time) is an
  ordinary matmul by a constant, which :mod:`.host_gemm` then packs and register-blocks;
* a reshape and a transpose give the NCW/NCHW result; where an image's height is
  symbolic, one kernel transposes the rows into NCHW (:func:`build_rows_to_nchw`).

Each output is the same sum of products as the loop nest's, in order of (channel, tap),
so results agree to rounding (and the two forms exactly).  The weights are stored at the
module's products precision (:mod:`memotvm.passes.precision`).  Transposed convolutions
are the channel-by-channel product and a col2im (:mod:`.host_conv_transpose`).
Depthwise convolutions over an image or a long sequence read the same copy
(:func:`build_depthwise`).  Other grouped convolutions, symbolic channels and other
layouts keep TVM's lowering.

On the CRNN recognizer fixture (three convolutions over a 32 x W image), channel by
channel took its call from 305 to 256 us with a symbolic width and from 333 to 238 us
with static shapes (medians of 40 calls of each alternated in one process, 2-core AVX2
EPYC, a busy machine).  Over a symbolic height and width (RapidOCR's text detector, a
640 x 640 image, 2-core AVX-512 EPYC) it took the call from 72-74 to 37-38 ms against
the position-major form, at about 1 s of compile per product kernel (0.1 s static).
Reading the windows in place rather than from an im2col took a 3 x 3 convolution of 64
to 16 channels at 160 x 160 from 10.8 to 4.1 ms (onnxruntime: 3.8), and a pointwise one
of 32 to 64 channels from 1.9 to 1.4-1.7 ms (onnxruntime 1.2-1.8; 2-core AVX2 EPYC,
medians of 30 calls, each in its own process).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import zlib

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir import GenericConst
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..kernels import i64
from ..kernels.panels import TILE_ROWS, for_panel, panel_count, register_block
from ..kernels.tiling import vector_lanes
from ..passes._relax_util import add_kernel, rewrite_functions
from ..passes.precision import PRODUCTS_ATTR
from ..passes.shape_checks import simplified
from ..precision import STORAGE, store_weights
from .host_conv_epilogue import CONV_MATMUL_ATTR
from .host_conv_transpose import build_col2im
from .host_gemm import ROW_CHUNK
from .host_schedule import HOST_KERNEL, MIN_PARALLEL_WORK, host_kernel

_LAYOUTS = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW")}

#: Vectors of positions per step of :func:`build_depthwise` (one weight broadcast, then
#: one load and one multiply-add for each).
DEPTHWISE_VECTORS = 4
_TRANSPOSED_LAYOUTS = {1: ("NCW", "IOW"), 2: ("NCHW", "IOHW")}


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


def build_rows_to_nchw(channels: int) -> tirx.PrimFunc:
    """y[n, c, h, w] = rows[(n * H + h) * W + w, c]: the product of :func:`build_im2col`
    and the weights (a row per output position) in NCHW, for an image whose height is
    symbolic.  There TVM's reshape of the rows to [N, H, W, C] was a copy of its own
    (its index arithmetic over two symbolic sizes hid that it is a view), which took
    1.4-2.1 s to compile, before the transpose; this is the transpose alone."""
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"rows_to_nchw_{channels}")
            T.func_attr({"tir.noalias": True, HOST_KERNEL: True, "op_pattern": 8})
            batch, height, width = (tirx.Var(v, "int64") for v in ("batch", "height", "width"))
            # (its own size: the rows are batch * height * width, as Relax's shapes say)
            count = tirx.Var("rows", "int64")
            rows = T.match_buffer(T.arg("rows", T.handle()), (count, i64(channels)), "float32")
            y = T.match_buffer(T.arg("y", T.handle()), (batch, i64(channels), height, width), "float32")
            with T.sblock("root"), T.parallel(0, batch * height) as task:
                n, h = task // height, task % height
                with T.grid(i64(channels), width) as (c, x):
                    T.buffer_store(y, rows[task * width + x, c], [n, c, h, x])
    return ib.get()


def padded_positions(positions):
    """A row length for ``positions``: rounded up to whole vectors, and one more vector
    where that is a multiple of 256 bytes (always, for a symbolic count).  A task reads
    a few vectors from each of the K rows; 512 positions apart (2 KB) they fell into the
    same few sets of the L1 cache (32 x 144 x 512 on the AVX2 EPYC: 42 -> 37 us, 16 x 9
    x 2048: 10.0 -> 6.9 us, when the product read an im2col)."""
    lanes = vector_lanes()
    if not isinstance(positions, int):
        return ((positions + i64(lanes - 1)) // i64(lanes) + i64(1)) * i64(lanes)
    padded = -(-positions // lanes) * lanes
    return padded + lanes if padded % 64 == 0 else padded


def by_channel(static_positions: int, symbolic: int) -> bool:
    """Whether a convolution is computed channel by channel (:func:`build_conv_matmul`),
    given the product of its static output sizes per image and how many of its spatial
    sizes are symbolic.  Static, it takes four vectors of positions: then the padding of
    the last vector costs less than the transposes of the position-major form.  With one
    symbolic size, the others must make a vector (a 1-d convolution over a stream's
    frames, often one frame a call, keeps the position-major form).  An image of
    symbolic height and width is taken to be large."""
    if symbolic >= 2:
        return True
    return static_positions >= (1 if symbolic else 4) * vector_lanes()


def _copy_run(dst, dst_flat, value, dst_row, length):
    """dst[...] = value(i) (zero where value is None) for i < ``length`` (an int or a
    TIR expression): whole vectors, then the rest.  ``dst`` is indexed [dst_flat + i]
    (a 1-d buffer) or [*dst_row[:-1], dst_row[-1] + i]."""
    lanes = i64(vector_lanes())
    length = i64(length)

    def store(i):
        v = tirx.const(0.0, "float32") if value is None else value(i)
        if dst_row is None:
            T.buffer_store(dst, v, [dst_flat + i])
        else:
            T.buffer_store(dst, v, [*dst_row[:-1], dst_row[-1] + i])

    whole = length // lanes
    with T.serial(0, whole) as vec, T.vectorized(0, lanes) as lane:
        store(vec * lanes + lane)
    with T.serial(whole * lanes, length) as i:
        store(i)


def shifted_windows(taps, strides, padding) -> bool:
    """Whether a convolution computed channel by channel reads its windows in place
    (:class:`Windows`: :func:`build_bordered`, then :func:`build_conv_matmul` with
    ``windows``) instead of through an im2col: every one but a pointwise convolution
    of stride 1 without padding (whose im2col is a copy of each channel already).
    (The im2col of a 3 x 3 convolution is a 9-fold copy of its input written to
    memory and read back: 64 to 16 channels at 160 x 160, 10.8 ms of which
    onnxruntime's whole convolution took 3.8.)"""
    return math.prod(taps) > 1 or set(strides) != {1} or any(padding)


class Windows:
    """How a convolution's windows are read in place.  Each channel is copied (by
    :func:`build_bordered`) into a border of zeros and split, along each axis of
    stride s, into the s phases of the bordered positions (s * m + phase, for m <
    the phase's size Q): tap t of dilation d reads phase (t * d) % s at m = o + (t * d)
    // s for output position o.  So the windows of consecutive output positions are
    consecutive in each phase, and the row of tap t is the phase copy shifted by an
    offset: the positions q = o0 * Q1 + o1 (Q1 the last axis' phase size), among which
    the columns o1 >= the output width (((taps - 1) * dilation) // stride of them) are
    computed and dropped.  Q = output size + ((taps - 1) * dilation) // stride: the
    positions that some window reads.  Only the phases that some tap reads are kept."""

    def __init__(self, taps, strides, dilation):
        self.taps, self.strides, self.dilation = tuple(taps), tuple(strides), tuple(dilation)
        self.phases = sorted({self._phase(t) for t in self.each_tap()})

    def key(self):
        return (self.taps, self.strides, self.dilation)

    def each_tap(self):
        """The taps' indices per axis, in row-major order (that of the weight's K)."""
        return itertools.product(*(range(k) for k in self.taps))

    def _phase(self, t):
        return tuple(t[a] * self.dilation[a] % self.strides[a] for a in range(len(t)))

    def phase_sizes(self, outs):
        """Q per axis for output sizes ``outs`` (ints, or PrimExprs)."""
        return [_as_int(o) + (k - 1) * d // s for o, k, d, s in zip(outs, self.taps, self.dilation, self.strides)]

    def length(self, outs):
        """The row length of the copy: the phases, then the zeros that the last block of
        vectors reads past them (a block of :data:`DEPTHWISE_VECTORS` vectors starts
        up to that many vectors minus one before the last position)."""
        size = len(self.phases)
        for q in self.phase_sizes(outs):
            size = size * q
        return padded_positions(size) + DEPTHWISE_VECTORS * vector_lanes()

    def offsets(self, sizes):
        """Each tap's offset (row-major order) for phase sizes ``sizes``."""
        plane = 1
        for q in sizes:
            plane = plane * q
        out = []
        for t in self.each_tap():
            shift = 0
            for a in range(len(t)):  # (row-major within the phase)
                shift = shift * sizes[a] + t[a] * self.dilation[a] // self.strides[a]
            out.append(self.phases.index(self._phase(t)) * plane + shift)
        return out


def _as_int(v):
    return int(v) if isinstance(v, (int, tirx.IntImm)) else v


def build_bordered(shape, windows: Windows, padding) -> tirx.PrimFunc:
    """xp[n, c, :] = the phases (:class:`Windows`) of channel c of image n inside a
    border of zeros (``padding``: all the befores, then the afters), each row after
    row, then zeros up to :meth:`Windows.length`.  ``shape`` is x's [channels,
    *spatial], None for a symbolic spatial size; 1-d or 2-d."""
    channels, *static = shape
    nd = len(static)
    spatial = [i64(v) if v is not None else tirx.Var(f"size{a}", "int64") for a, v in enumerate(static)]
    outs = output_sizes(spatial, windows.taps, windows.strides, padding, windows.dilation)
    sizes = [i64(q) for q in windows.phase_sizes(outs)]
    length = i64(windows.length(outs))
    name = "bordered_" + "_".join("d" if v is None else str(v) for v in [
        *shape, *windows.taps, *windows.strides, *padding, *windows.dilation])
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tir.noalias": True, HOST_KERNEL: True, "op_pattern": 8})
            batch = tirx.Var("batch", "int64")
            x = T.match_buffer(T.arg("x", T.handle()), [batch, i64(channels), *spatial], "float32")
            out = T.match_buffer(T.arg("xp", T.handle()), (batch, i64(channels), length), "float32")
            small = None not in static and math.prod(static) * channels < MIN_PARALLEL_WORK
            with T.sblock("root"):
                with (T.serial if small else T.parallel)(0, batch * i64(channels)) as task:
                    n, c = task // i64(channels), task % i64(channels)
                    plane = sizes[0] * sizes[1] if nd == 2 else sizes[0]
                    for p, phase in enumerate(windows.phases):
                        base = i64(p) * plane
                        last = _Axis(spatial[-1], padding[nd - 1], windows.strides[-1], phase[-1], sizes[-1])
                        if nd == 1:
                            last.copy(out, (n, c, base), lambda i: x[n, c, i],
                                      lambda i, count: x.vload([n, c, i], f"float32x{count}"))
                            continue
                        rows = _Axis(spatial[0], padding[0], windows.strides[0], phase[0], sizes[0])
                        with T.serial(0, rows.first) as m:
                            _copy_run(out, None, None, (n, c, base + m * sizes[1]), sizes[1])
                        with T.serial(rows.first, rows.end) as m:
                            row = rows.source(m)
                            last.copy(out, (n, c, base + m * sizes[1]), lambda i: x[n, c, row, i],
                                      lambda i, count: x.vload([n, c, row, i], f"float32x{count}"))
                        with T.serial(rows.end, sizes[0]) as m:
                            _copy_run(out, None, None, (n, c, base + m * sizes[1]), sizes[1])
                    used = i64(len(windows.phases)) * plane
                    _copy_run(out, None, None, (n, c, used), length - used)
    return ib.get()


class _Axis:
    """One axis of a phase of :func:`build_bordered`: input ``size``, ``before`` zeros
    of padding, ``stride``, ``phase`` and phase size ``q``.  Position m of the phase
    is input position stride * m + phase - before; [first, end) those inside the
    input (clamped into [0, q])."""

    def __init__(self, size, before, stride, phase, q):
        self.size = size
        self.stride, self.shift = stride, phase - before
        first = max(0, -(-(before - phase) // stride))
        self.first = tirx.min(i64(first), q)
        self.end = tirx.max(tirx.min((size + i64(before - phase + stride - 1)) // i64(stride), q), self.first)
        self.q = q

    def source(self, m):
        return m * i64(self.stride) + i64(self.shift)

    def copy(self, out, at, value, vector):
        """out[*at[:-1], at[-1] + m] for m < q: zeros, value(input position), zeros.
        ``vector(position, n)``: the n input values from ``position`` on, as a vector;
        along a stride, it reads whole runs of the input for vectors of the phase."""
        *head, start = at
        _copy_run(out, None, None, (*head, start), self.first)
        done = i64(0)
        if self.stride > 1:
            # A vector of the phase is every stride-th value of a run of stride
            # vectors of the input, loaded whole and shuffled (a load of each position
            # by itself ran at a third of a plain copy's speed), wherever the run lies
            # inside the input; the positions after the last such run one by one below.
            lanes, run = vector_lanes(), self.stride * vector_lanes()
            done = tirx.max(tirx.min((self.end - self.first) // i64(lanes),
                                     (self.size - self.source(self.first)) // i64(run)), i64(0))
            pick = [tirx.IntImm("int32", i * self.stride) for i in range(lanes)]
            with T.serial(0, done) as v:
                m = self.first + v * i64(lanes)
                T.buffer_store(out, tirx.Shuffle([vector(self.source(m), run)], pick),
                               [*head, tirx.Ramp(start + m, i64(1), lanes)])
            done = done * i64(lanes)
        _copy_run(out, None, lambda i: value(self.source(self.first + done + i)),
                  (*head, start + self.first + done), self.end - self.first - done)
        _copy_run(out, None, None, (*head, start + self.end), self.q - self.end)


def build_conv_matmul(channels_out: int, k: int, outs: list, weights: str = "float32",
                      epilogue=None, windows: Windows | None = None) -> tirx.PrimFunc:
    """y[n, o, *p] = sum over kk of W[o, kk] * cols[n, kk, p] (in order of kk), W the
    constant [O, K] (stored as ``weights``: float32, bfloat16, or int8 followed by the
    output channels' scales, which multiply their sums): the output channels are the
    rows of :func:`memotvm.kernels.panels.register_block` (W broadcast) and the
    positions p its columns (one vector load of cols), so the result is NCW/NCHW as it
    is stored.
    ``outs``: the output sizes, None where symbolic.  (y is written in its own shape: a
    reshape after the kernel over a symbolic width failed in TVM's lowering.)

    With ``windows`` (:class:`Windows`; see :func:`shifted_windows`) the kernel reads
    :func:`build_bordered`'s copy, kk = c * taps + t: the row of tap t is the copy
    shifted by t's offset, over the positions of :class:`Windows`, whose columns past
    the output width (2 of 162 for a 3 x 3 kernel of stride 1 at 160 x 160) are
    computed and not stored.  Without (a pointwise convolution of stride 1 and no
    padding, or the product of a transposed one) it reads x itself [N, C, *sizes] as
    cols, each task's panel of columns copied together first (the lanes of a last
    vector that would read past a channel's positions read its last position instead;
    their sums are not stored).

    An ``epilogue`` (:class:`.host_conv_epilogue.Epilogue`) is applied to each sum
    before it is stored; its constants per channel come as a [rows, channels_out]
    table after ``cols``, then its tensors of y's shape."""
    lanes = vector_lanes()
    chunks = -(-channels_out // ROW_CHUNK)
    suffix = "" if weights == "float32" else f"_{weights}"
    label = "x".join("d" if o is None else str(o) for o in outs)
    if windows is not None:
        suffix += "_windows" + "_".join(str(v) for v in itertools.chain(*windows.key()))
    if epilogue is not None:
        suffix += f"_epilogue{zlib.crc32(epilogue.key.encode()):08x}"
    with host_kernel(f"conv_matmul_{channels_out}x{k}x{label}{suffix}") as (ib, batch):
        sizes = [i64(o) if o is not None else tirx.Var(f"size{a}", "int64") for a, o in enumerate(outs)]
        count = sizes[0]
        for size in sizes[1:]:
            count = count * size
        static = None not in outs
        grid = _Grid(sizes, windows) if windows is not None else None
        positions = count if grid is None else grid.positions
        if static:  # (an int)
            positions = int(simplified(positions))
        # (bfloat16 as its bits: TVM's bfloat16 lowering miscomputed a scalar load
        # converted to float32, where a vector load's conversion is right)
        w = T.match_buffer(T.arg("w", T.handle()), (i64(channels_out), i64(k)),
                           "uint16" if weights == "bfloat16" else weights)
        scales = None
        if weights == "int8":
            scales = T.match_buffer(T.arg("scales", T.handle()), (i64(channels_out),), "float32")
        if grid is None:  # (viewed flat below, after the last argument)
            cols = T.match_buffer(T.arg("x", T.handle()), (batch, i64(k), *sizes), "float32")
        else:  # (its row length is its own: the width is bound by y, which comes after)
            stride = i64(grid.length) if static else tirx.Var("stride", "int64")
            cols = T.match_buffer(T.arg("xp", T.handle()), (batch, i64(k // grid.taps), stride),
                                  "float32")
        flat, finish = _output_args(epilogue, batch, channels_out, sizes, count)
        if grid is None:
            cols = T.decl_buffer((batch * i64(k) * count,), "float32", data=cols.data)
        panels = i64(panel_count(positions))
        tasks = i64(chunks) * panels
        with T.parallel(0, batch * tasks) as task:
            n, chunk, panel = task // tasks, task % tasks // panels, task % panels

            def weight(o, kk):
                value = w[o, kk]
                if weights == "bfloat16":  # the float32 with these upper 16 bits
                    return tirx.reinterpret("float32", tirx.Cast("uint32", value) << tirx.const(16, "uint32"))
                return value if weights == "float32" else tirx.Cast("float32", value)

            def output(o, p):
                return (n * i64(channels_out) + o) * count + p

            for_panel(panel, positions, lambda col, width, whole: _channel_panel(
                n, chunk, col, width, whole, lanes, channels_out, k, positions, weight, cols, flat,
                output, scales, finish, grid))
    func = ib.get()
    geometry = [] if windows is None else [list(axis) for axis in windows.key()]
    return func.with_attr(CONV_MATMUL_ATTR, [channels_out, k, [-1 if o is None else o for o in outs],
                                             weights, geometry, "dense"])


def _output_args(epilogue, batch, channels_out, sizes, count):
    """Declare the epilogue's arguments (its table of constants per channel, its
    tensors of y's shape) and y; return (y flat, finish) where ``finish(value, o,
    at)`` emits the epilogue over a vector of ``value(lane)`` at output channel o,
    ``at(lane)`` being each lane's flat index in y (None without an epilogue)."""
    lanes = vector_lanes()
    total = batch * i64(channels_out) * count
    table, tensors = None, []
    if epilogue is not None and epilogue.channel_rows:
        table = T.match_buffer(T.arg("table", T.handle()),
                               (i64(epilogue.channel_rows), i64(channels_out)), "float32")
    for j in range(epilogue.tensors if epilogue is not None else 0):
        tensors.append(T.match_buffer(T.arg(f"t{j}", T.handle()),
                                      (batch, i64(channels_out), *sizes), "float32"))
    y = T.match_buffer(T.arg("y", T.handle()), (batch, i64(channels_out), *sizes), "float32")
    flat = T.decl_buffer((total,), "float32", data=y.data)
    tensors = [T.decl_buffer((total,), "float32", data=t.data) for t in tensors]

    def finish(value, o, at):
        # (a tensor's index clamped: lanes past the last position are not stored)
        return epilogue.emit(lanes, value, lambda row: table[i64(row), o],
                             lambda j, lane: tensors[j][tirx.min(at(lane), total - i64(1))])
    if epilogue is None:
        return flat, None
    finish.reads_tensors = epilogue.tensors > 0  # (else ``at`` is not called)
    return flat, finish


def build_depthwise(channels: int, outs: list, windows: Windows, epilogue=None) -> tirx.PrimFunc:
    """y[n, c, *p] = sum over taps t of W[c, t] * x[n, c, window of p at t] (in order of
    t): a depthwise convolution (one input channel per group, one output channel per
    input channel), reading :func:`build_bordered`'s copy of x in place as
    :func:`build_conv_matmul` does with ``windows``.  A task takes one channel of one
    image and :data:`DEPTHWISE_VECTORS` vectors of positions; each tap's weight is
    broadcast once for them.  ``outs``: the output sizes, None where symbolic;
    ``epilogue`` as for :func:`build_conv_matmul`."""
    lanes = vector_lanes()
    label = "x".join("d" if o is None else str(o) for o in outs)
    suffix = "_".join(str(v) for v in itertools.chain(*windows.key()))
    if epilogue is not None:
        suffix += f"_epilogue{zlib.crc32(epilogue.key.encode()):08x}"
    ntaps = math.prod(windows.taps)
    with host_kernel(f"depthwise_{channels}x{label}_{suffix}") as (ib, batch):
        sizes = [i64(o) if o is not None else tirx.Var(f"size{a}", "int64") for a, o in enumerate(outs)]
        count = sizes[0]
        for size in sizes[1:]:
            count = count * size
        grid = _Grid(sizes, windows)
        static = None not in outs
        positions = int(simplified(grid.positions)) if static else grid.positions
        w = T.match_buffer(T.arg("w", T.handle()), (i64(channels), i64(ntaps)), "float32")
        stride = i64(grid.length) if static else tirx.Var("stride", "int64")
        xp = T.match_buffer(T.arg("xp", T.handle()), (batch, i64(channels), stride), "float32")
        flat, finish = _output_args(epilogue, batch, channels, sizes, count)
        block = DEPTHWISE_VECTORS * lanes
        blocks = (i64(positions) + i64(block - 1)) // i64(block)
        with T.parallel(0, batch * i64(channels) * blocks) as task:
            image, at = task // blocks, task % blocks * i64(block)
            n, c = image // i64(channels), image % i64(channels)
            accs = [T.alloc_buffer((lanes,), "float32") for _ in range(DEPTHWISE_VECTORS)]
            for acc in accs:
                with T.vectorized(0, lanes) as lane:
                    T.buffer_store(acc, tirx.const(0.0, "float32"), [lane])
            for t in range(ntaps):
                weight = T.bind(w[c, i64(t)])
                with T.vectorized(0, lanes) as lane:
                    for j, acc in enumerate(accs):
                        q = at + i64(j * lanes) + lane + grid.offsets[t]
                        T.buffer_store(acc, acc[lane] + weight * xp[n, c, q], [lane])

            def output(o, p):
                return (n * i64(channels) + o) * count + p

            places = _vector_places(grid, at, DEPTHWISE_VECTORS, lanes)
            for j, acc in enumerate(accs):
                start = at + i64(j * lanes)
                with T.If(start < i64(positions)):
                    with T.Then():
                        _store_shifted(flat, acc.__getitem__, c, start, lanes, positions, output,
                                       finish, grid, (places[j, 0], places[j, 1]))
    func = ib.get()
    geometry = [list(axis) for axis in windows.key()]
    return func.with_attr(CONV_MATMUL_ATTR, [channels, ntaps, [-1 if o is None else o for o in outs],
                                             "float32", geometry, "depthwise"])


def rebuild_product(recipe, epilogue) -> tirx.PrimFunc:
    """The product kernel of :data:`.host_conv_epilogue.CONV_MATMUL_ATTR` ``recipe``
    built again with ``epilogue``."""
    channels_out, k, outs, weights, geometry, kind = recipe
    outs = [None if int(o) < 0 else int(o) for o in outs]
    windows = Windows(*(tuple(int(v) for v in axis) for axis in geometry)) if len(geometry) else None
    if str(kind) == "depthwise":
        return build_depthwise(int(channels_out), outs, windows, epilogue)
    return build_conv_matmul(int(channels_out), int(k), outs, str(weights), epilogue, windows)


class _Grid:
    """Where :func:`build_conv_matmul`'s and :func:`build_depthwise`'s reads in place
    (:class:`Windows`) fall and where they store: output sizes ``sizes`` (PrimExprs)."""

    def __init__(self, sizes, windows: Windows):
        nd = len(sizes)
        self.taps = math.prod(windows.taps)
        phase_sizes = [i64(q) for q in windows.phase_sizes(sizes)]
        self.out_width = sizes[-1]
        self.width = phase_sizes[-1]
        # the last stored position + 1 (a 1-d one: the output's width)
        rows = i64(1)
        for size in sizes[:-1]:
            rows = rows * size
        self.positions = (rows - i64(1)) * self.width + self.out_width
        self.length = windows.length(sizes)  # (an int where static)
        self.offsets = [i64(v) for v in windows.offsets(phase_sizes)]
        self.one_row = nd == 1

    def row_col(self, q):
        """(row, column) of position q in the bordered grid."""
        if self.one_row:
            return i64(0), q
        return q // self.width, q % self.width

    def stored(self, q):
        """y's position of q (its column clamped into the row: for the operands of an
        epilogue, whose values at the columns not stored do not matter)."""
        row, col = self.row_col(q)
        return row * self.out_width + tirx.min(col, self.out_width - i64(1))


def _channel_panel(n, chunk, col, width, whole, lanes, channels_out, k, positions, weight, cols, y,
                   output, scales, finish=None, grid=None):
    """Output channels chunk * ROW_CHUNK ... of image n at positions col ... col +
    width * lanes (``whole``: all of them < positions), stored in ``y`` (flat) at
    ``output(o, p)``; ``grid`` (a :class:`_Grid`): the windows read in place, else x
    read flat as ``cols``."""
    start = i64(col)

    def store(acc, o, j):
        at = start + i64(j * lanes)

        def scaled(lane):
            return acc[lane] if scales is None else acc[lane] * scales[o]

        if grid is not None:
            _store_shifted(y, scaled, o, at, lanes, positions, output, finish, grid,
                           (places[j, 0], places[j, 1]))
            return
        value = scaled if finish is None else finish(scaled, o, lambda lane: output(o, at) + lane).__getitem__

        def vector():
            with T.vectorized(0, lanes) as lane:
                T.buffer_store(y, value(lane), [output(o, at) + lane])

        def rest():
            with T.serial(0, positions - at) as lane:
                T.buffer_store(y, value(lane), [output(o, at) + lane])

        if whole or (isinstance(col, int) and isinstance(positions, int)
                     and col + (j + 1) * lanes <= positions):
            vector()
        elif isinstance(col, int) and isinstance(positions, int):
            rest()
        else:
            with T.If(at + i64(lanes) <= positions):
                with T.Then():
                    vector()
                with T.Else():
                    rest()

    if grid is None:
        # The panel's columns of x copied together first: x's channels lie a whole
        # image apart (100 KB at 160 x 160, a multiple of 4 KB), so read in place its
        # K rows fell in the same few sets of the L1 cache and every block of output
        # channels read them again from L2 (1 x 1 convolutions at 160 x 160 on AVX2,
        # 16 to 64 channels: 59 -> 136 GFLOPS, 64 to 32: 81 -> 93).
        k_loop = k
        span = width * lanes
        packed = T.alloc_buffer((k * span,), "float32")
        with T.serial(0, k) as kk:
            for j in range(width):
                with T.vectorized(0, lanes) as lane:
                    p = start + i64(j * lanes) + lane
                    T.buffer_store(packed, cols[(n * i64(k) + kk) * positions
                                                + (p if whole else tirx.min(p, positions - i64(1)))],
                                   [kk * i64(span) + i64(j * lanes) + lane])

        def window(kk, j, lane):
            return packed[kk * i64(span) + i64(j * lanes) + lane]
    else:
        k_loop = (k // grid.taps, grid.taps)
        # (each tap's first position in a table: with the taps unrolled, their loads'
        # indices over the symbolic sizes took TVM's passes 5 s a kernel)
        firsts = T.alloc_buffer((grid.taps,), "int64")
        for t, offset in enumerate(grid.offsets):
            T.buffer_store(firsts, start + offset, [t])
        places = _vector_places(grid, start, width, lanes)

        def window(ct, j, lane):
            c, t = ct
            return cols[n, c, firsts[t] + i64(j * lanes) + lane]

    with T.serial(0, ROW_CHUNK // TILE_ROWS) as block:
        first = chunk * i64(ROW_CHUNK) + block * i64(TILE_ROWS)
        with T.If(first < i64(channels_out)):
            with T.Then():
                register_block(first, i64(channels_out), k_loop, width, lanes, weight, window, store)


def _vector_places(grid, start, vectors, lanes):
    """A buffer [vectors, 2] of the (row, column) in ``grid`` of the first position of
    each of the vectors from ``start`` on: one division, then steps (a division per
    vector over a symbolic width cost more than a small K's sums)."""
    places = T.alloc_buffer((vectors, 2), "int64")
    at = T.alloc_buffer((2,), "int64")
    row, col = grid.row_col(start)
    T.buffer_store(at, row, [0])
    T.buffer_store(at, col, [1])
    for j in range(vectors):
        T.buffer_store(places, at[0], [j, 0])
        T.buffer_store(places, at[1], [j, 1])
        if j + 1 < vectors:
            T.buffer_store(at, at[1] + i64(lanes), [1])
            with T.While(at[1] >= grid.width):
                T.buffer_store(at, at[1] - grid.width, [1])
                T.buffer_store(at, at[0] + i64(1), [0])
    return places


def _store_shifted(y, scaled, o, at, lanes, positions, output, finish, grid, place):
    """Store the vector of positions at ... at + lanes - 1 of the bordered grid (its
    first position at ``place``, a (row, column) pair): whole where they are one row's
    stored columns, else lane by lane those that are."""
    row, col = place
    first = output(o, row * grid.out_width + col)
    value = scaled
    if finish is not None and not finish.reads_tensors:  # (once, for both paths)
        value = finish(scaled, o, None).__getitem__
    with T.If(col + i64(lanes) <= grid.out_width):
        with T.Then():
            if finish is not None and finish.reads_tensors:
                value = finish(scaled, o, lambda lane: first + lane).__getitem__
            with T.vectorized(0, lanes) as lane:
                T.buffer_store(y, value(lane), [first + lane])
        with T.Else():
            if finish is not None and finish.reads_tensors:
                value = finish(scaled, o, lambda lane: output(o, grid.stored(at + lane))).__getitem__
            # (lane by lane, its row and column stepped on from the first lane's: a
            # division per lane over a symbolic width cost more than a small K's sums)
            at_lane = T.alloc_buffer((2,), "int64")
            T.buffer_store(at_lane, row, [0])
            T.buffer_store(at_lane, col, [1])
            with T.serial(0, lanes) as lane:
                with T.If(tirx.all(at + lane < positions, at_lane[1] < grid.out_width)):
                    with T.Then():
                        T.buffer_store(y, value(lane), [output(o, at_lane[0] * grid.out_width + at_lane[1])])
                with T.If(at_lane[1] + i64(1) < grid.width):
                    with T.Then():
                        T.buffer_store(at_lane, at_lane[1] + i64(1), [1])
                    with T.Else():
                        T.buffer_store(at_lane, i64(0), [1])
                        T.buffer_store(at_lane, at_lane[0] + i64(1), [0])


@tvm.transform.module_pass(opt_level=0, name="ConvolutionsAsMatmuls")
class ConvolutionsAsMatmuls:
    """Rewrite float32 convolutions by constant weights (static input shapes, one group)
    as im2col and a matmul by a constant (see the module's documentation)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        precision = str(mod.attrs[PRODUCTS_ATTR]) if mod.attrs and PRODUCTS_ATTR in mod.attrs \
            else "fp32"
        return rewrite_functions(_ConvRewriter(mod, precision), mod)


@relax.expr_functor.mutator
class _ConvRewriter(relax.PyExprMutator):
    def __init__(self, mod, precision="fp32"):
        super().__init__(mod)
        self.precision = precision
        self.convs = {tvm.ir.Op.get("relax.nn.conv1d"): 1, tvm.ir.Op.get("relax.nn.conv2d"): 2}
        self.transposed = {tvm.ir.Op.get("relax.nn.conv1d_transpose"): 1,
                           tvm.ir.Op.get("relax.nn.conv2d_transpose"): 2}
        self.kernels = {}

    def _constant(self, expr):
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        return expr.value.numpy() if isinstance(expr, GenericConst) else None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        nd = self.convs.get(call.op) or self.transposed.get(call.op)
        if nd is None:
            return call
        attrs = call.attrs
        x, w_expr = call.args
        w = self._constant(w_expr)
        info = x.ty
        layouts = _LAYOUTS[nd] if call.op in self.convs else _TRANSPOSED_LAYOUTS[nd]
        groups = int(attrs.groups)
        if w is None or w.dtype != np.float32 or (groups != 1 and not (
                call.op in self.convs and w.shape[1] == 1 and groups == w.shape[0])) \
                or (str(attrs.data_layout), str(attrs.kernel_layout)) != layouts \
                or str(attrs.out_layout) != layouts[0] \
                or attrs.out_dtype not in (None, "", "float32") \
                or not isinstance(info, relax.TensorType) or info.dtype != "float32" \
                or not isinstance(info.shape, relax.ShapeExpr) \
                or not isinstance(info.shape.values[1], tirx.IntImm):
            return call
        if call.op in self.transposed:
            return self._transposed(call, x, w, info, attrs)
        # The batch size and spatial sizes may be symbolic; the channels are static.
        batch, channels, *spatial = info.shape.values
        static = [int(d) if isinstance(d, tirx.IntImm) else None for d in spatial]
        taps = [int(v) for v in w.shape[2:]]
        strides = [int(v) for v in attrs.strides]
        padding = [int(v) for v in attrs.padding]
        dilation = [int(v) for v in attrs.dilation]
        if w.shape[1] * groups != int(channels) or 0 in static or (None not in static and min(
                output_sizes(static, taps, strides, padding, dilation)) < 1):
            return call
        # (simplified, as Relax's own shape inference does: a 1 x 1 convolution's
        # ((h - 1) // 1 + 1) left as written made its consumers' buffers differ in
        # form from the same tensor's elsewhere, which FuseTIR refuses)
        outs = [int(o) if isinstance(o, tirx.IntImm) else simplified(o)
                for o in output_sizes(spatial, taps, strides, padding, dilation)]
        key = ((int(channels), *static), tuple(taps), tuple(strides), tuple(padding), tuple(dilation))
        if groups != 1:
            if not by_channel(
                    math.prod(o for o in outs if isinstance(o, int)), static.count(None)):
                return call  # (TVM's lowering)
            return self._depthwise(x, w, key, batch, outs)
        if by_channel(math.prod(o for o in outs if isinstance(o, int)), static.count(None)):
            return self._by_channel(x, w, key, batch, outs)
        symbolic = None in static[:-1]
        if key not in self.kernels:
            self.kernels[key] = add_kernel(self.builder_, build_im2col(*key))
        rows = batch
        for size in outs:
            rows = rows * size
        cols = self.builder_.emit(relax.call_tir(
            self.kernels[key], [x], out_ty=relax.TensorType([rows, w[0].size], "float32")))
        weight = relax.const(np.ascontiguousarray(w.reshape(w.shape[0], -1).T), "float32")
        product = self.builder_.emit(relax.op.matmul(cols, weight))
        if symbolic and nd == 2:
            rows_key = ("rows_to_nchw", w.shape[0])
            if rows_key not in self.kernels:
                self.kernels[rows_key] = add_kernel(self.builder_, build_rows_to_nchw(w.shape[0]))
            return relax.call_tir(self.kernels[rows_key], [product],
                                  out_ty=relax.TensorType([batch, w.shape[0], *outs], "float32"))
        by_position = self.builder_.emit(
            relax.op.reshape(product, relax.ShapeExpr([batch, *outs, w.shape[0]])))
        return relax.op.permute_dims(by_position, [0, nd + 1, *range(1, nd + 1)])

    def _transposed(self, call, x, w, info, attrs):
        """A transposed convolution as the channel-by-channel product of x by W^T and
        :func:`.host_conv_transpose.build_col2im` (see that module)."""
        batch, channels, *spatial = info.shape.values
        out_info = call.ty
        if w.shape[0] != int(channels) or not isinstance(out_info, relax.TensorType) \
                or not isinstance(out_info.shape, relax.ShapeExpr):
            return call
        nd = len(spatial)
        static = [int(d) if isinstance(d, tirx.IntImm) else None for d in spatial]
        if 0 in static:
            return call
        taps = [int(v) for v in w.shape[2:]]
        strides = [int(v) for v in attrs.strides]
        padding = [int(v) for v in attrs.padding]
        dilation = [int(v) for v in attrs.dilation]
        channels_out = w.shape[1]
        # W [C, O, *taps] as the rows [O x taps, C] that multiply the input's channels
        rows = np.ascontiguousarray(np.moveaxis(w, 0, -1).reshape(-1, w.shape[0]))
        identity = ((int(channels), *static), (1,) * nd, (1,) * nd, (0,) * (2 * nd), (1,) * nd)
        sizes = [d if v is None else v for v, d in zip(static, spatial)]
        products = self.builder_.emit(self._by_channel(x, rows, identity, batch, sizes))
        key = ("col2im", channels_out, tuple(static), tuple(taps), tuple(strides), tuple(padding),
               tuple(dilation))
        if key not in self.kernels:
            self.kernels[key] = add_kernel(self.builder_, build_col2im(
                channels_out, static, taps, strides, padding, dilation))
        return relax.call_tir(self.kernels[key], [products], out_ty=out_info)

    def _depthwise(self, x, w, key, batch, outs):
        """A depthwise convolution as :func:`build_bordered` and :func:`build_depthwise`
        (float32 weights: its products are few)."""
        shape, taps, strides, padding, dilation = key
        windows = Windows(taps, strides, dilation)
        known = [o if isinstance(o, int) else None for o in outs]
        kernel_key = ("depthwise", shape[0], tuple(known), windows.key())
        if kernel_key not in self.kernels:
            self.kernels[kernel_key] = add_kernel(self.builder_, build_depthwise(shape[0], known, windows))
        xp = self.builder_.emit(self._bordered(x, shape, windows, padding, batch, outs))
        return relax.call_tir(self.kernels[kernel_key], [relax.const(w.reshape(shape[0], -1)), xp],
                              out_ty=relax.TensorType([batch, shape[0], *outs], "float32"))

    def _bordered(self, x, shape, windows, padding, batch, outs):
        """The call of :func:`build_bordered` on x."""
        key = ("bordered", shape, windows.key(), padding)
        if key not in self.kernels:
            self.kernels[key] = add_kernel(self.builder_, build_bordered(shape, windows, padding))
        return relax.call_tir(self.kernels[key], [x], out_ty=relax.TensorType(
            [batch, shape[0], windows.length(outs)], "float32"))

    def _by_channel(self, x, w, key, batch, outs):
        """The convolution as :func:`build_bordered` (but for a pointwise one) and
        :func:`build_conv_matmul`, its weight stored at the module's products
        precision (``outs``: the output sizes, some possibly symbolic)."""
        w = w.reshape(w.shape[0], -1)
        channels_out, k = w.shape
        weights = STORAGE[self.precision]
        shape, taps, strides, padding, dilation = key
        known = [o if isinstance(o, int) else None for o in outs]
        windows = Windows(taps, strides, dilation) if shifted_windows(taps, strides, padding) else None
        matmul_key = ("matmul", channels_out, k, tuple(known), weights, windows and windows.key())
        if matmul_key not in self.kernels:
            self.kernels[matmul_key] = add_kernel(self.builder_, build_conv_matmul(
                channels_out, k, known, weights, windows=windows))
        if windows is not None:
            cols = self.builder_.emit(self._bordered(x, shape, windows, padding, batch, outs))
        else:  # (pointwise, stride 1, no padding: x is read as it is)
            cols = x
        stored = store_weights(w.reshape(channels_out, k), self.precision)
        args = [relax.const(stored.values.view(np.uint16), "uint16") if weights == "bfloat16"
                else relax.const(stored.values, weights)]
        if stored.scales is not None:
            args.append(relax.const(stored.scales, "float32"))
        return relax.call_tir(self.kernels[matmul_key], [*args, cols],
                              out_ty=relax.TensorType([batch, channels_out, *outs], "float32"))
