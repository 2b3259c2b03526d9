"""Neuron-level memoization: a predictor decides per neuron whether its cached dot
products can be reused (docs/spec.md, "The memo table and the decision").

The neurons to compute (for any element of a task's block) are compacted into a list
and evaluated four at a time; a reused neuron simply keeps its values, so the builder's
input_part and recurrent_part buffers *are* the memo table, next to the predictor
values kept here (memo_q).  The kernel still computes every input projection in the
matrix product, which costs less than computing the needed ones row by row; a reused
neuron keeps its cached input part as the spec says, so results and decisions are
unaffected.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from ...predictors import words
from ..tiling import ROW_BLOCK, ROW_MASK, WORD_BITS, i64
from .base import Scheme, buffer_field, small_change


class Memoization(Scheme):
    """Memoization guarded by ``predictor`` (:mod:`memotvm.predictors`)."""

    keeps_input_parts = True
    streams = True

    def __init__(self, kb, predictor):
        super().__init__(kb)
        self.predictor = predictor
        # The predictor reads the sign bits of the input vectors: the kernel packs x
        # for all positions up front, h (by step parity) and r (.) h by the task that
        # computes their units, one 64-bit word per unit block.
        self.signs = predictor.reads_signs

    def declare(self):
        kb = self.kb
        self.predictor.declare(kb)
        # Thresholds are data, not code: one compiled kernel serves every threshold
        # (calibration and sweeps run it with new values, no recompilation).
        self.thresholds = kb.param("memo_thresholds", (kb.loop.num_directions,), "float64")

    def allocate(self):
        kb, loop = self.kb, self.kb.loop
        nd, H, G, batch = loop.num_directions, loop.hidden_size, loop.rows, kb.batch
        if self.signs:
            D = loop.input_size
            self.x_signs = kb.named("x_signs", T.alloc_buffer((kb.seq, batch, words(D)), "uint64"))
            self.h_signs = kb.named("h_signs", T.alloc_buffer((2, nd, batch, words(H)), "uint64"))
            # Beside each vector's (or unit block's) sign bits, whether it holds a NaN:
            # a NaN has no sign, so a neuron reading one is computed (docs/spec.md).
            self.x_nan = kb.named("x_nan", T.alloc_buffer((kb.seq, batch), "uint64"))
            self.h_nan = kb.named("h_nan", T.alloc_buffer((2, nd, batch, words(H)), "uint64"))
            if kb.gru_reset_first:
                self.rh_signs = kb.named("reset_h_signs", T.alloc_buffer((nd, batch, words(H)), "uint64"))
                self.rh_nan = kb.named("reset_h_nan", T.alloc_buffer((nd, batch, words(H)), "uint64"))
        self.memo_q = kb.named("memo_q", T.alloc_buffer((nd, batch, G), self.predictor.q_dtype))

    def carried(self):
        kb = self.kb
        return [("a", *buffer_field(kb.a)), ("b", *buffer_field(kb.bp)),
                ("q", *buffer_field(self.memo_q))]

    # -- sign bits ------------------------------------------------------------------

    def _packed(self, buf):
        """(sign bits, NaN flags) kept for the vector buffer ``buf``: X, h or r (.) h."""
        if buf is self.kb.X:
            return self.x_signs, self.x_nan
        if buf is self.kb.h:
            return self.h_signs, self.h_nan
        return self.rh_signs, self.rh_nan

    def sign_bits(self, ref):
        """The packed sign bits (buffer, index prefix) of the vector ``ref`` (x_t, h or
        r (.) h, as a (buffer, prefix) pair)."""
        buf, prefix = ref
        return self._packed(buf)[0], prefix

    def _pack_word(self, src, src_prefix, first, count, dst, dst_idx, nan, nan_idx):
        """dst[dst_idx] = the sign bits of src[src_prefix + (first + l,)], l < count
        (bit l = 1 where negative; bits from count on are 0); nan[nan_idx] |= 1 where
        one of them is a NaN."""
        kb = self.kb
        one, zero = tirx.const(1, "uint64"), tirx.const(0, "uint64")
        word = T.alloc_buffer((1,), "uint64")
        flag = T.alloc_buffer((1,), "uint64")
        T.buffer_store(word, zero, [0])
        T.buffer_store(flag, zero, [0])
        with T.serial(0, count) as l:
            v = T.bind(kb.load(src, src_prefix + (first + l,)))
            bit = tirx.Select(v < kb.m.const(0.0), one, zero)
            T.buffer_store(word, word[0] | (bit << tirx.Cast("uint64", l)), [0])
            T.buffer_store(flag, flag[0] | tirx.Select(kb.m.isnan(v), one, zero), [0])
        T.buffer_store(dst, word[0], list(dst_idx))
        T.buffer_store(nan, nan[tuple(nan_idx)] | flag[0], list(nan_idx))

    def _pack_unit_signs(self, src, dst, prefix, ub):
        """Word ub of dst[prefix] = the sign bits of the units of block ub of
        src[prefix] (a block is one 64-bit word: UNIT_BLOCK is 64, or H when smaller)."""
        kb = self.kb
        assert kb.unit_block == WORD_BITS or kb.unit_blocks == 1
        first, count = kb.units(ub)
        nan = self._packed(src)[1]
        T.buffer_store(nan, tirx.const(0, "uint64"), list(prefix + (ub,)))
        self._pack_word(src, prefix, first, count, dst, prefix + (ub,), nan, prefix + (ub,))

    def initialise_chain(self, d, b):
        if self.signs:
            with T.serial(0, self.kb.unit_blocks) as ub:
                self._pack_unit_signs(self.kb.h, self.h_signs, (0, d, b), ub)

    def initialise(self):
        """x_signs[t, b] = the sign bits of X[t, b], for every position (in parallel)."""
        if not self.signs:
            return
        kb = self.kb
        D = kb.loop.input_size
        with T.parallel(0, kb.seq * kb.batch) as i:
            t = T.bind(i // kb.batch)
            b = T.bind(i % kb.batch)
            T.buffer_store(self.x_nan, tirx.const(0, "uint64"), [t, b])
            with T.serial(0, words(D)) as w:
                count = tirx.min(i64(WORD_BITS), i64(D) - w * WORD_BITS)
                self._pack_word(kb.X, (t, b), w * WORD_BITS, count, self.x_signs, (t, b, w),
                                self.x_nan, (t, b))

    def stored_units(self, src, prefix, ub):
        if self.signs:
            self._pack_unit_signs(src, self._packed(src)[0], prefix, ub)

    def carried_units(self, d, b, ub, prev, nxt):
        if self.signs:
            T.buffer_store(self.h_signs, self.h_signs[prev, d, b, ub], [nxt, d, b, ub])
            T.buffer_store(self.h_nan, self.h_nan[prev, d, b, ub], [nxt, d, b, ub])

    def _signs_defined(self, x_ref, u_ref):
        """Whether neither x_t nor u (as (buffer, prefix) pairs) holds a NaN."""
        (_, x_pre), (u_buf, u_pre) = x_ref, u_ref
        nan = self.x_nan[x_pre]
        flags = self._packed(u_buf)[1]
        for ub in range(self.kb.unit_blocks):
            nan = nan | flags[u_pre + (ub,)]
        return T.bind(nan == tirx.const(0, "uint64"))

    # -- the decisions --------------------------------------------------------------

    def evaluate_block(self, d, ub, block, s, gates, u_buf):
        """Memoization for a block of batch elements: each element decides per neuron
        with the predictor; a neuron is listed when any element must compute it, with
        the mask of those that must, and the listed rows are computed for the whole
        block, four at a time (sharing every weight load, as the unmodified kernel
        does), and stored for the masked elements only.  Decisions, counts and values
        are each element's own: a row's products do not depend on what they are
        computed with."""
        kb, pred = self.kb, self.predictor
        H = kb.loop.hidden_size
        b0, nb, elems = block
        first, count = kb.units(ub)
        thr = T.bind(self.thresholds[d])
        live, pos = kb.live(d, block, s)
        u_refs = [kb.u_ref(u_buf, d, b, s) for b in elems]
        states = [pred.prepare(kb, d, b, s, (kb.X, (pos[e], b)), u_refs[e]) for e, b in enumerate(elems)]
        # The first valid step of a sequence always computes (its table is empty),
        # unless the chain continues a table; a neuron may reuse only where its
        # predictor can judge its inputs.
        may_reuse = [T.bind(self.may_reuse(d, b, s)) for b in elems]
        judged = [tirx.And(may_reuse[e], self._signs_defined((kb.X, (pos[e], b)), u_refs[e]))
                  if self.signs else may_reuse[e] for e, b in enumerate(elems)]
        # Padded to whole groups of ROW_BLOCK rows (see below).
        todo = T.alloc_buffer((len(gates) * kb.unit_block + ROW_BLOCK - 1,), "int64")
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
            small = tirx.And(judged[e], small_change(q, old, thr, pred.floor))
            # Elements past their length (or repeated) compute nothing and keep their
            # values (a select, like the decision itself).  A repeated element writes
            # back what the real one just stored.  (Not bound to a variable: TVM's
            # vectorizer cannot bind a vector of booleans.)
            reuse = tirx.Or(tirx.Not(live[e]), small)
            T.buffer_store(self.memo_q, tirx.Select(reuse, old, q), [d, b, j])
            if pred.fresh_input:
                # The same value the computed rows store (never read past a
                # sequence's end).
                T.buffer_store(kb.a, kb.input_projection(d, b, s, j), [d, b, j])
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
                        pred.group_values(kb, d, j0, states[e], out)
                    with T.vectorized(0, group) as lane:
                        for e, b in enumerate(elems):
                            T.buffer_store(bits[e], compute_bit(e, b, j0 + lane, values[e][lane]), [lane])
                    with T.serial(0, group) as lane:
                        list_row(T.bind(j0 + lane), [bit[lane] for bit in bits])
            else:
                with T.serial(0, count) as u:
                    j = T.bind(g * H + first + u)
                    list_row(j, [T.bind(compute_bit(e, b, j, pred.value(kb, d, j, states[e])))
                                 for e, b in enumerate(elems)])
            for e, b in enumerate(elems):
                with T.If(live[e]):
                    with T.Then():
                        n = T.bind(computed[e][0])
                        kb.count(d, b, ub, g, computed=n, reused=count - n)
        # The list is completed to whole groups of four with its last row, stored by no
        # element (or, in a block of one, stored again with the same value): the
        # kernel then needs no code for single remaining rows.
        n = T.bind(ntodo[0])
        with T.If(n > i64(0)):
            with T.Then():
                pad = T.bind(todo[n - 1] & i64(ROW_MASK))
                for r in range(ROW_BLOCK - 1):
                    T.buffer_store(todo, pad, [n + r])
        kb.dense_rows(d, list(zip(elems, u_refs)), i64(0), (n + ROW_BLOCK - 1) // ROW_BLOCK * ROW_BLOCK,
                       step=s, rows_buf=todo, masked=nb > 1, whole_groups=True)
        return True
