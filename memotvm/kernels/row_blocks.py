"""R in row blocks: the layout the unmodified kernel reads R in when it can.

The unmodified kernel computes ROW_BLOCK consecutive rows at a time; read from R as ONNX
stores it, that is ROW_BLOCK streams through memory.  Packed at compile time so that the
block's rows follow one another per vector (:func:`pack_row_blocks`), it is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .tiling import ROW_BLOCK

if TYPE_CHECKING:
    from ..frontend.recurrent import RecurrentLoop


def has_row_blocks(loop: RecurrentLoop) -> bool:
    """Whether R can be given to the unmodified kernel as :func:`pack_row_blocks`: every
    unit block then splits into whole blocks of ROW_BLOCK rows."""
    return loop.hidden_size % ROW_BLOCK == 0


def row_blocks_shape(loop: RecurrentLoop, n: int | None = None) -> tuple:
    """The packed R of ``loop`` (rows of ``n`` values: H, or H's bf16-act words)."""
    n = loop.hidden_size if n is None else n
    return (loop.num_directions, loop.rows // ROW_BLOCK, ROW_BLOCK * n)


def pack_row_blocks(R: np.ndarray, lanes: int) -> np.ndarray:
    """R [directions, rows, n] as blocks of ROW_BLOCK consecutive rows, each stored
    vector-interleaved: for every whole vector of ``lanes`` columns (the kernel's), the
    block's rows one after another, then the rows' tails (n % lanes columns) one after
    another.

    The unmodified kernel computes four consecutive rows at a time; from R as it is
    that is four streams through memory, from this layout one (at batch 1 and H = 512
    or 1024, where R comes from the last-level cache every step: 4-14 % less time).  The values and
    the order in which they are summed are unchanged.  See :meth:`BlockRow.index`.
    """
    nd, rows, n = R.shape
    nb, full = rows // ROW_BLOCK, n // lanes
    blocks = R.reshape(nd, nb, ROW_BLOCK, n)
    head = blocks[..., :full * lanes].reshape(nd, nb, ROW_BLOCK, full, lanes)
    head = head.transpose(0, 1, 3, 2, 4).reshape(nd, nb, -1)
    tails = blocks[..., full * lanes:].reshape(nd, nb, -1)
    return np.ascontiguousarray(np.concatenate([head, tails], axis=-1))


@dataclass(frozen=True)
class BlockRow:
    """Row ``r`` of block ``block`` (direction ``d``) of :func:`pack_row_blocks`'s
    layout (rows of length ``n``, packed for vectors of ``lanes``), as a row operand of
    :meth:`~memotvm.kernels.products.DenseProducts.multi_dot`."""

    buf: object
    d: object
    block: object
    r: int
    n: int
    lanes: int

    def index(self, k):
        """The position of column k (a PrimExpr) in the block."""
        lanes = self.lanes
        full = self.n // lanes
        if isinstance(k, tuple):  # (whole vector, lane)
            k0, lane = k
            return (self.d, self.block, k0 * (ROW_BLOCK * lanes) + self.r * lanes + lane)
        tail = self.n - full * lanes
        return (self.d, self.block, full * ROW_BLOCK * lanes + self.r * tail + (k - full * lanes))

