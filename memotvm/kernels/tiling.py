"""How a recurrent-loop kernel tiles its work: vector lanes, blocks of rows, steps, units
and batch elements.

These numbers shape every kernel (and the weight layouts packed for them at compile
time), so they live in one leaf module that the builder, the schemes and the layouts
share.
"""

from __future__ import annotations

import functools

import tvm
from tvm import tirx
from tvm.target import codegen

WORD_BITS = 64
# Rows evaluated together (they share the loads of the vector they multiply).
ROW_BLOCK = 4
# Steps whose input projections one block of the matrix product computes together.
TIME_BLOCK = 4
# The input projections of a chunk of steps are computed in one parallel region (each
# task keeps its weight rows in cache over all of them).  A chunk is as many steps as fit
# in PROJECTION_BYTES, at least MIN_PROJECTION_STEPS: with the whole sequence in one
# chunk W is read from memory once per call; with W and R read in alternation every
# few steps, the larger layers evict R from the last-level cache (LSTM H = 1024: 17 %
# slower with 32-step chunks).
PROJECTION_BYTES = 16 << 20
MIN_PROJECTION_STEPS = 32
# Where W is small enough to stay in cache between chunks (at most CACHED_W_BYTES), a
# chunk's projections are kept to about a core's L2 instead, so that the steps read
# them from cache: a batched layer's whole-sequence projection (pydoc_charlstm's 9.8
# MB) is written to and read back from memory.  Measured on a 2-core Zen 4 EPYC,
# pydoc_charlstm (LSTM 256, batch 16, 150 steps), 3 processes each, alternated: fp32
# 9.6-9.9 -> 8.7 ms, bf16-act 7.9-9.8 -> 6.5-7.1 ms; co2_lstm (LSTM 64, batch 327)
# 8.7-9.1 -> 8.2-8.8 ms.
CACHED_W_BYTES = 256 << 10
CACHED_PROJECTION_BYTES = 1 << 20
MIN_CACHED_PROJECTION_STEPS = 8
# Hidden units per task.
UNIT_BLOCK = 64
# R of at most this many bytes per direction lets the unmodified kernel's chains run as
# independent streams, each worker reading all of R every step
# (KernelBuilder.stream_loop): it then stays in a core's own L2 cache (512 KiB on Zen 3,
# 1-2 MiB on recent Intel cores).
STREAM_WEIGHT_BYTES = 256 << 10
# Activations whose float32 form calls a math function (not vectorized).
SCALAR_ACTIVATIONS = {"Softplus"}
# The row index in an entry of a memoized block's list of rows (the bits above 32 say
# which elements of the block compute the row).
ROW_MASK = (1 << 32) - 1


def target_lanes(target: tvm.target.Target) -> int:
    """float32 lanes of one accumulator on ``target``: one vector register of its widest
    kind -- 16 with AVX-512, 8 with AVX (AVX2), 4 elsewhere (SSE, NEON, ...)."""
    for feature, lanes in (("avx512f", 16), ("avx", 8)):
        if codegen.target_has_features(feature, target):
            return lanes
    return 4


def target_registers(target: tvm.target.Target) -> int:
    """Vector registers of ``target``: 32 with AVX-512 or on AArch64, else 16."""
    if codegen.target_has_features("avx512f", target):
        return 32
    return 32 if "aarch64" in str(target.attrs.get("mtriple", "")) else 16


@functools.lru_cache(maxsize=1)
def _host() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})


def _current() -> tvm.target.Target:
    """The target being compiled for (``with target:``, as TVM's schedules read it),
    else the CPU this process runs on."""
    target = tvm.target.Target.current(allow_none=True)
    return _host() if target is None or target.kind.name != "llvm" else target


def vector_lanes() -> int:
    """The lanes the kernels built now use (:func:`target_lanes` of the current target,
    else of the host).  Every dot product of a kernel accumulates in this many lanes
    (its summation order), so the same kernel for another vector width gives results
    within rounding of this one."""
    return target_lanes(_current())


def vector_registers() -> int:
    """:func:`target_registers` of the current target, else of the host."""
    return target_registers(_current())


def i64(v):
    """``v`` as an int64 TIR expression (an int made a constant; an expression as it is)."""
    return v if isinstance(v, tvm.ir.Expr) else tirx.const(v, "int64")


def unit_block(loop) -> int:
    """Hidden units per task."""
    return min(UNIT_BLOCK, loop.hidden_size)


def batch_block() -> int:
    """Batch elements whose recurrent products one task computes together (they share
    every weight load).  4 rows x 4 elements make 16 accumulators, which fit where the
    target has 32 vector registers; with 16 (AVX2) they and the loads spill to the
    stack, so such targets take 2.  Measured on a 2-core EPYC, batch 8, T = 100, in one
    process, 4 against 2: LSTM 32 0.93 -> 0.43 ms, LSTM 128 5.2 -> 4.2 ms (one thread
    7.2 -> 5.0), LSTM 256 13.2 -> 10.8 ms, GRU 64 0.99 -> 0.83 ms, GRU 32 and 128 within
    noise; LSTM 64 alone lost (1.0 -> 1.45 ms)."""
    return 4 if vector_registers() >= 32 else 2


def blocks_batch_from(block: int) -> int:
    """The batch from which tasks take blocks of ``block`` elements: ``block - 1`` (the
    block's last element is repeated, computed and not stored), but never a block of
    two for a single element."""
    return max(block - 1, 2)
