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
# Hidden units per task.
UNIT_BLOCK = 64
# Activations whose float32 form calls a math function (not vectorized).
SCALAR_ACTIVATIONS = {"Softplus"}
# Batch elements whose recurrent products one task of the unmodified kernel computes
# together (they share every weight load), from a batch of BATCH_BLOCK - 1 on.
BATCH_BLOCK = 4
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
    return tirx.const(v, "int64")


def unit_block(loop) -> int:
    """Hidden units per task."""
    return min(UNIT_BLOCK, loop.hidden_size)
