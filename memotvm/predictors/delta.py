"""Delta execution's description: its decisions, costs and data sizes (its kernel code
is :mod:`memotvm.kernels.schemes.delta`)."""

from __future__ import annotations

from .base import Predictor

# Delta execution updates the input parts by W's transmitted columns while W and R (as
# float32 columns, per direction) fit in this many bytes; beyond, the columns of both
# no longer stay in the last-level cache, and the input parts come from the projection
# of x's transmitted copies instead (DeltaExecution.projects_input).
DELTA_COLUMN_BYTES = 4 << 20


class DeltaExecution(Predictor):
    """Delta execution (Neil et al., Delta Networks, ICML 2017), not a predictor but the
    competing scheme, run by the same pass with its own threshold per node and direction.

    Per chain every input vector of the layer (x_t, h_{t-1}, and r_t (.) h_{t-1} for
    the GRU candidate with linear_before_reset = 0) keeps its last transmitted copy; a
    component whose change since then reaches the threshold is transmitted, and the
    pre-activations, which start from the biases, are updated by the transmitted
    columns only: a_j += W[j, k] (x_k - x^_k).  For large layers (:meth:`projects_input`)
    the input parts are instead the projection of x's transmitted copies, W x^ + Wb,
    which the column updates of W sum to.  Counts are multiply-adds: computed = rows x
    transmitted columns, reused = rows x the others.
    """

    name = "delta"
    scheme = "delta"

    @staticmethod
    def projects_input(loop) -> bool:
        """Whether the input parts are the projection of x's transmitted copies (W and R
        as float32 columns exceed DELTA_COLUMN_BYTES per direction) rather than updated
        by W's transmitted columns.  Both give W x^ + Wb up to rounding; the kernel and
        the reference make the same choice."""
        return 4 * loop.rows * (loop.input_size + loop.hidden_size) > DELTA_COLUMN_BYTES

    def skipped_share(self, loop):
        return 1.0

    def extra_cost(self, loop):
        return loop.input_size + loop.hidden_size  # one comparison per component

    def data_bytes(self, loop):
        columns = loop.hidden_size + (0 if self.projects_input(loop) else loop.input_size)
        return 4 * loop.num_directions * loop.rows * columns
