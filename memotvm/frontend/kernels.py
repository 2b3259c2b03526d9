"""Recurrent-loop kernels: one TIR PrimFunc per ONNX recurrent node.

A kernel holds the whole time loop of a layer.  Its structure is what the memoization
pass relies on and what makes it fast on a CPU:

* the time loop is serial and runs inside one parallel launch; inside a step the work
  is split into *tasks*, one per (direction, block of hidden units, block of batch
  elements), which are independent within a step and run in parallel (at batch 1 both
  directions and all unit blocks still give the cores work), with a barrier between
  phases; from a batch of BATCH_BLOCK - 1 on a block has BATCH_BLOCK elements, whose
  recurrent products share every weight load (the oracle's blocks are single
  elements);
* a task evaluates the neurons (gate rows) of its units, then applies the cell update
  of :mod:`memotvm.cells` to them; h is double-buffered (read step s-1, write step s);
* each neuron's dot products live in two persistent buffers, ``input_part``
  (a_j = W_j x_t + Wb_j) and ``recurrent_part`` (b_j = R_j u_j + Rb_j); where no neuron
  keeps an earlier step's input part (the unmodified kernel, delta execution with
  projected inputs) the cell update reads a_j from the projection instead.

Kernels compute the input parts of many steps at once (a matrix product, blocked four
rows by four steps, that reads each weight row from memory once per chunk of steps: the
whole sequence when its projection fits in ``PROJECTION_BYTES``) and the recurrent
parts four rows at a time.  Memoization
(``memo`` given) changes only the neuron evaluations: a predictor decides per neuron, the
neurons to compute (for any element of a block) are compacted into a list and evaluated
four at a time, and a reused neuron simply keeps its values, so the dot-product buffers
*are* the memo table.  Delta
execution adds a phase per step that lists the transmitted components of x and u once
per block of batch elements; the unit blocks then add those columns.  (The
memoized kernel still computes every input projection in the matrix product, which
costs less than computing the needed ones row by row; a reused neuron keeps its cached
input part as the spec says, so results and decisions are unaffected.)  Every dot
product, wherever it is computed, accumulates in the same lanes in the same order, so a
memoized kernel at threshold 0 is bit-identical to the unmodified one.

Kernel arguments, in order: X (layout 0), W, R (or, in a kernel built with
``row_blocks``, R in the layout of :func:`pack_row_blocks`), then the optional inputs
the node has (B, sequence_lens, initial_h, initial_c, P; layout 0), then the
predictor's weight data (for BNN the packed sign bits of W and R), for a memoized
kernel its thresholds (float64, one per direction), then the outputs Y, Y_h, [Y_c],
``stats`` (int64 [directions, batch, gates, 2]: computed and reused evaluations) and
``status`` (int32 [directions, batch]: 1 where the element's sequence length was out of range).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T_script
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .. import cells
from ..predictors import BnnPredictor, get_predictor, words
from .recurrent import RecurrentLoop

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


@dataclass(frozen=True)
class MemoPlan:
    """What the memoization pass asks of one kernel.

    ``predictor`` names a predictor of :mod:`memotvm.predictors` ("bnn",
    "lowrank:8", ...) or "oracle"; ``thresholds`` has one finite value >= 0 per
    direction.
    """

    predictor: str
    thresholds: tuple


def has_row_blocks(loop: RecurrentLoop) -> bool:
    """Whether R can be given to the unmodified kernel as :func:`pack_row_blocks`: every
    unit block then splits into whole blocks of ROW_BLOCK rows."""
    return loop.hidden_size % ROW_BLOCK == 0


def row_blocks_shape(loop: RecurrentLoop) -> tuple:
    H = loop.hidden_size
    return (loop.num_directions, loop.rows // ROW_BLOCK, ROW_BLOCK * H)


def pack_row_blocks(R: np.ndarray) -> np.ndarray:
    """R [directions, rows, n] as blocks of ROW_BLOCK consecutive rows, each stored
    vector-interleaved: for every whole vector of LANES columns, the block's rows one
    after another, then the rows' tails (n % LANES columns) one after another.

    The unmodified kernel computes four consecutive rows at a time; from R as it is
    that is four streams through memory, from this layout one (at batch 1 and H = 512
    or 1024, where R comes from the last-level cache every step: 4-14 % less time).  The values and
    the order in which they are summed are unchanged.  See :meth:`BlockRow.index`.
    """
    nd, rows, n = R.shape
    nb, full = rows // ROW_BLOCK, n // LANES
    blocks = R.reshape(nd, nb, ROW_BLOCK, n)
    head = blocks[..., :full * LANES].reshape(nd, nb, ROW_BLOCK, full, LANES)
    head = head.transpose(0, 1, 3, 2, 4).reshape(nd, nb, -1)
    tails = blocks[..., full * LANES:].reshape(nd, nb, -1)
    return np.ascontiguousarray(np.concatenate([head, tails], axis=-1))


@dataclass(frozen=True)
class BlockRow:
    """Row ``r`` of block ``block`` (direction ``d``) of :func:`pack_row_blocks`'s
    layout (rows of length ``n``), as a row operand of :meth:`KernelBuilder.multi_dot`."""

    buf: object
    d: object
    block: object
    r: int
    n: int

    def index(self, k):
        """The position of column k (a PrimExpr) in the block."""
        full = self.n // LANES
        if isinstance(k, tuple):  # (whole vector, lane)
            k0, lane = k
            return (self.d, self.block, k0 * (ROW_BLOCK * LANES) + self.r * LANES + lane)
        tail = self.n - full * LANES
        return (self.d, self.block, full * ROW_BLOCK * LANES + self.r * tail + (k - full * LANES))


class TirMath:
    """The :mod:`memotvm.cells` math backend that emits TIR expressions.

    In float32, exp, sigmoid and tanh are written out as arithmetic (Cephes' expf:
    range reduction and a degree-6 polynomial, within 2 ulp) so that the cell-update
    loops vectorize: LLVM's exp intrinsic becomes one libm call per element, which made
    the cell update the largest cost of small layers at large batches.  sigmoid and tanh
    keep the formulas TVM's own lowering uses (1 / (1 + e^-x); (1 - e) / (1 + e) with
    e = e^(-2|x|), sign restored).  float64 keeps TVM's intrinsics.
    """

    def __init__(self, dtype: str):
        self.dtype = dtype

    def const(self, v):
        return tirx.const(float(v), self.dtype)

    def bind(self, x):
        return T.bind(x)

    maximum = staticmethod(tirx.max)
    minimum = staticmethod(tirx.min)
    where = staticmethod(tirx.Select)
    abs = staticmethod(tirx.abs)
    log1p = staticmethod(tirx.log1p)

    def exp(self, x):
        if self.dtype != "float32":
            return tirx.exp(x)
        c = self.const
        p, n = self.exp_parts(tirx.min(tirx.max(x, c(-87.0)), c(88.0)))
        # n lies in [-126, 127] after the clamp: 2^n is a normal float.
        return p * self.power_of_two(n)

    def exp_parts(self, x):
        """exp(x) = p * 2^n (float32, Cephes' expf: n = round(x / ln 2), p the
        polynomial of the rest); x must lie within [-150 ln 2, 128 ln 2]."""
        c = self.const
        x = self.bind(x)
        n = self.bind(tirx.floor(x * c(1.44269504088896341) + c(0.5)))
        r = self.bind(x - n * c(0.693359375) - n * c(-2.12194440e-4))
        p = c(1.9875691500e-4)
        for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                     5.0000001201e-1):
            p = p * r + c(coef)
        return p * r * r + r + c(1.0), n

    @staticmethod
    def power_of_two(n):
        """2^n from its exponent bits, for an integral float n in [-126, 127]."""
        bits = (tirx.Cast("int32", n) + tirx.const(127, "int32")) << tirx.const(23, "int32")
        return tirx.reinterpret("float32", bits)

    def sigmoid(self, x):
        if self.dtype != "float32":
            return tirx.sigmoid(x)
        one = self.const(1.0)
        return one / (one + self.exp(-x))

    def tanh(self, x):
        if self.dtype != "float32":
            return tirx.tanh(x)
        one = self.const(1.0)
        e = self.bind(self.exp(self.const(-2.0) * tirx.abs(x)))
        t = (one - e) / (one + e)
        return tirx.Select(x >= self.const(0.0), t, -t)


def i64(v):
    return tirx.const(v, "int64")


def _named(name, value):
    IRBuilder.name(name, value)
    return value


class KernelBuilder:
    """Builds the PrimFunc of one :class:`RecurrentLoop`, plain or memoized."""

    def __init__(self, loop: RecurrentLoop, memo: MemoPlan | None = None,
                 row_blocks: bool = False):
        if row_blocks and (memo is not None or not has_row_blocks(loop)):
            raise ValueError("row_blocks: for the unmodified kernel of a hidden size "
                             f"divisible by {ROW_BLOCK}")
        self.loop = loop
        self.memo = memo
        # R comes as pack_row_blocks(R) (memoized kernels list arbitrary rows).
        self.row_blocks = row_blocks
        # Accumulate and apply the gate math in float32 at least.
        self.acc = "float64" if loop.dtype == "float64" else "float32"
        self.m = TirMath(self.acc)
        # The memo predictor (None for the oracle, which computes every neuron).
        self.predictor = get_predictor(memo.predictor) if memo else None
        # Delta execution replaces the neuron evaluations with column updates.
        self.delta = self.predictor is not None and self.predictor.scheme == "delta"
        # Delta execution with the input parts from a projection (else W's columns).
        self.x_projected = self.delta and self.predictor.projects_input(loop)
        self.unit_block = unit_block(loop)
        self.unit_blocks = -(-loop.hidden_size // self.unit_block)

    # -- entry point ---------------------------------------------------------------

    def build(self) -> tirx.PrimFunc:
        loop = self.loop
        with IRBuilder() as ib:
            with T.prim_func():
                T.func_name(kernel_name(loop, self.memo) + ("_row_blocks" if self.row_blocks else ""))
                attrs = {"tir.noalias": True, "memotvm.recurrent": loop.to_json()}
                if self.memo:
                    attrs["memotvm.memo"] = f"{self.memo.predictor}:{list(self.memo.thresholds)}"
                T.func_attr(attrs)
                self._declare_params()
                # An empty batch has nothing to compute (and its tasks would divide by 0).
                with T.If(self.batch > i64(0)):
                    with T.Then():
                        self._allocate_state()
                        self._initialise()
                        with T.attr(0, "pragma_parallel_launch_point", 1):
                            self._time_loop()
                        self._finish()
        return ib.get()

    def _time_loop(self):
        """The steps, run by every worker of one parallel launch (see _parallel)."""
        with T.serial(0, self.seq) as s:
            _named("step", s)
            if self._uses_projection:
                with T.If(s % self.chunk == 0):
                    with T.Then():
                        if self.x_projected:
                            self._transmitted_inputs(s)
                        self._input_projection(s)
            if self.delta:
                self._delta_selection(s, self.h, parts=(1,) if self.x_projected else (0, 1))
            if self._gru_reset_first:
                self._parallel_tasks(s, self._gru_reset_phase)
                if self.delta:
                    # The candidate reads r (.) h, complete only now (x's list stays).
                    self._delta_selection(s, self.rh, parts=(1,))
            self._parallel_tasks(s, self._main_phase)

    @staticmethod
    @contextmanager
    def _parallel(extent):
        """A parallel loop of the time loop, followed by a barrier.

        The time loop runs inside one parallel launch (the "parallel_launch_point"
        pragma): every worker walks the steps, takes its share of each parallel loop
        and waits at the barrier for the others.  One launch per call instead of one
        per phase and step: waking the workers costs more than a barrier (GRU 256,
        batch 1: 2.7 us of a 10.8 us step went to the second launch of each step).

        A loop of one iteration gets a second, empty one: TIR's simplifier replaces a
        loop of extent 1 by its body, which every worker of the launch would then run,
        sharing the body's local buffers (StorageRewrite allocates those outside the
        launch when no parallel loop encloses them) -- a race that corrupted the input
        projection of layers with up to 64 gate rows."""
        single = isinstance(extent, (int, tirx.IntImm)) and int(extent) == 1
        with T.attr(0, "pragma_parallel_barrier_when_finish", 1):
            with T.parallel(0, 2 if single else extent) as i:
                if not single:
                    yield i
                    return
                with T.If(i == 0):
                    with T.Then():
                        yield i

    # -- parameters and state ------------------------------------------------------

    def param(self, name, shape, dtype):
        """Declare the next kernel parameter, a buffer."""
        handle = T.arg(name, T.handle())
        return _named(name, T.match_buffer(handle, shape, dtype))

    def _declare_params(self):
        loop = self.loop
        nd, H, D, G = loop.num_directions, loop.hidden_size, loop.input_size, loop.rows
        self.seq = seq = tirx.Var("seq_length", "int64")
        self.batch = batch = tirx.Var("batch_size", "int64")
        dt = loop.dtype
        self.X = self.param("X", (seq, batch, D), dt)
        self.W = self.param("W", (nd, G, D), dt)
        self.R = self.param("R", row_blocks_shape(loop) if self.row_blocks else (nd, G, H), dt)
        self.B = self.param("B", (nd, 2 * G), dt) if loop.has("B") else None
        self.L = self.param("sequence_lens", (batch,), "int32") if loop.has("sequence_lens") else None
        self.H0 = self.param("initial_h", (nd, batch, H), dt) if loop.has("initial_h") else None
        self.C0 = self.param("initial_c", (nd, batch, H), dt) if loop.has("initial_c") else None
        self.P = self.param("P", (nd, 3 * H), dt) if loop.has("P") else None
        if self.predictor is not None:
            self.predictor.declare(self)
        if self.memo is not None:
            # Thresholds are data, not code: one compiled kernel serves every threshold
            # (calibration and sweeps run it with new values, no recompilation).
            self.thresholds = self.param("memo_thresholds", (nd,), "float64")
        self.Y = self.param("Y", (seq, nd, batch, H), dt)
        self.YH = self.param("Y_h", (nd, batch, H), dt)
        self.YC = self.param("Y_c", (nd, batch, H), dt) if loop.op == "LSTM" else None
        self.stats = self.param("stats", (nd, batch, loop.num_gates, 2), "int64")
        self.status = self.param("status", (nd, batch), "int32")

    def _allocate_state(self):
        loop, acc = self.loop, self.acc
        nd, H, G, batch = loop.num_directions, loop.hidden_size, loop.rows, self.batch
        self.h = _named("h", T.alloc_buffer((2, nd, batch, H), acc))  # [step parity, ...]
        self.c = _named("c", T.alloc_buffer((nd, batch, H), acc)) if loop.op == "LSTM" else None
        # Input parts are kept only where a neuron may reuse them (else see input_part).
        self.a = _named("input_part", T.alloc_buffer((nd, batch, G), acc)) if self._input_parts_kept else None
        self.bp = _named("recurrent_part", T.alloc_buffer((nd, batch, G), acc))
        self.rh = _named("reset_h", T.alloc_buffer((nd, batch, H), acc)) if self._gru_reset_first else None
        self.lengths = _named("lengths", T.alloc_buffer((batch,), "int64"))
        self.counts = _named("counts", T.alloc_buffer(
            (nd, batch, self.unit_blocks, loop.num_gates * 2), "int64"))
        if self._uses_projection:
            self.chunk = _named("projection_steps", T.bind(self._projection_steps()))
            self.xproj = _named("input_projection", T.alloc_buffer((self.chunk, nd, batch, G), acc))
        if self.delta:
            D = loop.input_size
            if self.x_projected:
                # x's transmitted copy runs ahead, a chunk of steps at a time: its copies
                # at the chunk's steps (whose projection gives the input parts) and how
                # many components each step transmitted.
                self.sent_x = _named("sent_x", T.alloc_buffer((nd, batch, D), acc))
                self.x_copies = _named("sent_x_steps", T.alloc_buffer((self.chunk, nd, batch, D), acc))
                self.x_sent = _named("sent_x_count", T.alloc_buffer((self.chunk, nd, batch), "int64"))
            else:
                # Last transmitted copies, double-buffered by step parity like h.
                self.sent_x = _named("sent_x", T.alloc_buffer((2, nd, batch, D), acc))
            self.sent_h = _named("sent_h", T.alloc_buffer((2, nd, batch, H), acc))
            if self._gru_reset_first:
                self.sent_rh = _named("sent_rh", T.alloc_buffer((2, nd, batch, H), acc))
            # The step's transmissions of x (part 0) and u (part 1), found once per block
            # of batch elements: the listed components (at the block's first element),
            # their changes per element (0 where an element did not transmit; the
            # rows of a block's repeated last elements are the padding) and how many
            # each element transmitted.
            # (With x_projected only u is listed: part 0 is left unused.)
            n = H if self.x_projected else max(D, H)
            self.delta_idx = _named("delta_columns", T.alloc_buffer((nd, batch, 2, n), "int64"))
            self.delta_len = _named("delta_listed", T.alloc_buffer((nd, batch, 2), "int64"))
            self.delta_val = _named("delta_values", T.alloc_buffer(
                (nd, batch + BATCH_BLOCK - 1, 2, n), acc))
            self.delta_sent = _named("delta_sent", T.alloc_buffer((nd, batch, 2), "int64"))
        elif self.memo is not None:
            if self._signs:
                # Sign bits of every input vector, packed once: x for all positions up
                # front, h (by step parity) and r (.) h by the task that computes their
                # units, one 64-bit word per unit block.
                D = loop.input_size
                self.x_signs = _named("x_signs", T.alloc_buffer((self.seq, batch, words(D)), "uint64"))
                self.h_signs = _named("h_signs", T.alloc_buffer((2, nd, batch, words(H)), "uint64"))
                if self._gru_reset_first:
                    self.rh_signs = _named("reset_h_signs", T.alloc_buffer((nd, batch, words(H)), "uint64"))
            qtype = self.predictor.q_dtype if self.predictor is not None else acc
            self.memo_q = _named("memo_q", T.alloc_buffer((nd, batch, G), qtype))
            if self.predictor is None:
                # The oracle computes every neuron, then keeps old or new values.
                self.oracle_a = _named("computed_input_part", T.alloc_buffer((nd, batch, G), acc))
                self.oracle_b = _named("computed_recurrent_part", T.alloc_buffer((nd, batch, G), acc))

    def _projection_steps(self):
        """Steps per projection chunk: all (rounded up to TIME_BLOCK) when they fit in
        PROJECTION_BYTES, else as many as fit, at least MIN_PROJECTION_STEPS; a
        multiple of TIME_BLOCK, never 0."""
        loop = self.loop
        per_row = loop.rows + (loop.input_size if self.x_projected else 0)
        per_step = loop.num_directions * per_row * (8 if self.acc == "float64" else 4)
        fit = i64(PROJECTION_BYTES // per_step) // tirx.max(self.batch, i64(1))
        steps = tirx.min(tirx.max(fit, i64(MIN_PROJECTION_STEPS)), tirx.max(self.seq, i64(1)))
        return (steps + TIME_BLOCK - 1) // TIME_BLOCK * TIME_BLOCK

    @property
    def _uses_projection(self):
        """The input parts come from the projection of all steps (of x's transmitted
        copies, for delta execution on large layers); not for the oracle, which
        computes them per neuron, nor for delta execution updating them by columns."""
        return self.memo is None or (self.predictor is not None and not self.delta) or self.x_projected

    @property
    def _signs(self):
        """Whether the predictor reads the sign bits of the input vectors."""
        return self.predictor is not None and self.predictor.reads_signs

    def sign_bits(self, ref):
        """The packed sign bits (buffer, index prefix) of the vector ``ref`` (x_t, h or
        r (.) h, as a (buffer, prefix) pair)."""
        buf, prefix = ref
        if buf is self.X:
            return self.x_signs, prefix
        if buf is self.h:
            return self.h_signs, prefix
        return self.rh_signs, prefix

    def _pack_word(self, src, src_prefix, first, count, dst, dst_idx):
        """dst[dst_idx] = the sign bits of src[src_prefix + (first + l,)], l < count
        (bit l = 1 where negative; bits from count on are 0)."""
        word = T.alloc_buffer((1,), "uint64")
        T.buffer_store(word, tirx.const(0, "uint64"), [0])
        with T.serial(0, count) as l:
            neg = self.load(src, src_prefix + (first + l,)) < self.m.const(0.0)
            bit = tirx.Select(neg, tirx.const(1, "uint64"), tirx.const(0, "uint64"))
            T.buffer_store(word, word[0] | (bit << tirx.Cast("uint64", l)), [0])
        T.buffer_store(dst, word[0], list(dst_idx))

    def _pack_unit_signs(self, src, dst, prefix, ub):
        """Word ub of dst[prefix] = the sign bits of the units of block ub of
        src[prefix] (a block is one 64-bit word: UNIT_BLOCK is 64, or H when smaller)."""
        assert self.unit_block == WORD_BITS or self.unit_blocks == 1
        first, count = self._units(ub)
        self._pack_word(src, prefix, first, count, dst, prefix + (ub,))

    def _pack_input_signs(self):
        """x_signs[t, b] = the sign bits of X[t, b], for every position (in parallel)."""
        D = self.loop.input_size
        with T.parallel(0, self.seq * self.batch) as i:
            t = T.bind(i // self.batch)
            b = T.bind(i % self.batch)
            with T.serial(0, words(D)) as w:
                count = tirx.min(i64(WORD_BITS), i64(D) - w * WORD_BITS)
                self._pack_word(self.X, (t, b), w * WORD_BITS, count, self.x_signs, (t, b, w))

    @property
    def _gru_reset_first(self):
        return self.loop.op == "GRU" and not self.loop.linear_before_reset

    def _initialise(self):
        """Clamp the lengths (reporting bad ones), load the initial state, zero counts."""
        loop, m = self.loop, self.m
        nd, H, seq = loop.num_directions, loop.hidden_size, self.seq
        with T.serial(0, self.batch) as b:
            if self.L is not None:
                raw = tirx.Cast("int64", self.L[b])
                bad = tirx.Or(raw < i64(0), raw > seq)
                flag = tirx.Select(bad, tirx.const(1, "int32"), tirx.const(0, "int32"))
                T.buffer_store(self.lengths, tirx.max(tirx.min(raw, seq), i64(0)), [b])
            else:
                flag = tirx.const(0, "int32")
                T.buffer_store(self.lengths, seq, [b])
            with T.serial(0, nd) as d:
                T.buffer_store(self.status, flag, [d, b])
                with T.serial(0, H) as k:
                    h0 = self.load(self.H0, (d, b, k)) if self.H0 is not None else m.const(0.0)
                    T.buffer_store(self.h, h0, [0, d, b, k])
                    if self.c is not None:
                        c0 = self.load(self.C0, (d, b, k)) if self.C0 is not None else m.const(0.0)
                        T.buffer_store(self.c, c0, [d, b, k])
                with T.grid(self.unit_blocks, loop.num_gates * 2) as (ub, g):
                    T.buffer_store(self.counts, i64(0), [d, b, ub, g])
                if self.delta:
                    self._initialise_delta(d, b)
                if self._signs:
                    with T.serial(0, self.unit_blocks) as ub:
                        self._pack_unit_signs(self.h, self.h_signs, (0, d, b), ub)
        if self._signs:
            self._pack_input_signs()

    def _initialise_delta(self, d, b):
        """Parts start from the biases, transmitted copies from 0."""
        loop, zero = self.loop, self.m.const(0.0)
        with T.serial(0, loop.rows) as j:
            if not self.x_projected:  # else the projection sets them at every step
                T.buffer_store(self.a, self._with_bias(zero, d, j, "W"), [d, b, j])
            T.buffer_store(self.bp, self._with_bias(zero, d, j, "R"), [d, b, j])
        sent = [(self.sent_h, loop.hidden_size)]
        if self._gru_reset_first:
            sent.append((self.sent_rh, loop.hidden_size))
        if self.x_projected:
            with T.serial(0, loop.input_size) as k:
                T.buffer_store(self.sent_x, zero, [d, b, k])
        else:
            sent.append((self.sent_x, loop.input_size))
        for buf, n in sent:
            with T.serial(0, n) as k:
                T.buffer_store(buf, zero, [0, d, b, k])

    def _finish(self):
        loop = self.loop
        nd, H = loop.num_directions, loop.hidden_size
        last = self.seq % 2
        zero = self.m.const(0.0)
        with T.grid(nd, self.batch) as (d, b):
            # An element of length 0 has no last state: Y_h and Y_c are 0 (as in
            # onnxruntime), not the initial state.
            empty = self.lengths[b] == i64(0)
            with T.serial(0, H) as k:
                self.store(self.YH, tirx.Select(empty, zero, self.h[last, d, b, k]), (d, b, k))
                if self.YC is not None:
                    self.store(self.YC, tirx.Select(empty, zero, self.c[d, b, k]), (d, b, k))
            with T.serial(0, loop.num_gates) as g:
                for slot in (0, 1):
                    total = i64(0)
                    for ub in range(self.unit_blocks):
                        total = total + self.counts[d, b, ub, g * 2 + slot]
                    T.buffer_store(self.stats, total, [d, b, g, slot])

    # -- helpers -------------------------------------------------------------------

    def load(self, buf, idx):
        v = buf[tuple(idx)]
        return v if buf.dtype == self.acc else tirx.Cast(self.acc, v)

    def store(self, buf, value, idx):
        if buf.dtype != self.acc and buf.dtype in ("float16", "float32", "float64"):
            value = tirx.Cast(buf.dtype, value)
        T.buffer_store(buf, value, list(idx))

    def _lane_sums(self, rows, vecs, n):
        """The accumulators of ``rows`` x ``vecs`` (see :meth:`multi_dot`) over the
        whole vectors of the last axis, vector-major: row r . vec v is in
        ``accs[v * len(rows) + r]``."""
        nr, nv = len(rows), len(vecs)
        # One small buffer per accumulator: each stays on the stack (TVM moves buffers
        # of 1 KiB and more to the heap) and LLVM keeps it in a register.
        accs = [T.alloc_buffer((LANES,), self.acc) for _ in range(nr * nv)]
        for acc in accs:
            with T.vectorized(0, LANES) as lane:
                T.buffer_store(acc, self.m.const(0.0), [lane])
        full = n // LANES
        if full:
            with T.serial(0, full) as k0:
                with T.vectorized(0, LANES) as lane:
                    k = k0 * LANES + lane
                    xs = [self.load(buf, pre + (k,)) for buf, pre in vecs]
                    for r, row in enumerate(rows):
                        w = self._row_value(row, k, (k0, lane))
                        for v in range(nv):
                            acc = accs[v * nr + r]
                            T.buffer_store(acc, acc[lane] + w * xs[v], [lane])
        return accs

    def _row_value(self, row, k, vector_k=None):
        """Column k of a row operand: a (buffer, index prefix) pair, or a
        :class:`BlockRow` (``vector_k``: k as (whole vector, lane))."""
        if isinstance(row, BlockRow):
            return self.load(row.buf, row.index(vector_k if vector_k is not None else k))
        buf, prefix = row
        return self.load(buf, prefix + (k,))

    def multi_dot(self, rows, vecs, n):
        """Dot products of several rows with several vectors, sharing their loads.

        ``rows`` and ``vecs`` are (buffer, index prefix) pairs over a last axis of
        length n (a row may also be a :class:`BlockRow`).  Returns
        ``[[row . vec for vec in vecs] for row in rows]``, each bound to a variable.  Every product accumulates lane k % LANES in order of k, then
        the lanes are summed by halving (:meth:`_lane_totals`) and the tail
        (n % LANES) added in order: the same arithmetic whatever rows or vectors it is
        grouped with.
        """
        nr = len(rows)
        totals, _ = self._lane_totals(self._lane_sums(rows, vecs, n))
        full = n // LANES
        out = []
        for r, row in enumerate(rows):
            row_out = []
            for v, (vbuf, vpre) in enumerate(vecs):
                total = totals[v * nr + r]
                if n % LANES:
                    # The tail, added in order (a loop: unrolled it bloats the code).
                    tail = T.alloc_buffer((1,), self.acc)
                    T.buffer_store(tail, total, [0])
                    with T.serial(full * LANES, n) as k:
                        prod = self._row_value(row, k) * self.load(vbuf, vpre + (k,))
                        T.buffer_store(tail, tail[0] + prod, [0])
                    total = tail[0]
                row_out.append(T.bind(total))
            out.append(row_out)
        return out

    def dot_vector(self, rows, vecs, n):
        """:meth:`multi_dot`'s values as one buffer of LANES values, row r . vec v in
        lane ``v * len(rows) + r``: consecutive rows of a vector are consecutive lanes,
        which the caller stores (with their biases) as vectors instead of one by one.
        Where :meth:`vector_rows` allows (no tail, at most LANES products)."""
        assert self.vector_rows(len(rows), len(vecs), n)
        _, (buf,) = self._lane_totals(self._lane_sums(rows, vecs, n))
        return buf

    def vector_rows(self, n_rows, n_vecs, n):
        """Whether rows . vecs can come from :meth:`dot_vector`."""
        return n % LANES == 0 and n_rows > 1 and n_rows * n_vecs <= LANES

    def _lane_totals(self, accs):
        """The sums of the lanes of each accumulator, all in one tree of vector shuffles.

        Each accumulator is summed by halving: s[l] += s[l + w/2] for w = LANES, ...,
        2, so a product's total is the same whether its accumulator is reduced alone or
        with others.  Two vectors of g groups of width w become one vector of 2g groups
        of width w/2 (two two-source shuffles and an add), so reducing 16 accumulators
        costs 15 vector adds instead of 15 scalar adds each.  Returns the totals and
        the buffers holding them (one, whose lane i is accs[i]'s total, for at most
        LANES accumulators).
        """
        V, vt = LANES, f"{self.acc}x{LANES}"
        # (vector, accumulator index per group or None for padding), groups of width w
        level = [(acc.vload([0], vt), [i]) for i, acc in enumerate(accs)]
        w = V
        while w > 1:
            half = w // 2
            nxt = []
            for i in range(0, len(level), 2):
                p, p_ids = level[i]
                q, q_ids = level[i + 1] if i + 1 < len(level) else (p, [None] * len(p_ids))
                lo, hi = [], []
                for offset, ids in ((0, p_ids), (V, q_ids)):
                    for g in range(len(ids)):
                        lo += [offset + g * w + k for k in range(half)]
                        hi += [offset + g * w + half + k for k in range(half)]
                pick = lambda idx: tirx.Shuffle([p, q], [tirx.IntImm("int32", x) for x in idx])
                nxt.append((T.bind(pick(lo) + pick(hi)), p_ids + q_ids))
            level, w = nxt, half
        totals, bufs = [None] * len(accs), []
        for vec, ids in level:
            buf = T.alloc_buffer((V,), self.acc)
            T.buffer_store(buf, vec, [tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), V)])
            bufs.append(buf)
            for lane, i in enumerate(ids):
                if i is not None:
                    totals[i] = buf[lane]
        return totals, bufs

    def input_projection(self, d, b, s, j):
        """W_j x_t + Wb_j of chain (d, b) at step s, from the projection buffer."""
        return self.xproj[s % self.chunk, d, b, j]

    @property
    def _input_parts_kept(self):
        """Whether neurons keep input parts of earlier steps (memoized kernels); the
        unmodified kernel and delta execution with projected inputs read this step's
        from the projection."""
        return self.memo is not None and not self.x_projected

    def input_part(self, d, b, s, j):
        """Neuron j's input part at step s, as the cell update reads it."""
        return self.a[d, b, j] if self._input_parts_kept else self.input_projection(d, b, s, j)

    def _with_bias(self, value, d, j, which):
        """value + Wb_j (which = "W") or + Rb_j (which = "R"), when the node has B."""
        if self.B is None:
            return value
        return value + self.load(self.B, (d, j if which == "W" else self.loop.rows + j))

    @staticmethod
    def _in_row_blocks(start, stop, emit, block=ROW_BLOCK):
        """emit(i, n) for i = start, start+block, ... with n = block (ROW_BLOCK), then
        singly for the remainder: the loop shape of every blocked dot-product
        computation."""
        nblocks = T.bind((stop - start) // block)
        with T.serial(0, nblocks) as q:
            emit(start + q * block, block)
        with T.serial(start + nblocks * block, stop) as i:
            emit(i, 1)

    def _project_rows(self, d, b, s, j0, n, store):
        """store(j, tb, W_j . x + Wb_j) for the rows j0 .. j0+n-1 and steps s ..
        s+TIME_BLOCK-1 of chain (d, b) (j may be a vector of rows); a step past the
        element's length reads a clamped position (its value is never used)."""
        vecs = []
        for tb in range(TIME_BLOCK):
            if self.x_projected:
                # x's transmitted copy at that step (see _transmitted_inputs).
                vecs.append((self.x_copies, ((s + tb) % self.chunk, d, b)))
                continue
            _, t = self._time_index(d, b, s + tb)
            t = T.bind(tirx.max(tirx.min(t, self.seq - 1), i64(0)))
            vecs.append((self.X, (t, b)))
        D = self.loop.input_size
        if n > 1 and D < LANES:
            # No whole vectors of x: the products of the consecutive rows as vectors,
            # each summed in order of k from 0, as multi_dot sums a tail.  The sum
            # starts from a zero in memory, as there: TVM drops "0.0 + w x", and LLVM
            # would then fuse w x + Wb into one rounding (D = 1).
            zero = T.alloc_buffer((1,), self.acc)
            T.buffer_store(zero, self.m.const(0.0), [0])
            with T.vectorized(0, n) as r:
                j = j0 + r
                for tb, (buf, pre) in enumerate(vecs):
                    total = zero[0]
                    for k in range(D):
                        total = total + self.load(self.W, (d, j, k)) * self.load(buf, pre + (k,))
                    store(j, tb, self._with_bias(total, d, j, "W"))
            return
        js = [T.bind(j0 + r) for r in range(n)]
        rows = [(self.W, (d, j)) for j in js]
        if self.vector_rows(n, len(vecs), D):
            # Each step's values are stored as one vector.
            sums = self.dot_vector(rows, vecs, D)
            with T.vectorized(0, n) as r:
                j = j0 + r
                for tb in range(TIME_BLOCK):
                    store(j, tb, self._with_bias(sums[tb * n + r], d, j, "W"))
            return
        sums = self.multi_dot(rows, vecs, D)
        for r, j in enumerate(js):
            for tb in range(TIME_BLOCK):
                store(j, tb, self._with_bias(sums[r][tb], d, j, "W"))

    def _time_index(self, d, b, s):
        """(valid, t): whether step s of chain (d, b) is in its sequence, and which
        position of X it reads (reverse directions run backwards from their length)."""
        length = self.lengths[b]
        valid = s < length
        if self.loop.direction == "bidirectional":
            # d is 0 (forward) or 1 (reverse): arithmetic, not a Select, keeps the
            # index analysis of TVM's lowering cheap.
            t = s + d * (length - 1 - 2 * s)
        elif self.loop.direction == "reverse":
            t = length - 1 - s
        else:
            t = s
        return valid, t

    def _directional(self, d, emit):
        """Emit per-direction code: once if both directions share their settings, else
        once per direction behind a branch on d (emit receives the direction index
        whose settings apply)."""
        loop = self.loop
        if loop.num_directions == 1 or self._same_settings():
            emit(0)
            return
        with T.If(d == i64(0)):
            with T.Then():
                emit(0)
            with T.Else():
                emit(1)

    def _same_settings(self):
        if self.loop.num_directions == 1:
            return True
        acts = self.loop.activations
        return acts[0] == acts[1]

    # -- the input projection of the unmodified kernel -------------------------------

    def _input_projection(self, s):
        """input_projection[i, d, b, j] = W_j . x_t + Wb_j for steps s + i of a chunk.

        A task owns 64 rows and computes them for all those steps, four rows times four
        steps per block: its weight rows stay in cache, so W is read from memory once
        per chunk.  Steps past an element's length (or the sequence)
        read a clamped position and are never used.
        """
        loop = self.loop
        nd, G = loop.num_directions, loop.rows
        per_task = ROW_BLOCK * 16  # rows per task: large enough to amortise the launch
        ntasks = -(-G // per_task)
        blocks = T.bind(tirx.min(self.chunk // TIME_BLOCK,
                                 (self.seq - s + TIME_BLOCK - 1) // TIME_BLOCK))
        with self._parallel(nd * ntasks) as task:
            d = T.bind(task // ntasks) if nd > 1 else i64(0)
            first = T.bind((task % ntasks) * per_task)
            last = T.bind(tirx.min(first + per_task, i64(G)))
            with T.grid(self.batch, blocks) as (b, sb):

                def store(j, tb, value):
                    T.buffer_store(self.xproj, value, [sb * TIME_BLOCK + tb, d, b, j])

                # Without whole vectors of x, rows are summed as vectors (see
                # _project_rows): a block of them fills one.
                block = LANES if loop.input_size < LANES else ROW_BLOCK
                self._in_row_blocks(first, last, lambda j0, n: self._project_rows(
                    d, b, s + sb * TIME_BLOCK, j0, n, store), block)

    # -- the tasks of one step -------------------------------------------------------

    def _parallel_tasks(self, s, phase, parts=None):
        """Run ``phase(d, ub, block, s)`` for every direction, unit block and block of
        batch elements; with ``parts``, ``phase(d, part, block, s)`` for part <
        ``parts`` instead of the unit blocks.

        A task takes BATCH_BLOCK elements once the batch has BATCH_BLOCK - 1 (the last
        block repeats the last element, computed but not stored), so that their
        products (delta's column updates) share the weight loads; the oracle's tasks
        take one element.  ``block`` is
        (first element, elements per block, the elements whose products are computed)."""
        if self.memo is not None and self.predictor is None:
            self._task_loop(s, phase, 1, parts)
            return
        with T.If(self.batch >= i64(BATCH_BLOCK - 1)):
            with T.Then():
                self._task_loop(s, phase, BATCH_BLOCK, parts)
            with T.Else():
                self._task_loop(s, phase, 1, parts)

    def _task_loop(self, s, phase, nb, parts):
        nd = self.loop.num_directions
        nub = self.unit_blocks if parts is None else parts
        # Never 0, so that no division by it can trap, even hoisted out of the guard
        # for empty batches (the loop has no iteration then).
        batch = tirx.max(self.batch, i64(1))
        blocks = T.bind((batch + nb - 1) // nb) if nb > 1 else batch
        with self._parallel(nd * nub * blocks) as task:
            d = T.bind(task // (nub * blocks)) if nd > 1 else i64(0)
            if parts is None:
                # Unit blocks outer: each worker reads a share of the weights.
                ub = T.bind((task // blocks) % nub) if nub > 1 else i64(0)
                b0 = T.bind((task % blocks) * nb)
            else:
                # Parts inner: their work differs, so each worker takes all of some
                # blocks of elements.
                ub = T.bind(task % nub) if nub > 1 else i64(0)
                b0 = T.bind((task // nub % blocks) * nb)
            if nb == 1:
                elems = [b0]
            else:
                elems = [T.bind(tirx.min(b0 + i, batch - 1)) for i in range(nb)]
            phase(d, ub, (b0, nb, elems), s)

    def _each_element(self, block, body):
        """body(b) for each element of a task's block that is in the batch (a loop, so
        that the per-element code is emitted once)."""
        b0, nb, _ = block
        if nb == 1:
            body(b0)
            return
        with T.serial(0, tirx.min(i64(nb), self.batch - b0)) as i:
            body(T.bind(b0 + i))

    def _unit_loop(self, count):
        """The loop over a block's units: vectorized when every block is whole and the
        gate math is plain float32 arithmetic.  (Calls such as log1p, or float64's
        exp, would be scalarized inside the vector loop, and TVM's vectorizer then
        loses the bindings of the cell math.)"""
        acts = {act.name for per_dir in self.loop.activations for act in per_dir}
        if self.loop.hidden_size % self.unit_block == 0 and self.acc == "float32" \
                and not acts & SCALAR_ACTIVATIONS:
            return T.vectorized(0, self.unit_block)
        return T.serial(0, count)

    def _units(self, ub):
        """(first unit, number of units) of unit block ub."""
        U, H = self.unit_block, self.loop.hidden_size
        first = ub * U
        count = tirx.min(i64(U), i64(H) - first) if H % U else i64(U)
        return first, count

    def _if_valid(self, d, b, s, body, invalid=None):
        """body(t) if step s of chain (d, b) is in its sequence, else invalid()."""
        valid, t = self._time_index(d, b, s)
        with T.If(valid):
            with T.Then():
                body(T.bind(t))
            if invalid is not None:
                with T.Else():
                    invalid()

    def _gru_reset_phase(self, d, ub, block, s):
        """GRU with linear_before_reset = 0: evaluate z and r of this block's units and
        store r (.) h, which every candidate neuron of the next phase reads."""
        H = self.loop.hidden_size
        prev = s % 2
        first, count = self._units(ub)
        blocked = self._evaluate_block(d, ub, block, s, (0, 1), self.h)

        def element(b):
            def reset(t):
                if not blocked:
                    self._oracle_neurons(d, ub, b, s, t, (0, 1), self._u_ref(self.h, d, b, s))
                with self._unit_loop(count) as u:
                    k = first + u
                    pre = self.input_part(d, b, s, H + k) + self.bp[d, b, H + k]
                    r = cells.gru_reset(self.m, self.loop.activations[0], pre, self.loop.clip)
                    if not self._same_settings():
                        r2 = cells.gru_reset(self.m, self.loop.activations[1], pre, self.loop.clip)
                        r = tirx.Select(d == i64(0), r, r2)
                    T.buffer_store(self.rh, r * self.h[prev, d, b, k], [d, b, k])
                if self._signs:
                    self._pack_unit_signs(self.rh, self.rh_signs, (d, b), ub)

            self._if_valid(d, b, s, reset)

        self._each_element(block, element)

    def _main_phase(self, d, ub, block, s):
        """Evaluate this block's (remaining) neurons and update its units' state."""
        loop = self.loop
        prev, nxt = s % 2, (s + 1) % 2
        first, count = self._units(ub)
        # GRU with linear_before_reset = 0: the candidate gate is left, and reads r (.) h.
        gates, u_buf = ((2,), self.rh) if self._gru_reset_first else (tuple(range(loop.num_gates)), self.h)
        blocked = self._evaluate_block(d, ub, block, s, gates, u_buf)

        def element(b):
            def update(t):
                if not blocked:
                    self._oracle_neurons(d, ub, b, s, t, gates, self._u_ref(u_buf, d, b, s))

                def emit(dd):
                    with self._unit_loop(count) as u:
                        self._cell_update(loop.activations[dd], d, b, s, first + u, prev, nxt)

                self._directional(d, emit)
                with self._unit_loop(count) as u:
                    k = first + u
                    self.store(self.Y, self.h[nxt, d, b, k], (t, d, b, k))
                if self._signs:
                    self._pack_unit_signs(self.h, self.h_signs, (nxt, d, b), ub)

            def carry():
                # Past this element's length: carry the state, Y is zero (the same
                # positions for both directions).
                with T.serial(0, count) as u:
                    k = first + u
                    T.buffer_store(self.h, self.h[prev, d, b, k], [nxt, d, b, k])
                    T.buffer_store(self.Y, tirx.const(0.0, loop.dtype), [s, d, b, k])
                if self._signs:
                    T.buffer_store(self.h_signs, self.h_signs[prev, d, b, ub], [nxt, d, b, ub])

            self._if_valid(d, b, s, update, carry)

        self._each_element(block, element)

    def _evaluate_block(self, d, ub, block, s, gates, u_buf):
        """Evaluate the neurons of a task's whole block of batch elements (all schemes
        but the oracle).  Returns whether it did; if not, each element evaluates its
        own."""
        if self.memo is None:
            self._dense_neurons(d, ub, block, s, gates, u_buf)
            return True
        if self.delta:
            self._delta_block(d, ub, block, s, gates)
            return True
        if self.predictor is not None:
            self._memo_block(d, ub, block, s, gates, u_buf)
            return True
        return False

    def _dense_neurons(self, d, ub, block, s, gates, u_buf):
        """Unmodified kernel: evaluate the neurons of unit block ub in ``gates`` for the
        task's batch elements together, reading u from ``u_buf`` (h of the previous step
        or r (.) h).  Elements past their length are computed too (their values are
        never used), so that the block's products stay together."""
        H = self.loop.hidden_size
        first, count = self._units(ub)
        chains = [(b, self._u_ref(u_buf, d, b, s)) for b in block[2]]
        for g in gates:
            self._dense_rows(d, chains, first + g * H, count, "projection", step=s,
                             whole_groups=self.row_blocks)

        def count_element(b):
            with T.If(s < self.lengths[b]):
                with T.Then():
                    for g in gates:
                        self._count(d, b, ub, g, computed=count)

        self._each_element(block, count_element)

    def _u_ref(self, u_buf, d, b, s):
        """(buffer, prefix) of the vector the recurrent products of chain (d, b) read at
        step s: h of the previous step, or r (.) h."""
        return (u_buf, (s % 2, d, b) if u_buf is self.h else (d, b))

    def _cell_update(self, acts, d, b, s, k, prev, nxt):
        loop, m, H = self.loop, self.m, self.loop.hidden_size
        bp = self.bp

        def a(j):
            return self.input_part(d, b, s, j)

        if loop.op == "LSTM":
            pre = {g: a(n * H + k) + bp[d, b, n * H + k] for n, g in enumerate(loop.gates)}
            peep = None
            if self.P is not None:
                peep = {g: self.load(self.P, (d, n * H + k)) for n, g in enumerate("iof")}
            h_new, c_new = cells.lstm_cell(
                m, acts, pre, self.c[d, b, k], peep, loop.clip, loop.input_forget
            )
            T.buffer_store(self.c, c_new, [d, b, k])
            T.buffer_store(self.h, h_new, [nxt, d, b, k])
        elif loop.op == "GRU":
            r = None
            if loop.linear_before_reset:
                r = cells.gru_reset(m, acts, a(H + k) + bp[d, b, H + k], loop.clip)
            h_new = cells.gru_cell(
                m, acts, a(k) + bp[d, b, k], a(2 * H + k), bp[d, b, 2 * H + k], r,
                self.h[prev, d, b, k], loop.clip, loop.linear_before_reset,
            )
            T.buffer_store(self.h, h_new, [nxt, d, b, k])
        else:
            h_new = cells.rnn_cell(m, acts, a(k) + bp[d, b, k], loop.clip)
            T.buffer_store(self.h, h_new, [nxt, d, b, k])

    # -- neuron evaluations: what memoization guards ----------------------------------

    # -- delta execution (see ../shared/MEMO_SPEC.md) --------------------------------

    def _live(self, d, block, s):
        """Per element of a block: whether it is a real element (not a repeat of the
        last one) whose step s is in its sequence, and the position of X it reads
        (clamped, for the others)."""
        b0, _, elems = block
        live, pos = [], []
        for e, b in enumerate(elems):
            valid, t = self._time_index(d, b, s)
            live.append(T.bind(tirx.And(b0 + e < self.batch, valid)))
            pos.append(T.bind(tirx.max(tirx.min(t, self.seq - 1), i64(0))))
        return live, pos

    @staticmethod
    def _transmits(valid, diff, thr):
        """Whether a component whose value moved by ``diff`` since it was last sent is
        transmitted at a valid step: |diff| >= threshold, compared in float64."""
        return tirx.And(valid, tirx.Cast("float64", tirx.abs(diff)) >= thr)

    def _transmitted_inputs(self, s):
        """x's transmissions (../shared/MEMO_SPEC.md) for the chunk of steps from s, per
        chain, when the input parts come from a projection: x's transmitted copy
        depends on x alone, so it runs ahead of the recurrence.  Its copy at each step
        goes to sent_x_steps, whose projection (W x^ + Wb, what the spec's column
        updates of W sum to) is the input part, and the number of transmitted
        components to sent_x_count.  Steps past an element's length transmit nothing."""
        loop = self.loop
        nd, D = loop.num_directions, loop.input_size
        steps = T.bind(tirx.min(self.chunk, (self.seq - s + TIME_BLOCK - 1) // TIME_BLOCK * TIME_BLOCK))
        batch = tirx.max(self.batch, i64(1))
        with self._parallel(nd * batch) as task:
            d = T.bind(task // batch) if nd > 1 else i64(0)
            b = T.bind(task % batch)
            thr = T.bind(self.thresholds[d])
            with T.serial(0, steps) as i:
                valid, t = self._time_index(d, b, s + i)
                valid = T.bind(valid)
                t = T.bind(tirx.max(tirx.min(t, self.seq - 1), i64(0)))
                count = T.alloc_buffer((1,), "int64")
                T.buffer_store(count, i64(0), [0])
                with T.serial(0, D) as k:
                    old = T.bind(self.sent_x[d, b, k])
                    new = T.bind(self.load(self.X, (t, b, k)))
                    changed = T.bind(self._transmits(valid, new - old, thr))
                    value = T.bind(tirx.Select(changed, new, old))
                    T.buffer_store(self.sent_x, value, [d, b, k])
                    T.buffer_store(self.x_copies, value, [i, d, b, k])
                    T.buffer_store(count, count[0] + tirx.Select(changed, i64(1), i64(0)), [0])
                T.buffer_store(self.x_sent, count[0], [i, d, b])

    def _delta_selection(self, s, u_buf, parts):
        """The phase finding step s's transmissions (../shared/MEMO_SPEC.md), once per
        block of batch elements and input vector in ``parts`` (part 0: x_t, part 1: u,
        the vector in ``u_buf``: h of the previous step, or r (.) h), before the unit
        blocks add their columns.  A component whose change since it was last sent reaches the
        threshold for any element of the block is listed, with each element's change
        (0 for the elements that keep it); transmitted components become the new sent
        copies."""
        loop = self.loop
        u_sent = self.sent_rh if u_buf is getattr(self, "rh", None) else self.sent_h

        def phase(d, task_part, block, s):
            _, _, elems = block
            live, pos = self._live(d, block, s)
            vectors = ((self.X, [(pos[e], b) for e, b in enumerate(elems)], loop.input_size, self.sent_x),
                       (u_buf, [self._u_ref(u_buf, d, b, s)[1] for b in elems], loop.hidden_size, u_sent))
            if len(parts) == 1:
                self._select(d, parts[0], block, s, live, *vectors[parts[0]])
                return
            with T.If(task_part == i64(0)):
                with T.Then():
                    self._select(d, 0, block, s, live, *vectors[0])
                with T.Else():
                    self._select(d, 1, block, s, live, *vectors[1])

        self._parallel_tasks(s, phase, parts=len(parts))

    def _select(self, d, part, block, s, live, vec, prefixes, n, sent):
        """List the components of ``vec`` (n of them, at ``prefixes`` per element)
        transmitted by some element of the block, and update the ``sent`` copies."""
        b0, _, elems = block
        par, nxt = s % 2, (s + 1) % 2
        thr = T.bind(self.thresholds[d])
        zero = self.m.const(0.0)
        listed = T.alloc_buffer((1,), "int64")
        T.buffer_store(listed, i64(0), [0])
        sent_count = [T.alloc_buffer((1,), "int64") for _ in elems]
        for c in sent_count:
            T.buffer_store(c, i64(0), [0])
        with T.serial(0, n) as k:
            # Branch-free (the outcome is close to random): every component is written
            # at the end of the list, one that changed for any element advances it.
            anyone = tirx.const(False)
            sends = []
            for e, b in enumerate(elems):
                old = T.bind(sent[par, d, b, k])
                new = T.bind(self.load(vec, prefixes[e] + (k,)))
                diff = T.bind(new - old)
                changed = T.bind(self._transmits(live[e], diff, thr))
                T.buffer_store(self.delta_val, tirx.Select(changed, diff, zero), [d, b0 + e, part, listed[0]])
                T.buffer_store(sent_count[e], sent_count[e][0] + tirx.Select(changed, i64(1), i64(0)), [0])
                sends.append((b, tirx.Select(changed, new, old)))
                anyone = tirx.Or(anyone, changed)
            # Last element first, so that a repeated last element's store (its old
            # copy) is overwritten by the real one's.
            for b, value in reversed(sends):
                T.buffer_store(sent, value, [nxt, d, b, k])
            T.buffer_store(self.delta_idx, k, [d, b0, part, listed[0]])
            T.buffer_store(listed, listed[0] + tirx.Select(anyone, i64(1), i64(0)), [0])
        T.buffer_store(self.delta_len, listed[0], [d, b0, part])
        for e, b in enumerate(elems):
            with T.If(live[e]):
                with T.Then():
                    T.buffer_store(self.delta_sent, sent_count[e][0], [d, b, part])

    def _delta_block(self, d, ub, block, s, gates):
        """Add the step's listed columns to this unit block's parts, for every element
        of the block: each listed column is loaded once and added to every element's
        parts, times that element's change (adding 0 * w leaves a part unchanged), so a
        column load serves BATCH_BLOCK elements.  The accumulators stay in registers
        over the list.  With x_projected, the input parts are taken from the
        projection instead, and only R's columns are added.  Counts are multiply-adds:
        rows x transmitted components."""
        loop = self.loop
        H, D = loop.hidden_size, loop.input_size
        b0, _, elems = block
        _, count = self._units(ub)
        live, _ = self._live(d, block, s)
        if not self.x_projected:
            self._add_block_columns(d, ub, block, gates, 0, self.WT, self.a)
        self._add_block_columns(d, ub, block, gates, 1, self.RT, self.bp)
        for e, b in enumerate(elems):
            with T.If(live[e]):
                with T.Then():
                    if self.x_projected:
                        # (The input parts are the projection of x's transmitted copy,
                        # which the cell update reads: see input_part.)
                        x_sent = self.x_sent[s % self.chunk, d, b]
                    else:
                        x_sent = self.delta_sent[d, b, 0]
                    sent = T.bind(x_sent + self.delta_sent[d, b, 1])
                    for g in gates:
                        self._count(d, b, ub, g, computed=count * sent, reused=count * (i64(D + H) - sent))

    def _add_block_columns(self, d, ub, block, gates, part, columns, out):
        """out[d, b, rows of the block's units] += the columns listed for ``part``
        times each element's change, in list order, for the elements b of the block."""
        H, U = self.loop.hidden_size, self.unit_block
        b0, nb, elems = block
        first, count = self._units(ub)
        listed = self.delta_len[d, b0, part]
        if H % U == 0:
            # Whole blocks: vectors of up to LANES units, at most four per element.
            width = LANES if U % LANES == 0 else U
            chunks = [(c * width, width) for c in range(U // width)]
        else:
            # The last block is partial: one unit at a time.
            chunks = [(0, 1)]

        def lanes(w):
            return T.vectorized(0, w) if w > 1 else T.serial(0, 1)

        for g in gates:
            def body(u0):
                accs = [[T.alloc_buffer((w,), self.acc) for _, w in chunks] for _ in elems]
                for e, b in enumerate(elems):
                    for (c0, w), acc in zip(chunks, accs[e]):
                        with lanes(w) as lane:
                            T.buffer_store(acc, out[d, b, g * H + first + u0 + c0 + lane], [lane])
                with T.serial(0, listed) as i:
                    k = T.bind(self.delta_idx[d, b0, part, i])
                    vs = [T.bind(self.delta_val[d, b0 + e, part, i]) for e in range(nb)]
                    for ci, (c0, w) in enumerate(chunks):
                        with lanes(w) as lane:
                            col = self.load(columns, (d, ub, k, g * U + u0 + c0 + lane))
                            for e in range(nb):
                                acc = accs[e][ci]
                                T.buffer_store(acc, acc[lane] + col * vs[e], [lane])
                # Last element first: a repeated last element stores the old values,
                # which the real one's store then replaces.
                for e, b in reversed(list(enumerate(elems))):
                    for (c0, w), acc in zip(chunks, accs[e]):
                        with lanes(w) as lane:
                            T.buffer_store(out, acc[lane], [d, b, g * H + first + u0 + c0 + lane])

            if H % U == 0:
                body(i64(0))
            else:
                with T.serial(0, count) as u:
                    body(u)

    def _dense_rows(self, d, chains, base, count, input_from, x_ref=None, rows_buf=None,
                    a_out=None, b_out=None, step=None, masked=False, whole_groups=False):
        """Compute neurons base .. base+count-1 (or rows_buf[base ..] when given) of
        the chains (d, b) of ``chains``, (b, u_ref) pairs, together, four at a time.
        The input part comes from the input projection (unmodified and predictor
        kernels) or is computed from ``x_ref`` (oracle).  Results go to
        input_part/recurrent_part or to the ``a_out``/``b_out`` buffers.  ``masked``:
        rows_buf entries carry, above bit 32, the chains that store the row (bit c for
        chains[c]); the others keep their values.  ``whole_groups``: count is a
        multiple of ROW_BLOCK."""
        loop = self.loop
        a_out = self.a if a_out is None else a_out
        b_out = self.bp if b_out is None else b_out

        def rows_at(i0, n):
            js, masks = [], []
            for r in range(n):
                idx = base + i0 + r
                if rows_buf is None:
                    js.append(idx)
                elif masked:
                    entry = T.bind(rows_buf[idx])
                    js.append(T.bind(entry & i64(ROW_MASK)))
                    masks.append(T.bind(entry >> i64(32)))
                else:
                    js.append(T.bind(rows_buf[idx]))
            if self.row_blocks:  # consecutive rows, from a row of whole blocks
                rows = [BlockRow(self.R, d, T.bind((base + i0) // i64(ROW_BLOCK)), r, loop.hidden_size)
                        for r in range(n)]
            else:
                rows = [(self.R, (d, j)) for j in js]
            vecs = [ref for _, ref in chains]
            # Consecutive rows are stored as vectors: always without a list, and where a
            # block's listed rows happen to be consecutive (most of them, when any of
            # four elements computing a row lists it).
            vector = input_from == "projection" and (rows_buf is None or masked) \
                and self.vector_rows(n, len(chains), loop.hidden_size)
            if vector:
                rec = self.dot_vector(rows, vecs, loop.hidden_size)
            else:
                rec = self.multi_dot(rows, vecs, loop.hidden_size)
                if input_from == "x":
                    inp = self.multi_dot([(self.W, (d, j)) for j in js], [x_ref], loop.input_size)

            def store_rows(r, j, mask=None):
                """Store the parts of rows j (one row, or a vector of consecutive rows
                when r is a lane index) for every chain c, where bit c of ``mask``
                is set (for every chain without it)."""
                for c, (cb, _) in enumerate(chains):
                    if input_from == "x":
                        a_val = self._with_bias(inp[r][0], d, j, "W")
                    elif a_out is None:
                        a_val = None  # read from the projection (input_part)
                    else:
                        a_val = self.input_projection(d, cb, step, j)
                    b_val = self._with_bias(rec[c * n + r] if vector else rec[r][c], d, j, "R")
                    if mask is not None:
                        # Branch-free; the repeated last element never stores (its bit
                        # is 0: it writes back the value just stored).
                        store = (mask >> i64(c)) & i64(1) == i64(1)
                        if a_val is not None:
                            a_val = tirx.Select(store, a_val, a_out[d, cb, j])
                        b_val = tirx.Select(store, b_val, b_out[d, cb, j])
                    if a_val is not None:
                        T.buffer_store(a_out, a_val, [d, cb, j])
                    T.buffer_store(b_out, b_val, [d, cb, j])

            def one_by_one():
                for r, j in enumerate(js):
                    store_rows(r, j, masks[r] if masked else None)

            if not vector:
                one_by_one()
            elif rows_buf is None:
                with T.vectorized(0, n) as r:
                    store_rows(r, js[0] + r)
            else:
                # (The list's padding repeats its last row, so no span alone says that
                # the rows are consecutive.)
                mask = T.alloc_buffer((n,), "int64")
                for r in range(n):
                    T.buffer_store(mask, masks[r], [r])
                consecutive = js[1] - js[0] == i64(1)
                for r in range(2, n):
                    consecutive = tirx.And(consecutive, js[r] - js[r - 1] == i64(1))
                with T.If(consecutive):
                    with T.Then():
                        with T.vectorized(0, n) as r:
                            store_rows(r, js[0] + r, mask[r])
                    with T.Else():
                        one_by_one()

        if whole_groups:
            with T.serial(0, count // ROW_BLOCK) as q:
                rows_at(q * ROW_BLOCK, ROW_BLOCK)
        else:
            self._in_row_blocks(i64(0), count, rows_at)

    def _count(self, d, b, ub, g, computed=None, reused=None):
        for slot, n in ((0, computed), (1, reused)):
            if n is not None:
                cur = self.counts[d, b, ub, g * 2 + slot]
                T.buffer_store(self.counts, cur + n, [d, b, ub, g * 2 + slot])

    # -- memoization (see ../shared/MEMO_SPEC.md) ------------------------------------

    @staticmethod
    def _small_change(q, qm, thr, floor):
        """|q - qm| / max(|qm|, floor) < thr, evaluated in float64 (as the reference does)."""
        q64, qm64 = tirx.Cast("float64", q), tirx.Cast("float64", qm)
        scale = tirx.max(tirx.abs(qm64), tirx.const(floor, "float64"))
        return tirx.abs(q64 - qm64) < thr * scale

    def _memo_block(self, d, ub, block, s, gates, u_buf):
        """Memoization for a block of batch elements: each element decides per neuron
        with the predictor; a neuron is listed when any element must compute it, with
        the mask of those that must, and the listed rows are computed for the whole
        block, four at a time (sharing every weight load, as the unmodified kernel
        does), and stored for the masked elements only.  Decisions, counts and values
        are each element's own: a row's products do not depend on what they are
        computed with."""
        loop, pred = self.loop, self.predictor
        H = loop.hidden_size
        b0, nb, elems = block
        first, count = self._units(ub)
        thr = T.bind(self.thresholds[d])
        # The first valid step of a sequence always computes (its table is empty).
        may_reuse = s > i64(0)
        live, pos = self._live(d, block, s)
        u_refs = [self._u_ref(u_buf, d, b, s) for b in elems]
        states = [pred.prepare(self, d, b, s, (self.X, (pos[e], b)), u_refs[e]) for e, b in enumerate(elems)]
        # Padded to whole groups of ROW_BLOCK rows (see below).
        todo = T.alloc_buffer((len(gates) * self.unit_block + ROW_BLOCK - 1,), "int64")
        ntodo = T.alloc_buffer((1,), "int64")
        T.buffer_store(ntodo, i64(0), [0])
        computed = [T.alloc_buffer((1,), "int64") for _ in elems]

        # Branch-free: a reuse pattern is close to random, and a mispredicted branch
        # per neuron cost more than the rows it saved (GRU 256 at 39 % reuse was
        # slower than at threshold 0).  Every neuron is written to the list; only the
        # computed ones advance its end.
        def compute_bit(e, b, j, q):
            """Decide neuron j of element b (the e-th of the block) from its value q:
            update its memo entry, return 1 if it must be computed, else 0."""
            old = T.bind(self.memo_q[d, b, j])
            small = tirx.And(may_reuse, self._small_change(q, old, thr, pred.floor))
            # Elements past their length (or repeated) compute nothing and keep their
            # values (a select, like the decision itself).  A repeated element writes
            # back what the real one just stored.  (Not bound to a variable: TVM's
            # vectorizer cannot bind a vector of booleans.)
            reuse = tirx.Or(tirx.Not(live[e]), small)
            T.buffer_store(self.memo_q, tirx.Select(reuse, old, q), [d, b, j])
            if pred.fresh_input:
                # The same value the computed rows store (never read past a
                # sequence's end).
                T.buffer_store(self.a, self.input_projection(d, b, s, j), [d, b, j])
            return tirx.Select(reuse, i64(0), i64(1))

        def list_row(j, bits):
            """Count the elements' decisions on row j and list it (with the mask of the
            elements that compute it) if any of them must."""
            mask = i64(0)
            for e, bit in enumerate(bits):
                T.buffer_store(computed[e], computed[e][0] + bit, [0])
                mask = mask | (bit << i64(e))
            mask = T.bind(mask)
            T.buffer_store(todo, j | (mask << i64(32)) if nb > 1 else j, [ntodo[0]])
            T.buffer_store(ntodo, ntodo[0] + tirx.Select(mask != i64(0), i64(1), i64(0)), [0])

        # Whole groups of neurons (every block's, when H is a multiple of the group)
        # get their values and decisions together, in vectors; listing stays per row.
        group = pred.group if pred.group and H % pred.group == 0 else None
        for g in gates:
            for c in computed:
                T.buffer_store(c, i64(0), [0])
            if group:
                with T.serial(0, count // group) as q0:
                    j0 = T.bind(g * H + first + q0 * group)
                    values = [T.alloc_buffer((group,), pred.q_dtype) for _ in elems]
                    bits = [T.alloc_buffer((group,), "int64") for _ in elems]
                    for e, out in enumerate(values):
                        pred.group_values(self, d, j0, states[e], out)
                    with T.vectorized(0, group) as lane:
                        for e, b in enumerate(elems):
                            T.buffer_store(bits[e], compute_bit(e, b, j0 + lane, values[e][lane]), [lane])
                    with T.serial(0, group) as lane:
                        list_row(T.bind(j0 + lane), [bit[lane] for bit in bits])
            else:
                with T.serial(0, count) as u:
                    j = T.bind(g * H + first + u)
                    list_row(j, [T.bind(compute_bit(e, b, j, pred.value(self, d, j, states[e])))
                                 for e, b in enumerate(elems)])
            for e, b in enumerate(elems):
                with T.If(live[e]):
                    with T.Then():
                        n = T.bind(computed[e][0])
                        self._count(d, b, ub, g, computed=n, reused=count - n)
        # The list is completed to whole groups of four with its last row, stored by no
        # element (or, in a block of one, stored again with the same value): the
        # kernel then needs no code for single remaining rows.
        n = T.bind(ntodo[0])
        with T.If(n > i64(0)):
            with T.Then():
                pad = T.bind(todo[n - 1] & i64(ROW_MASK))
                for r in range(ROW_BLOCK - 1):
                    T.buffer_store(todo, pad, [n + r])
        self._dense_rows(d, list(zip(elems, u_refs)), i64(0), (n + ROW_BLOCK - 1) // ROW_BLOCK * ROW_BLOCK,
                         "projection", step=s, rows_buf=todo, masked=nb > 1, whole_groups=True)

    def _oracle_neurons(self, d, ub, b, s, t, gates, u_ref):
        """The oracle: compute every neuron (its input part from x_t), keep the cached
        values where the true pre-activation changed little."""
        loop = self.loop
        H = loop.hidden_size
        first, count = self._units(ub)
        thr = T.bind(self.thresholds[d])
        # The first valid step of a sequence always computes (its table is empty).
        may_reuse = s > i64(0)
        todo = T.alloc_buffer((len(gates) * self.unit_block,), "int64")
        ntodo = T.alloc_buffer((1,), "int64")
        T.buffer_store(ntodo, i64(0), [0])
        x_ref = (self.X, (t, b))
        new_a, new_b = self.oracle_a, self.oracle_b
        for g in gates:
            with T.serial(0, count) as u:
                T.buffer_store(todo, g * H + first + u, [ntodo[0]])
                T.buffer_store(ntodo, ntodo[0] + i64(1), [0])
        n = T.bind(ntodo[0])
        self._dense_rows(d, [(b, u_ref)], i64(0), n, "x", x_ref=x_ref, rows_buf=todo,
                         a_out=new_a, b_out=new_b)
        for g in gates:
            reused = T.alloc_buffer((1,), "int64")
            T.buffer_store(reused, i64(0), [0])
            with T.serial(0, count) as u:
                j = T.bind(g * H + first + u)
                p = T.bind(new_a[d, b, j] + new_b[d, b, j])
                reuse = tirx.And(may_reuse, self._small_change(p, self.memo_q[d, b, j], thr, 1e-6))
                with T.If(reuse):
                    with T.Then():
                        T.buffer_store(reused, reused[0] + i64(1), [0])
                    with T.Else():
                        T.buffer_store(self.memo_q, p, [d, b, j])
                        T.buffer_store(self.a, new_a[d, b, j], [d, b, j])
                        T.buffer_store(self.bp, new_b[d, b, j], [d, b, j])
            self._count(d, b, ub, g, computed=count - reused[0], reused=reused[0])


def unit_block(loop: RecurrentLoop) -> int:
    """Hidden units per task."""
    return min(UNIT_BLOCK, loop.hidden_size)


def kernel_name(loop: RecurrentLoop, memo: MemoPlan | None = None) -> str:
    raw = loop.name + (f"_memo_{memo.predictor}" if memo else "")
    safe = "".join(ch if ch.isalnum() else "_" for ch in raw)
    return f"{loop.op.lower()}_{safe}"


def build_kernel(loop: RecurrentLoop, memo: MemoPlan | None = None,
                 row_blocks: bool = False) -> tirx.PrimFunc:
    """The PrimFunc of ``loop``, memoized when ``memo`` is given; ``row_blocks``: the
    unmodified kernel reading R as :func:`pack_row_blocks` (see there)."""
    return KernelBuilder(loop, memo, row_blocks).build()


def build_sign_packer(loop: RecurrentLoop, which: str) -> tirx.PrimFunc:
    """A PrimFunc packing the sign bits of W ("W") or R ("R") into 64-bit words, in
    the layout of the BNN predictor's weight data (:func:`memotvm.predictors.pack_signs`,
    rows grouped by :func:`memotvm.predictors.group_rows`).

    The memoization pass uses it when the weights are computed at run time (constant
    weights are packed in numpy at compile time).  It is written as a reduction block,
    the form Relax's analyses of single-output functions expect.
    """
    G, dtype = loop.rows, loop.dtype
    n = loop.input_size if which == "W" else loop.hidden_size
    nd, groups, nw, group = BnnPredictor.signs_shape(loop, which)
    zero = tirx.const(0, dtype)

    @T_script.prim_func(s_tir=True)
    def pack_signs(src: T_script.Buffer((nd, G, n), dtype),
                   dst: T_script.Buffer((nd, groups, nw, group), "uint64")):
        T_script.func_attr({"tir.noalias": True})
        for d, jg, w, r, lane in T_script.grid(nd, groups, nw, group, 64):
            with T_script.sblock("pack"):
                vd, vg, vw, vr, vl = T_script.axis.remap("SSSSR", [d, jg, w, r, lane])
                with T_script.init():
                    dst[vd, vg, vw, vr] = T_script.uint64(0)
                # Rows past G (the last group's padding) and bits past n stay 0.
                dst[vd, vg, vw, vr] = dst[vd, vg, vw, vr] | (
                    T_script.if_then_else(
                        vg * group + vr < G and vw * 64 + vl < n
                        and src[vd, T_script.min(vg * group + vr, G - 1), T_script.min(vw * 64 + vl, n - 1)] < zero,
                        T_script.uint64(1), T_script.uint64(0),
                    ) << T_script.Cast("uint64", vl)
                )

    return pack_signs.with_attr("global_symbol", f"pack_signs_{which}_{kernel_name(loop)}")
