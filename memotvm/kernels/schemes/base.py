"""The interface between the kernel's step skeleton and an execution scheme.

The builder (:class:`memotvm.kernels.builder.KernelBuilder`) owns what every kernel
has: the time loop, the parallel tasks of a step, the input projection, the cell update
and the counts.  A scheme decides how a step evaluates its neurons (their dot products)
and what state it keeps for that between steps: the unmodified kernel computes every
neuron, memoization lets a predictor skip some, delta execution adds transmitted
columns, the oracle computes everything and keeps old values where the true change
was small.  The builder calls the hooks below at fixed points; a hook that a scheme
does not need emits nothing.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T


class Scheme:
    """How a kernel evaluates its neurons; see the module docstring."""

    # Neurons keep input parts of earlier steps (in the builder's ``a``, the memo table's
    # a_j); else the cell update reads this step's input projection.
    keeps_input_parts = False
    # The input parts come from the projection of a chunk of steps (computed by the
    # builder before the step's tasks, every chunk of steps).
    uses_projection = True
    # A task takes a block of batch elements (tiling.batch_block) whose products share their
    # weight loads (else one element).
    blocks_batch = True
    # Chains may run as independent streams, each worker all the steps of its own
    # (KernelBuilder.stream_loop): the scheme emits nothing per step outside a task's
    # chains (no begin_step, before_projection or after_reset_phase).
    streams = False

    def __init__(self, kb):
        self.kb = kb

    # -- parameters and state -------------------------------------------------------

    def declare(self) -> None:
        """Declare the kernel parameters that follow the node's inputs."""

    def allocate(self) -> None:
        """Allocate the scheme's buffers (after the builder's own)."""

    def chunk_values_per_row(self) -> int:
        """Values the scheme keeps per step of a projection chunk and chain, beside the
        projection's rows (they count towards the chunk's size)."""
        return 0

    def initialise_chain(self, d, b) -> None:
        """Start chain (d, b) (after its initial state is loaded)."""

    def initialise(self) -> None:
        """Start the call, after every chain's initialise_chain."""

    # -- one step ---------------------------------------------------------------------

    def before_projection(self, s) -> None:
        """Emitted before the input projection of the chunk of steps from s."""

    def projected_vector(self, d, b, s):
        """The (buffer, index prefix) the projection of chain (d, b) reads at step s,
        or None for x_t."""
        return None

    def begin_step(self, s) -> None:
        """Emitted before the tasks of step s."""

    def after_reset_phase(self, s) -> None:
        """Emitted after the GRU reset phase of step s (linear_before_reset = 0)."""

    def evaluate_block(self, d, ub, block, s, gates, u_buf) -> bool:
        """Evaluate the neurons ``gates`` of unit block ub for a task's block of batch
        elements; return False to evaluate each element with evaluate_element."""
        raise NotImplementedError

    def evaluate_element(self, d, ub, b, s, t, gates, u_ref) -> None:
        """Evaluate the neurons of one element at a valid step (position t)."""
        raise NotImplementedError

    def stored_units(self, src, prefix, ub) -> None:
        """A task stored its units (block ub) of h or r (.) h at src[prefix]."""

    def carried_units(self, d, b, ub, prev, nxt) -> None:
        """A task carried its units of h past the end of element b's sequence."""

    # -- the memo table between calls -------------------------------------------------

    def carried(self) -> list:
        """(field name, read(d, b, k), write(d, b, k, value)) for each field of the
        memo table (:mod:`memotvm.kernels.memo_table`) this scheme keeps: what a
        streaming session carries from one call to the next.  Read at the end of a
        call, written at its start (after initialise_chain) where a table resumes."""
        return []

    def may_reuse(self, d, b, s):
        """Whether chain (d, b) has a table to reuse from at step s: after its first
        step, or from the start where it continues an earlier call's table."""
        return tirx.Or(s > tirx.const(0, "int64"), self.kb.resumed[d, b] != tirx.const(0, "int64"))


def small_change(q, qm, thr, floor):
    """|q - qm| / max(|qm|, floor) < thr, evaluated in float64 (as the reference does):
    the decision of every memoizing scheme."""
    q64, qm64 = tirx.Cast("float64", q), tirx.Cast("float64", qm)
    scale = tirx.max(tirx.abs(qm64), tirx.const(floor, "float64"))
    return tirx.abs(q64 - qm64) < thr * scale


def buffer_field(buf, parity=None):
    """(read, write) of a memo-table field held in ``buf`` [directions, batch, n] (or
    [parity, directions, batch, n], at the given parity expression of the step)."""
    def index(d, b, k, at):
        return [at, d, b, k] if parity is not None else [d, b, k]

    def read(d, b, k):
        return buf[tuple(index(d, b, k, parity[1] if parity else None))]

    def write(d, b, k, value):
        T.buffer_store(buf, tirx.Cast(buf.dtype, value), index(d, b, k, parity[0] if parity else None))

    return read, write
