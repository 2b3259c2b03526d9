"""The step skeleton of a recurrent-loop kernel: one TIR PrimFunc per ONNX recurrent
node, holding the whole time loop.

Its structure is what the memoization pass relies on and what makes it fast on a CPU:

* the time loop is serial and runs inside one parallel launch; inside a step the work
  is split into *tasks*, one per (direction, block of hidden units, block of batch
  elements), which are independent within a step and run in parallel (at batch 1 both
  directions and all unit blocks still give the cores work), with a barrier between
  phases; from a batch of :func:`~.tiling.blocks_batch_from` on a block has
  :func:`~.tiling.batch_block` elements, whose recurrent products share every weight
  load (the oracle's blocks are single elements);
* a task evaluates the neurons (gate rows) of its units, as its *scheme* says
  (:mod:`memotvm.kernels.schemes`), then applies the cell update of
  :mod:`memotvm.cells` to them; h is double-buffered (read step s-1, write step s);
* each neuron's dot products live in two persistent buffers, ``input_part``
  (a_j = W_j x_t + Wb_j) and ``recurrent_part`` (b_j = R_j u_j + Rb_j); where no neuron
  keeps an earlier step's input part (the unmodified kernel, delta execution with
  projected inputs) the cell update reads a_j from the projection instead.

Kernels compute the input parts of many steps at once (a matrix product, blocked four
rows by four steps, that reads each weight row from memory once per chunk of steps: the
whole sequence when its projection fits in ``PROJECTION_BYTES``, or about a core's L2
where W stays in cache anyway) and the recurrent
parts four rows at a time (:mod:`memotvm.kernels.products`).

Kernel arguments, in order: X (layout 0), W, R (or, in a kernel built with
``row_blocks``, R in the layout of :func:`~memotvm.kernels.row_blocks.pack_row_blocks`),
then the optional inputs the node has (B, sequence_lens, initial_h, initial_c, P;
layout 0), with int8 weights their per-row scales (W_scale, R_scale, float32 [directions,
rows]; W and R are then int8, bfloat16 at bf16: :mod:`memotvm.precision`), then the scheme's (the predictor's weight data, for BNN the packed sign bits
of W and R; delta execution's weight columns; for every memoized kernel its
thresholds, float64, one per direction, and its ``memo_table``, float64 [directions,
table batch, size]: see :mod:`.memo_table`), then the outputs Y, Y_h, [Y_c], ``stats``
(int64 [directions, batch, gates, 2]: computed and reused evaluations), ``status``
(int32 [directions, batch]: 1 where the element's sequence length was out of range)
and, memoized, ``memo_table_out`` (the table at the end of the call).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .. import cells
from .bf16_dot import linked, r_words
from .input_panels import has_input_panels, input_panels_shape
from .memo_table import TABLE_DTYPE, field_offsets, resumable, table_size
from .plan import MemoPlan, kernel_name
from .products import DenseProducts
from .row_blocks import has_row_blocks, row_blocks_shape
from .schemes import scheme_for, scheme_kind
from .tiling import (CACHED_PROJECTION_BYTES, CACHED_W_BYTES, MIN_CACHED_PROJECTION_STEPS,
                     MIN_PROJECTION_STEPS, PROJECTION_BYTES, ROW_BLOCK,
                     SCALAR_ACTIVATIONS, STREAM_WEIGHT_BYTES, TIME_BLOCK, batch_block,
                     blocks_batch_from, i64, unit_block, vector_lanes)
from .tir_math import TirMath

# How a float32 node's kernel may take W and R: a dtype, or "bfloat16_pairs" (W
# bfloat16, R as bfloat16 pairs in int32 words, the activations rounded: precision
# bf16-act, :mod:`.bf16_dot`).
WEIGHT_DTYPES = ("float32", "bfloat16", "bfloat16_pairs", "int8")

if TYPE_CHECKING:
    from ..frontend.recurrent import RecurrentLoop


class KernelBuilder(DenseProducts):
    """Builds the PrimFunc of one :class:`RecurrentLoop`, plain or memoized."""

    def __init__(self, loop: RecurrentLoop, memo: MemoPlan | None = None,
                 row_blocks: bool = False, weights: str | None = None, input_panels: bool = False):
        if row_blocks and (memo is not None or not has_row_blocks(loop)):
            raise ValueError("row_blocks: for the unmodified kernel of a hidden size "
                             f"divisible by {ROW_BLOCK}")
        if input_panels and not has_input_panels(loop):
            raise ValueError(f"input_panels: for float32 or float16 nodes, got {loop.dtype}")
        weights = loop.dtype if weights is None else weights
        if weights != loop.dtype and (loop.dtype != "float32" or weights not in WEIGHT_DTYPES):
            raise ValueError(f"weights: one of {WEIGHT_DTYPES} for a float32 node, got {weights} "
                             f"for a {loop.dtype} node")
        self.loop = loop
        self.memo = memo
        # The dtype W and R come in (memotvm.precision): bfloat16 or int8 with per-row
        # scales halve or quarter the weight traffic; products still accumulate in acc.
        self.weights = weights
        # bf16-act: R in pairs, multiplied by h rounded to bfloat16 (see bf16_dot); the
        # input projection multiplies W by x rounded the same way.
        self.pairs = weights == "bfloat16_pairs"
        if self.pairs and memo is not None and scheme_kind(memo) == "delta":
            raise ValueError("delta execution does not run at precision bf16-act")
        # R comes as pack_row_blocks(R) (memoized kernels list arbitrary rows).
        self.row_blocks = row_blocks
        # W comes as pack_input_panels(W): the projection is a register-tiled product.
        self.input_panels = input_panels
        # Accumulate and apply the gate math in float32 at least.
        self.acc = "float64" if loop.dtype == "float64" else "float32"
        # Lanes of every accumulator: the vector width of the target compiled for.
        self.lanes = vector_lanes()
        # bf16-act: R's rows in int32 words of two bfloat16 values.
        self.r_words = r_words(loop.hidden_size)
        self.m = TirMath(self.acc)
        self.unit_block = unit_block(loop)
        self.unit_blocks = -(-loop.hidden_size // self.unit_block)
        # How the neurons are evaluated: unmodified, memoized, delta, oracle.
        self.scheme = scheme_for(self, memo)

    # -- entry point ---------------------------------------------------------------

    def build(self) -> tirx.PrimFunc:
        loop = self.loop
        with IRBuilder() as ib:
            with T.prim_func():
                T.func_name(kernel_name(loop, self.memo) + ("_row_blocks" if self.row_blocks else "")
                            + ("_input_panels" if self.input_panels else "")
                            + ("" if self.weights == loop.dtype else f"_{self.weights}"))
                attrs = {"tir.noalias": True, "memotvm.recurrent": loop.to_json(),
                         "memotvm.lanes": self.lanes, "memotvm.weights": self.weights,
                         "memotvm.input_panels": self.input_panels}
                if self.memo:
                    attrs["memotvm.memo"] = f"{self.memo.predictor}:{list(self.memo.thresholds)}"
                    attrs["memotvm.memo_plan"] = self.memo.to_json()
                T.func_attr(attrs)
                self._declare_params()
                # An empty batch has nothing to compute (and its tasks would divide by 0).
                with T.If(self.batch > i64(0)):
                    with T.Then(), self._linked():
                        self._allocate_state()
                        self._initialise()
                        with T.attr(0, "pragma_parallel_launch_point", 1):
                            self._time_loop()
                        self._finish()
        return ib.get()

    def _linked(self):
        """The LLVM functions the kernel calls (the pair dot at bf16-act)."""
        return linked(self.lanes) if self.pairs else nullcontext()

    def _time_loop(self):
        """The steps, run by every worker of one parallel launch (see parallel): as
        independent streams where the kernel has them (see stream_loop), else task by
        task within each step."""
        if not self.has_streams:
            self._step_loop()
            return
        loop = self.loop
        if self.unit_blocks == 1 and loop.input_size <= loop.hidden_size:
            # A single chain's step is one task, and its projection no larger: one
            # stream (two threads did not pay at batch 1, H <= 64).
            self.stream_loop()
            return
        # A single chain's unit blocks (or its projection's rows) are tasks in parallel.
        with T.If(i64(loop.num_directions) * self.batch >= i64(2)):
            with T.Then():
                self.stream_loop()
            with T.Else():
                self._step_loop(single=True)

    @property
    def has_streams(self):
        """Whether chains may run as independent streams (see stream_loop): where the
        scheme allows it and R is small enough for each worker to read all of it
        (STREAM_WEIGHT_BYTES)."""
        loop = self.loop
        r_bytes = loop.rows * loop.hidden_size * self._weight_bits() // 8
        return self.scheme.streams and r_bytes <= STREAM_WEIGHT_BYTES

    def _weight_bits(self) -> int:
        """Bits of one weight of W and R as the kernel takes them."""
        return 16 if self.pairs else tvm.DataType(self.weights).bits

    def stream_loop(self):
        """The chains as independent streams: each worker takes whole blocks of
        elements of a direction (those a step's tasks would take) and runs all their
        steps, their input projections included, without waiting for the others.

        A step's tasks waited at a barrier for the slowest (and for a worker the OS
        descheduled) every step; chains never read each other's state, so streams
        need none.  A stream reads all of R every step, where a task reads its unit
        block's rows: hence only for R of at most STREAM_WEIGHT_BYTES, which stays in
        a core's own cache.  A stream projects only its own chains' inputs, task after
        task, each task's rows for all the stream's elements while they are in cache."""
        block, batch = batch_block(), self.batch
        # Blocks of elements where they make two streams or more, else one element each.
        blocks = (batch + block - 1) // block
        with T.If(tirx.And(batch >= i64(blocks_batch_from(block)),
                           i64(self.loop.num_directions) * blocks >= i64(2))):
            with T.Then():
                self._streams_of(block)
            with T.Else():
                self._streams_of(1)

    def _streams_of(self, nb):
        """:meth:`stream_loop` with blocks of ``nb`` elements."""
        nd, batch = self.loop.num_directions, self.batch
        blocks = T.bind((batch + nb - 1) // nb) if nb > 1 else batch
        with self.parallel(nd * blocks) as task:
            d = T.bind(task // blocks) if nd > 1 else i64(0)
            b0 = T.bind((task % blocks) * nb) if nd > 1 else T.bind(task * nb)
            elems = [b0] if nb == 1 else [T.bind(tirx.min(b0 + i, batch - 1)) for i in range(nb)]
            block = (b0, nb, elems)
            elements = T.bind(tirx.min(i64(nb), batch - b0))
            with T.serial(0, self.seq) as s:
                self.named("step", s)
                if self.scheme.uses_projection:
                    with T.If(s % self.chunk == 0):
                        with T.Then():
                            self._input_projection(s, stream=(d, b0, elements))
                # A stream computes every unit block of its chains, in turn.
                if self.gru_reset_first:
                    with T.serial(0, self.unit_blocks) as ub:
                        self._gru_reset_phase(d, ub, block, s)
                with T.serial(0, self.unit_blocks) as ub:
                    self._main_phase(d, ub, block, s)

    def _step_loop(self, single=False):
        """The steps one after another, each a parallel loop of tasks (``single``: of
        a batch of one element)."""
        scheme = self.scheme

        def tasks(s, phase):
            if single:
                self._task_loop(s, phase, 1, None)
            else:
                self.parallel_tasks(s, phase)

        with T.serial(0, self.seq) as s:
            self.named("step", s)
            if scheme.uses_projection:
                with T.If(s % self.chunk == 0):
                    with T.Then():
                        scheme.before_projection(s)
                        self._input_projection(s)
            scheme.begin_step(s)
            if self.gru_reset_first:
                tasks(s, self._gru_reset_phase)
                scheme.after_reset_phase(s)
            tasks(s, self._main_phase)

    @staticmethod
    @contextmanager
    def parallel(extent):
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

    @staticmethod
    def named(name, value):
        """Name a variable or buffer in the generated code."""
        IRBuilder.name(name, value)
        return value

    def param(self, name, shape, dtype):
        """Declare the next kernel parameter, a buffer."""
        handle = T.arg(name, T.handle())
        return self.named(name, T.match_buffer(handle, shape, dtype))

    def _declare_params(self):
        loop = self.loop
        nd, H, D, G = loop.num_directions, loop.hidden_size, loop.input_size, loop.rows
        self.seq = seq = tirx.Var("seq_length", "int64")
        self.batch = batch = tirx.Var("batch_size", "int64")
        dt = loop.dtype
        wt = "bfloat16" if self.pairs else self.weights
        self.X = self.param("X", (seq, batch, D), dt)
        if self.pairs and self.input_panels:  # words of two bfloat16 values
            self.W = self.param("W", input_panels_shape(loop, pairs=True), "int32")
        else:
            self.W = self.param("W", input_panels_shape(loop) if self.input_panels else (nd, G, D), wt)
        if self.pairs:  # (nd, G, r_words(H)) words
            self.R = self.param("R", row_blocks_shape(loop, self.r_words) if self.row_blocks
                                else (nd, G, self.r_words), "int32")
        else:
            self.R = self.param("R", row_blocks_shape(loop) if self.row_blocks else (nd, G, H), wt)
        self.B = self.param("B", (nd, 2 * G), dt) if loop.has("B") else None
        self.L = self.param("sequence_lens", (batch,), "int32") if loop.has("sequence_lens") else None
        self.H0 = self.param("initial_h", (nd, batch, H), dt) if loop.has("initial_h") else None
        self.C0 = self.param("initial_c", (nd, batch, H), dt) if loop.has("initial_c") else None
        self.P = self.param("P", (nd, 3 * H), dt) if loop.has("P") else None
        # int8 weights: each row's dot product times its scale (see with_bias).
        self.W_scale = self.R_scale = None
        if self.weights == "int8":
            self.W_scale = self.param("W_scale", (nd, G), "float32")
            self.R_scale = self.param("R_scale", (nd, G), "float32")
        self.scheme.declare()
        if self.memo is not None:  # the memo table a session keeps between calls
            self.table_size = table_size(loop, self.memo.predictor)
            self.table_batch = tirx.Var("table_batch", "int64")
            self.table_in = self.param("memo_table", (nd, self.table_batch, self.table_size), TABLE_DTYPE)
        self.Y = self.param("Y", (seq, nd, batch, H), dt)
        self.YH = self.param("Y_h", (nd, batch, H), dt)
        self.YC = self.param("Y_c", (nd, batch, H), dt) if loop.op == "LSTM" else None
        self.stats = self.param("stats", (nd, batch, loop.num_gates, 2), "int64")
        self.status = self.param("status", (nd, batch), "int32")
        if self.memo is not None:
            self.table_out = self.param("memo_table_out", (nd, batch, self.table_size), TABLE_DTYPE)

    def _allocate_state(self):
        loop, acc, named = self.loop, self.acc, self.named
        nd, H, G, batch = loop.num_directions, loop.hidden_size, loop.rows, self.batch
        self.h = named("h", T.alloc_buffer((2, nd, batch, H), acc))  # [step parity, ...]
        self.c = named("c", T.alloc_buffer((nd, batch, H), acc)) if loop.op == "LSTM" else None
        # Input parts are kept only where a neuron may reuse them (else see input_part).
        self.a = named("input_part", T.alloc_buffer((nd, batch, G), acc)) if self.scheme.keeps_input_parts else None
        self.bp = named("recurrent_part", T.alloc_buffer((nd, batch, G), acc))
        self.rh = named("reset_h", T.alloc_buffer((nd, batch, H), acc)) if self.gru_reset_first else None
        self.lengths = named("lengths", T.alloc_buffer((batch,), "int64"))
        self.counts = named("counts", T.alloc_buffer(
            (nd, batch, self.unit_blocks, loop.num_gates * 2), "int64"))
        if self.scheme.uses_projection:
            self.chunk = named("projection_steps", T.bind(self._projection_steps()))
            self.xproj = named("input_projection", T.alloc_buffer((self.chunk, nd, batch, G), acc))
        # Per chain, 1 where it continues the table of an earlier call (a session's).
        self.resumed = named("resumed", T.alloc_buffer((nd, batch), "int64")) if self.memo else None
        self.scheme.allocate()

    def _projection_steps(self):
        """Steps per projection chunk: all (rounded up to TIME_BLOCK) when they fit in
        PROJECTION_BYTES, else as many as fit, at least MIN_PROJECTION_STEPS (with a W
        that stays in cache, CACHED_PROJECTION_BYTES and MIN_CACHED_PROJECTION_STEPS);
        a multiple of TIME_BLOCK, never 0."""
        loop = self.loop
        per_row = loop.rows + self.scheme.chunk_values_per_row()
        per_step = loop.num_directions * per_row * (8 if self.acc == "float64" else 4)
        w_bytes = loop.num_directions * loop.rows * loop.input_size * self._weight_bits() // 8
        budget, least = (CACHED_PROJECTION_BYTES, MIN_CACHED_PROJECTION_STEPS) \
            if w_bytes <= CACHED_W_BYTES else (PROJECTION_BYTES, MIN_PROJECTION_STEPS)
        fit = i64(max(1, budget // per_step)) // tirx.max(self.batch, i64(1))
        steps = tirx.min(tirx.max(fit, i64(least)), tirx.max(self.seq, i64(1)))
        return (steps + TIME_BLOCK - 1) // TIME_BLOCK * TIME_BLOCK

    def sign_bits(self, ref):
        """The packed sign bits (buffer, index prefix) of the vector ``ref``, for
        predictors that read them (see Memoization.sign_bits)."""
        return self.scheme.sign_bits(ref)

    @property
    def gru_reset_first(self):
        """GRU with linear_before_reset = 0: r (.) h is computed in a phase of its own
        before the candidate gate reads it."""
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
                self.scheme.initialise_chain(d, b)
                if self.memo is not None:
                    self._load_table(d, b)
        self.scheme.initialise()

    def _resumable(self, d):
        """Whether direction d may continue a table (forward directions: see
        memo_table.resumable)."""
        if self.loop.direction == "bidirectional":
            return d == i64(0)
        return tirx.const(resumable(self.loop, 0))

    def _carried(self):
        """(offset, length, read, write) of each field of the table this kernel keeps
        (memo_table.table_fields; a field the scheme does not keep is left 0)."""
        offsets = field_offsets(self.loop, self.memo.predictor)
        return [(*offsets[name], read, write) for name, read, write in self.scheme.carried()]

    def _load_table(self, d, b):
        """resumed[d, b], and chain (d, b)'s table loaded from memo_table where it
        continues one: a table of this batch size whose flag is set."""
        flag = self.table_size - 1
        ok = T.bind(tirx.And(self._resumable(d), self.table_batch == self.batch))
        T.buffer_store(self.resumed, i64(0), [d, b])
        with T.If(ok):
            with T.Then():
                with T.If(self.table_in[d, b, flag] != tirx.const(0.0, TABLE_DTYPE)):
                    with T.Then():
                        T.buffer_store(self.resumed, i64(1), [d, b])
                        for offset, length, _, write in self._carried():
                            with T.serial(0, length) as k:
                                write(d, b, k, tirx.Cast(self.acc, self.table_in[d, b, offset + k]))

    def _store_table(self, d, b):
        """memo_table_out[d, b]: chain (d, b)'s table, flagged where it holds values
        (it was resumed or computed a step) and may be continued."""
        zero, one = tirx.const(0.0, TABLE_DTYPE), tirx.const(1.0, TABLE_DTYPE)
        filled = T.bind(tirx.And(self._resumable(d), tirx.Or(self.resumed[d, b] != i64(0),
                                                            self.lengths[b] > i64(0))))
        with T.serial(0, self.table_size - 1) as k:
            T.buffer_store(self.table_out, zero, [d, b, k])
        with T.If(filled):
            with T.Then():
                for offset, length, read, _ in self._carried():
                    with T.serial(0, length) as k:
                        T.buffer_store(self.table_out, tirx.Cast(TABLE_DTYPE, read(d, b, k)),
                                       [d, b, offset + k])
        T.buffer_store(self.table_out, tirx.Select(filled, one, zero), [d, b, self.table_size - 1])

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
            if self.memo is not None:
                self._store_table(d, b)

    # -- positions -----------------------------------------------------------------

    def time_index(self, d, b, s):
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

    def live(self, d, block, s):
        """Per element of a block: whether it is a real element (not a repeat of the
        last one) whose step s is in its sequence, and the position of X it reads
        (clamped, for the others)."""
        b0, _, elems = block
        live, pos = [], []
        for e, b in enumerate(elems):
            valid, t = self.time_index(d, b, s)
            live.append(T.bind(tirx.And(b0 + e < self.batch, valid)))
            pos.append(T.bind(tirx.max(tirx.min(t, self.seq - 1), i64(0))))
        return live, pos

    # -- the tasks of one step -------------------------------------------------------

    def parallel_tasks(self, s, phase, parts=None):
        """Run ``phase(d, ub, block, s)`` for every direction, unit block and block of
        batch elements; with ``parts``, ``phase(d, part, block, s)`` for part <
        ``parts`` instead of the unit blocks.

        A task takes batch_block() elements once the batch has blocks_batch_from() (the last
        block repeats the last element, computed but not stored), so that their
        products (delta's column updates) share the weight loads; the oracle's tasks
        take one element.  ``block`` is
        (first element, elements per block, the elements whose products are computed)."""
        if not self.scheme.blocks_batch:
            self._task_loop(s, phase, 1, parts)
            return
        block = batch_block()
        with T.If(self.batch >= i64(blocks_batch_from(block))):
            with T.Then():
                self._task_loop(s, phase, block, parts)
            with T.Else():
                self._task_loop(s, phase, 1, parts)

    def _task_loop(self, s, phase, nb, parts):
        nd = self.loop.num_directions
        nub = self.unit_blocks if parts is None else parts
        # Never 0, so that no division by it can trap, even hoisted out of the guard
        # for empty batches (the loop has no iteration then).
        batch = tirx.max(self.batch, i64(1))
        blocks = T.bind((batch + nb - 1) // nb) if nb > 1 else batch
        with self.parallel(nd * nub * blocks) as task:
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

    def each_element(self, block, body):
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

    def units(self, ub):
        """(first unit, number of units) of unit block ub."""
        U, H = self.unit_block, self.loop.hidden_size
        first = ub * U
        count = tirx.min(i64(U), i64(H) - first) if H % U else i64(U)
        return first, count

    def _if_valid(self, d, b, s, body, invalid=None):
        """body(t) if step s of chain (d, b) is in its sequence, else invalid()."""
        valid, t = self.time_index(d, b, s)
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
        first, count = self.units(ub)
        blocked = self.scheme.evaluate_block(d, ub, block, s, (0, 1), self.h)

        def element(b):
            def reset(t):
                if not blocked:
                    self.scheme.evaluate_element(d, ub, b, s, t, (0, 1), self.u_ref(self.h, d, b, s))
                with self._unit_loop(count) as u:
                    k = first + u
                    pre = self.input_part(d, b, s, H + k) + self.bp[d, b, H + k]
                    r = cells.gru_reset(self.m, self.loop.activations[0], pre, self.loop.clip)
                    if not self._same_settings():
                        r2 = cells.gru_reset(self.m, self.loop.activations[1], pre, self.loop.clip)
                        r = tirx.Select(d == i64(0), r, r2)
                    T.buffer_store(self.rh, r * self.h[prev, d, b, k], [d, b, k])
                self.scheme.stored_units(self.rh, (d, b), ub)

            self._if_valid(d, b, s, reset)

        self.each_element(block, element)

    def _main_phase(self, d, ub, block, s):
        """Evaluate this block's (remaining) neurons and update its units' state."""
        loop = self.loop
        prev, nxt = s % 2, (s + 1) % 2
        first, count = self.units(ub)
        # GRU with linear_before_reset = 0: the candidate gate is left, and reads r (.) h.
        gates, u_buf = ((2,), self.rh) if self.gru_reset_first else (tuple(range(loop.num_gates)), self.h)
        blocked = self.scheme.evaluate_block(d, ub, block, s, gates, u_buf)

        def element(b):
            def update(t):
                if not blocked:
                    self.scheme.evaluate_element(d, ub, b, s, t, gates, self.u_ref(u_buf, d, b, s))

                def emit(dd):
                    with self._unit_loop(count) as u:
                        self._cell_update(loop.activations[dd], d, b, s, first + u, prev, nxt)

                self._directional(d, emit)
                with self._unit_loop(count) as u:
                    k = first + u
                    self.store(self.Y, self.h[nxt, d, b, k], (t, d, b, k))
                self.scheme.stored_units(self.h, (nxt, d, b), ub)

            def carry():
                # Past this element's length: carry the state, Y is zero (the same
                # positions for both directions).
                with T.serial(0, count) as u:
                    k = first + u
                    T.buffer_store(self.h, self.h[prev, d, b, k], [nxt, d, b, k])
                    T.buffer_store(self.Y, tirx.const(0.0, loop.dtype), [s, d, b, k])
                self.scheme.carried_units(d, b, ub, prev, nxt)

            self._if_valid(d, b, s, update, carry)

        self.each_element(block, element)

    def u_ref(self, u_buf, d, b, s):
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

    def count(self, d, b, ub, g, computed=None, reused=None):
        """Add computed and reused evaluations of gate g to the task's counts."""
        for slot, n in ((0, computed), (1, reused)):
            if n is not None:
                cur = self.counts[d, b, ub, g * 2 + slot]
                T.buffer_store(self.counts, cur + n, [d, b, ub, g * 2 + slot])


def build_kernel(loop: RecurrentLoop, memo: MemoPlan | None = None,
                 row_blocks: bool = False, weights: str | None = None,
                 input_panels: bool = False) -> tirx.PrimFunc:
    """The PrimFunc of ``loop``, memoized when ``memo`` is given; ``row_blocks``: the
    unmodified kernel reading R as :func:`~memotvm.kernels.row_blocks.pack_row_blocks`
    (see there); ``weights``: the dtype W and R come in (the node's, or for a float32
    node bfloat16, "bfloat16_pairs" (bf16-act), or int8 followed by their per-row scales;
    :mod:`memotvm.precision`);
    ``input_panels``: reading W as
    :func:`~memotvm.kernels.input_panels.pack_input_panels` (see there)."""
    return KernelBuilder(loop, memo, row_blocks, weights, input_panels).build()


def kernel_weights(kernel: tirx.PrimFunc) -> str:
    """The dtype a recurrent-loop kernel takes its weights in."""
    return str(kernel.attrs["memotvm.weights"])


def kernel_memo_plan(kernel: tirx.PrimFunc) -> MemoPlan | None:
    """The memoization plan a recurrent-loop kernel was built with (None: unmodified),
    to build it again."""
    plan = kernel.attrs.get("memotvm.memo_plan")
    return MemoPlan.from_json(str(plan)) if plan is not None else None
