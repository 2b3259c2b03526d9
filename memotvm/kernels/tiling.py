"""How a recurrent-loop kernel tiles its work: vector lanes, blocks of rows, steps, units
and batch elements.

These numbers shape every kernel (and the weight layouts packed for them at compile
time), so they live in one leaf module that the builder, the schemes and the layouts
share.
"""

from __future__ import annotations

from tvm import tirx

WORD_BITS = 64
# float32 lanes of one accumulator: one AVX-512 register, two AVX2 registers.
LANES = 16
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


def i64(v):
    return tirx.const(v, "int64")


def unit_block(loop) -> int:
    """Hidden units per task."""
    return min(UNIT_BLOCK, loop.hidden_size)
