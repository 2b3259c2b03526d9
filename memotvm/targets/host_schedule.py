"""A schedule for the host operators around the recurrent layers.

TVM's default CPU pipeline legalizes Relax operators (MatMul, Gemm, Softmax, Gather...)
into plain loop nests and compiles them as they are: one thread, no vectors.  For an RNN
with a linear head over every step, that head then costs more than the recurrent layers.
``ScheduleHostOps`` gives every such block parallel outer loops and a vectorized inner
loop, the recurrent kernels (which schedule themselves) excepted.  Elementwise blocks
that feed elementwise blocks are computed inside them first (a fused reshape, bias and
activation is one loop, not three over stored intermediates).  Then:

* an elementwise block: leading loops fused and parallel, the last one vectorized;
* a reduction over a small static window (a pooling, a depthwise convolution's taps):
  leading spatial loops fused and parallel, the window unrolled inside the last spatial
  loop, which LLVM vectorizes;
* another reduction over trailing axes (a matmul of computed operands, a convolution):
  leading spatial loops fused and parallel, the reductions moved outside the
  last spatial loop, which is vectorized (contiguous in the output and, for weights
  stored [K, N] or a convolution's input rows, in what it reads); its elementwise
  consumers (bias, activation) are computed in the same parallel loop.

A block the rule does not recognise is left as TVM made it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

VECTOR = 16


def _kinds(sch, block):
    return "".join("S" if iv.iter_type == tirx.IterVar.DataPar else
                   "R" if iv.iter_type == tirx.IterVar.CommReduce else "O"
                   for iv in sch.get(block).iter_vars)


def _static(sch, loop):
    extent = sch.get(loop).extent
    return isinstance(extent, tirx.IntImm)


def _vectorize_last(sch, loop):
    """Vectorize ``loop`` (static extent) in VECTOR lanes.  An extent that is not a
    multiple of VECTOR is partitioned first into a whole number of vectors and a scalar
    rest: split alone, the last vector's bound check made TVM scalarize the whole loop
    (a sigmoid over rows of 97 ran one libm-free formula per element, 10x slower)."""
    if not _static(sch, loop):
        return
    extent = int(sch.get(loop).extent)
    if extent <= 1:
        return
    whole = extent - extent % VECTOR
    if whole and whole != extent:
        try:
            loop = sch.loop_partition(loop, [whole, None])[0]
        except Exception:  # noqa: BLE001 - a block it cannot partition keeps the split
            pass
        else:
            extent = whole
    _, inner = sch.split(loop, [None, VECTOR])
    sch.vectorize(inner)


# Work (loop iterations) below which a block runs on one thread: waking the pool and
# waiting at its barrier costs a few microseconds, more than a small block's whole run
# (measured: a streaming detector's 27 small operators spent most of a 300 us call in
# thread launches).
MIN_PARALLEL_WORK = 1 << 15
# What a symbolic extent (a batch, a sequence length) counts for in that work.  As 1, a
# sigmoid over [T, N, 97] ran on one thread: 0.63 ms where onnxruntime took 0.06.  As
# 64, a per-call operator of a stream of batch 1 over a few hundred values stays on one
# thread (declare the shapes static, --shape, to decide exactly).
SYMBOLIC_EXTENT = 64


def _worth_threads(sch, loops) -> bool:
    work = 1
    for loop in loops:
        extent = sch.get(loop).extent
        work *= int(extent) if isinstance(extent, tirx.IntImm) else SYMBOLIC_EXTENT
    return work >= MIN_PARALLEL_WORK


def schedule_func(func: tirx.PrimFunc) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
    # By name: scheduling a block can leave another's handle stale (a consumer moved
    # into a reduction's loop).
    names = [sch.get(block).name_hint for block in _inline_elementwise(sch, blocks)]
    done = set()
    for name in names:
        if name in done:
            continue
        block = sch.get_sblock(name)
        kinds = _kinds(sch, block)
        loops = sch.get_loops(block)
        if len(loops) != len(kinds) or len(loops) < 2:
            continue
        parallel = _worth_threads(sch, loops)
        if set(kinds) == {"S"}:
            outer = sch.fuse(*loops[:-1])
            if parallel:
                sch.parallel(outer)
            _vectorize_last(sch, loops[-1])
        elif re.fullmatch(r"S{2,}R+", kinds):
            spatial = kinds.count("S")
            outer = sch.fuse(*loops[:spatial - 1])
            last_s, reductions = loops[spatial - 1], loops[spatial:]
            consumers = [c for c in sch.get_consumers(block)
                         if set(_kinds(sch, c)) == {"S"} and len(sch.get_loops(c)) == spatial]
            for consumer in consumers:
                sch.reverse_compute_at(consumer, outer)
                done.add(sch.get(consumer).name_hint)
            if parallel:
                sch.parallel(outer)
            if _window(sch, reductions):
                # A small window (a pooling's, a depthwise convolution's taps): its
                # loops unrolled inside the last spatial loop, each output reduced in a
                # register; LLVM vectorizes that loop, of static or symbolic extent
                # (strided reads as shuffles).  Max pooling 2 x 2 over [16, 32, W]
                # with W symbolic, model call 78 -> 57 us; average pooling 3 x 3, 66 ->
                # 49 us static, 121 -> 109 us symbolic.
                sch.decompose_reduction(block, reductions[0])
                for loop in reductions:
                    sch.unroll(loop)
                for consumer in consumers:
                    _vectorize_last(sch, sch.get_loops(consumer)[-1])
                continue
            init = sch.decompose_reduction(block, last_s)
            # The reductions outside the last spatial loop: LLVM vectorizes that loop
            # (TVM's vectorize refuses loops under a reduction loop).
            sch.reorder(*reductions, last_s)
            _vectorize_last(sch, sch.get_loops(init)[-1])
            for consumer in consumers:
                _vectorize_last(sch, sch.get_loops(consumer)[-1])
    return sch.mod["main"]


# Reduction iterations per output up to which they are unrolled (see schedule_func).
MAX_WINDOW = 32


def _window(sch, reductions) -> bool:
    """Whether ``reductions`` are a small static window (a pooling's)."""
    extents = [sch.get(loop).extent for loop in reductions]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return False
    size = 1
    for e in extents:
        size *= int(e)
    return size <= MAX_WINDOW


def _inline_elementwise(sch, blocks) -> list:
    """Compute each elementwise block that is not an output inside its consumers, where
    they are elementwise too (each then reads a value once; a reduction would
    recompute it for every output that reads it); returns the blocks left.  Scheduled
    apart, a convolution's bias and activation after a reshape stored and reloaded two
    intermediate tensors (fused_reshape_add_relu over 16 x 32 x 64: 31 -> 3 us)."""
    left = []
    for block in blocks[:-1]:
        consumers = sch.get_consumers(block)
        if set(_kinds(sch, block)) == {"S"} and consumers \
                and all(set(_kinds(sch, c)) == {"S"} for c in consumers) \
                and (_cheap(sch, block) or all(_loads_of(sch, c, block) == 1 for c in consumers)):
            try:
                sch.compute_inline(block)
                continue
            except Exception:  # noqa: BLE001 - not inlinable: scheduled on its own
                pass
        left.append(block)
    return left + blocks[-1:]


def _cheap(sch, block) -> bool:
    """Whether ``block`` computes its value without a Let or a call (no exp, sigmoid,
    erf, round... formula): then a consumer may compute it as many times as it reads it."""
    found = []
    _visit(sch.get(block).body, lambda node: found.append(node)
           if isinstance(node, (tirx.Let, tvm.ir.Call)) else None)
    return not found


def _loads_of(sch, consumer, block) -> int:
    """How many times ``consumer``'s body reads what ``block`` writes.  A consumer that
    reads its input more than once (leaky ReLU's Select(x > 0, x, alpha * x)) would
    compute an inlined formula that often: a sigmoid inlined into a leaky ReLU inlined
    into a tanh took LLVM about two minutes to compile."""
    written = [region.source for region in sch.get(block).writes]
    count = [0]

    def visit(node):
        if isinstance(node, tvm.ir.expr.TensorLoad) and any(node.source.same_as(w) for w in written):
            count[0] += 1

    _visit(sch.get(consumer).body, visit)
    return count[0]


# Fields not followed by _visit: where a node is and what type it has, and what a store
# writes to and a load reads from (a buffer: not what a block computes).
_NOT_VISITED = {"span", "ty", "buffer", "source"}


def _visit(node, visit) -> None:
    """``visit`` every statement and expression under ``node`` (TVM's Python API has no
    TIR visitor here): the fields TVM's FFI reflects, followed depth first."""
    todo = [node]
    while todo:
        obj = todo.pop()
        if isinstance(obj, (tvm_ffi.Array, list, tuple)):
            todo.extend(obj)
            continue
        if not isinstance(obj, tvm_ffi.Object):
            continue
        visit(obj)
        info = getattr(type(obj), "__tvm_ffi_type_info__", None)
        while info is not None:
            todo.extend(getattr(obj, f.name) for f in info.fields if f.name not in _NOT_VISITED)
            info = info.parent_type_info


def _has_root(sch):
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001 - TVM raises its own error types
        return False


# The attribute of host kernels memotvm writes itself (scheduled already: left alone).
HOST_KERNEL = "memotvm.host_kernel"


@contextmanager
def host_kernel(name: str):
    """Build a host kernel with IRBuilder: a PrimFunc named ``name``, marked
    HOST_KERNEL, over a dynamic number of rows.  Yields (builder, rows); the function is
    ``builder.get()`` after the block."""
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tir.noalias": True, HOST_KERNEL: True})
            yield ib, tirx.Var("rows", "int64")


@tvm.transform.module_pass(opt_level=0, name="ScheduleHostOps")
class ScheduleHostOps:
    """Schedule every PrimFunc of the module that is not a recurrent-loop kernel."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and (
                    "memotvm.recurrent" in func.attrs or HOST_KERNEL in func.attrs)):
                continue
            try:
                out[gv] = schedule_func(func)
            except (AttributeError, NameError, ImportError, TypeError):
                # memotvm's own mistake (an API this TVM does not have), never to be
                # hidden: every function would silently keep TVM's loops.
                raise
            except Exception:  # noqa: BLE001 - an unrecognised shape keeps TVM's loops
                continue
        return out
