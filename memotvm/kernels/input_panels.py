"""W in panels: the layout the input projection reads a constant W in.

The input projection of a chunk of steps, ``W_j . x_t + Wb_j`` for every row j and step
t, is a matrix product of the steps' inputs by W's transpose.  Read from W as ONNX
stores it, each product is a dot product along a row, whose lanes are then summed (a
dozen shuffles and adds per four rows and four steps, against 32 multiply-adds at D =
64).  With W's rows as the columns of :mod:`.panels` (each panel [D, width x lanes]),
the projection runs on the register tile of the host's matrix products instead: per k
one broadcast of each of four steps' x_k and one load per vector of rows, no lane sums.
Each ``W_j . x_t`` is then summed in order of k.

Every kernel of a model reads the same projection (the memoized kernels' input parts
are its values), so the order of summation of the input parts is the same in all of
them whichever layout W comes in; the oracle reads it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..precision import bf16_pairs
from .panels import panel_widths
from .tiling import vector_lanes

if TYPE_CHECKING:
    from ..frontend.recurrent import RecurrentLoop


def has_input_panels(loop: RecurrentLoop) -> bool:
    """Whether the kernels of ``loop`` can read W in panels: float32 accumulation (the
    register tile's)."""
    return loop.dtype in ("float32", "float16")


def input_panels_shape(loop: RecurrentLoop, pairs: bool = False) -> tuple:
    """[directions, the panels of all rows one after another] (``pairs``: of bf16-act's
    words, ceil(D / 2) per row)."""
    columns = sum(panel_widths(loop.rows)) * vector_lanes()
    depth = -(-loop.input_size // 2) if pairs else loop.input_size
    return (loop.num_directions, columns * depth)


def pack_input_panels(W: np.ndarray, pairs: bool = False) -> np.ndarray:
    """W [directions, rows, D] (of any dtype) as :func:`input_panels_shape`: per
    direction, W's transpose [D, rows] cut into panels of :func:`panel_widths` vectors
    of rows (the target's, see ``vector_lanes``), each panel [D, width x lanes]
    contiguous, the rows past the last zero.

    ``pairs`` (W bfloat16, precision bf16-act): each row's values 2k and 2k + 1 as one
    int32 word (:func:`memotvm.precision.bf16_pairs`, a zero after an odd D's last), so
    that the panels are [ceil(D / 2), width x lanes] words."""
    if pairs:
        W = bf16_pairs(W)
    nd, rows, D = W.shape
    lanes = vector_lanes()
    widths = panel_widths(rows)
    columns = np.zeros((nd, D, sum(widths) * lanes), W.dtype)
    columns[:, :, :rows] = W.transpose(0, 2, 1)
    panels, col = [], 0
    for width in widths:
        panels.append(columns[:, :, col:col + width * lanes].reshape(nd, -1))
        col += width * lanes
    return np.ascontiguousarray(np.concatenate(panels, axis=1))
