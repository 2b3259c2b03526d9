"""Delta execution (Neil et al., Delta Networks, ICML 2017): the competing scheme,
run by the same pass (docs/spec.md, "Delta execution").

Per chain every input vector of the layer keeps its last transmitted copy.  A phase
per step lists the transmitted components of x and u once per block of batch elements;
the unit blocks then add those columns of W and R to their parts, which start from the
biases.  For large layers (``DeltaExecution.projects_input``) the input parts are the
projection of x's transmitted copies instead (x's copy depends on x alone, so it runs
ahead of the recurrence a chunk of steps at a time), and only R's columns are added.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from ..tiling import TIME_BLOCK, batch_block, i64, unit_block

# Units per vector of a column update.  The update is elementwise (no sums whose order
# the vector width would change): LLVM splits it into the target's registers.
COLUMN_WIDTH = 16
from .base import Scheme, buffer_field


def column_blocks(loop, M) -> np.ndarray:
    """W or R ([directions, rows, n]) by columns, per block of units:
    ``columns[d, block, k, g * U + u]`` is row g H + block U + u of column k (0 past H),
    so the part of a column one task needs is one contiguous run."""
    U = unit_block(loop)
    H, gates = loop.hidden_size, loop.num_gates
    blocks = -(-H // U)
    out = np.zeros((len(M), blocks, M.shape[2], gates * U), np.float32)
    for d, m in enumerate(np.asarray(M, np.float32)):
        for g in range(gates):
            for blk in range(blocks):
                rows = m[g * H + blk * U: min(g * H + (blk + 1) * U, (g + 1) * H)]
                out[d, blk, :, g * U: g * U + len(rows)] = rows.T
    return out


class Delta(Scheme):
    """Delta execution, its thresholds per direction."""

    blocks_batch = True

    def __init__(self, kb, predictor):
        super().__init__(kb)
        self.predictor = predictor
        # The input parts come from a projection of x's transmitted copies (else they
        # are updated by W's columns).
        self.x_projected = predictor.projects_input(kb.loop)
        self.keeps_input_parts = not self.x_projected
        self.uses_projection = self.x_projected

    @staticmethod
    def weight_data(loop, predictor, W, R) -> dict:
        """The constant inputs of the kernel: W's (unless projected) and R's columns."""
        data = {} if predictor.projects_input(loop) else {"W_columns": column_blocks(loop, np.asarray(W))}
        data["R_columns"] = column_blocks(loop, np.asarray(R))
        return data

    def declare(self):
        kb, loop = self.kb, self.kb.loop
        nd, U, nub = loop.num_directions, kb.unit_block, kb.unit_blocks
        if not self.x_projected:
            self.WT = kb.param("W_columns", (nd, nub, loop.input_size, loop.num_gates * U), "float32")
        self.RT = kb.param("R_columns", (nd, nub, loop.hidden_size, loop.num_gates * U), "float32")
        self.thresholds = kb.param("memo_thresholds", (nd,), "float64")

    def chunk_values_per_row(self):
        return self.kb.loop.input_size if self.x_projected else 0

    def allocate(self):
        kb, loop, acc = self.kb, self.kb.loop, self.kb.acc
        nd, H, D, batch = loop.num_directions, loop.hidden_size, loop.input_size, kb.batch
        if self.x_projected:
            # x's transmitted copy runs ahead, a chunk of steps at a time: its copies
            # at the chunk's steps (whose projection gives the input parts) and how
            # many components each step transmitted.
            self.sent_x = kb.named("sent_x", T.alloc_buffer((nd, batch, D), acc))
            self.x_copies = kb.named("sent_x_steps", T.alloc_buffer((kb.chunk, nd, batch, D), acc))
            self.x_sent = kb.named("sent_x_count", T.alloc_buffer((kb.chunk, nd, batch), "int64"))
        else:
            # Last transmitted copies, double-buffered by step parity like h.
            self.sent_x = kb.named("sent_x", T.alloc_buffer((2, nd, batch, D), acc))
        self.sent_h = kb.named("sent_h", T.alloc_buffer((2, nd, batch, H), acc))
        if kb.gru_reset_first:
            self.sent_rh = kb.named("sent_rh", T.alloc_buffer((2, nd, batch, H), acc))
        # The step's transmissions of x (part 0) and u (part 1), found once per block
        # of batch elements: the listed components (at the block's first element),
        # their changes per element (0 where an element did not transmit; the
        # rows of a block's repeated last elements are the padding) and how many
        # each element transmitted.
        # (With x_projected only u is listed: part 0 is left unused.)
        n = H if self.x_projected else max(D, H)
        self.columns = kb.named("delta_columns", T.alloc_buffer((nd, batch, 2, n), "int64"))
        self.listed = kb.named("delta_listed", T.alloc_buffer((nd, batch, 2), "int64"))
        self.changes = kb.named("delta_values", T.alloc_buffer((nd, batch + batch_block() - 1, 2, n), acc))
        self.sent = kb.named("delta_sent", T.alloc_buffer((nd, batch, 2), "int64"))

    def initialise_chain(self, d, b):
        """Parts start from the biases, transmitted copies from 0."""
        kb, loop = self.kb, self.kb.loop
        zero = kb.m.const(0.0)
        with T.serial(0, loop.rows) as j:
            if not self.x_projected:  # else the projection sets them at every step
                T.buffer_store(kb.a, kb.with_bias(zero, d, j, "W"), [d, b, j])
            T.buffer_store(kb.bp, kb.with_bias(zero, d, j, "R"), [d, b, j])
        sent = [(self.sent_h, loop.hidden_size)]
        if kb.gru_reset_first:
            sent.append((self.sent_rh, loop.hidden_size))
        if self.x_projected:
            with T.serial(0, loop.input_size) as k:
                T.buffer_store(self.sent_x, zero, [d, b, k])
        else:
            sent.append((self.sent_x, loop.input_size))
        for buf, n in sent:
            with T.serial(0, n) as k:
                T.buffer_store(buf, zero, [0, d, b, k])

    def carried(self):
        """The parts (the input parts only where kept: with x_projected they are the
        projection of x's copy) and the transmitted copies; double-buffered copies are
        written at parity 0 (the first step's) and read at the parity after the last
        step."""
        kb = self.kb
        ends = (i64(0), kb.seq % 2)
        fields = [("b", *buffer_field(kb.bp)), ("sent_h", *buffer_field(self.sent_h, ends))]
        if self.keeps_input_parts:
            fields.append(("a", *buffer_field(kb.a)))
        fields.append(("sent_x", *buffer_field(self.sent_x, None if self.x_projected else ends)))
        if kb.gru_reset_first:
            fields.append(("sent_rh", *buffer_field(self.sent_rh, ends)))
        return fields

    # -- x's transmissions ahead of the recurrence (x_projected) ----------------------

    def before_projection(self, s):
        if self.x_projected:
            self._transmitted_inputs(s)

    def projected_vector(self, d, b, s):
        # x's transmitted copy at that step (see _transmitted_inputs).
        return (self.x_copies, (s % self.kb.chunk, d, b)) if self.x_projected else None

    def _transmits(self, valid, diff, thr):
        """Whether a component whose value moved by ``diff`` since it was last sent is
        transmitted at a valid step: |diff| >= threshold, compared in float64, or a NaN
        change (which then reaches the parts, as in the unmodified layer)."""
        large = tirx.Cast("float64", tirx.abs(diff)) >= thr
        return tirx.And(valid, tirx.Or(large, self.kb.m.isnan(diff)))

    def _transmitted_inputs(self, s):
        """x's transmissions for the chunk of steps from s, per chain, when the input
        parts come from a projection.  Its copy at each step goes to sent_x_steps, whose
        projection (W x^ + Wb, what the spec's column updates of W sum to) is the input
        part, and the number of transmitted components to sent_x_count.  Steps past an
        element's length transmit nothing."""
        kb, loop = self.kb, self.kb.loop
        nd, D = loop.num_directions, loop.input_size
        steps = T.bind(tirx.min(kb.chunk, (kb.seq - s + TIME_BLOCK - 1) // TIME_BLOCK * TIME_BLOCK))
        batch = tirx.max(kb.batch, i64(1))
        with kb.parallel(nd * batch) as task:
            d = T.bind(task // batch) if nd > 1 else i64(0)
            b = T.bind(task % batch)
            thr = T.bind(self.thresholds[d])
            with T.serial(0, steps) as i:
                valid, t = kb.time_index(d, b, s + i)
                valid = T.bind(valid)
                t = T.bind(tirx.max(tirx.min(t, kb.seq - 1), i64(0)))
                count = T.alloc_buffer((1,), "int64")
                T.buffer_store(count, i64(0), [0])
                with T.serial(0, D) as k:
                    old = T.bind(self.sent_x[d, b, k])
                    new = T.bind(kb.load(kb.X, (t, b, k)))
                    changed = T.bind(self._transmits(valid, new - old, thr))
                    value = T.bind(tirx.Select(changed, new, old))
                    T.buffer_store(self.sent_x, value, [d, b, k])
                    T.buffer_store(self.x_copies, value, [i, d, b, k])
                    T.buffer_store(count, count[0] + tirx.Select(changed, i64(1), i64(0)), [0])
                T.buffer_store(self.x_sent, count[0], [i, d, b])

    # -- each step's transmissions --------------------------------------------------

    def begin_step(self, s):
        self._selection(s, self.kb.h, parts=(1,) if self.x_projected else (0, 1))

    def after_reset_phase(self, s):
        # The candidate reads r (.) h, complete only now (x's list stays).
        self._selection(s, self.kb.rh, parts=(1,))

    def _selection(self, s, u_buf, parts):
        """The phase finding step s's transmissions, once per block of batch elements
        and input vector in ``parts`` (part 0: x_t, part 1: u, the vector in ``u_buf``:
        h of the previous step, or r (.) h), before the unit blocks add their columns.
        A component whose change since it was last sent reaches the threshold for any
        element of the block is listed, with each element's change (0 for the elements
        that keep it); transmitted components become the new sent copies."""
        kb, loop = self.kb, self.kb.loop
        u_sent = self.sent_rh if u_buf is kb.rh else self.sent_h

        def phase(d, task_part, block, s):
            _, _, elems = block
            live, pos = kb.live(d, block, s)
            vectors = ((kb.X, [(pos[e], b) for e, b in enumerate(elems)], loop.input_size, self.sent_x),
                       (u_buf, [kb.u_ref(u_buf, d, b, s)[1] for b in elems], loop.hidden_size, u_sent))
            if len(parts) == 1:
                self._select(d, parts[0], block, s, live, *vectors[parts[0]])
                return
            with T.If(task_part == i64(0)):
                with T.Then():
                    self._select(d, 0, block, s, live, *vectors[0])
                with T.Else():
                    self._select(d, 1, block, s, live, *vectors[1])

        kb.parallel_tasks(s, phase, parts=len(parts))

    def _select(self, d, part, block, s, live, vec, prefixes, n, sent):
        """List the components of ``vec`` (n of them, at ``prefixes`` per element)
        transmitted by some element of the block, and update the ``sent`` copies."""
        kb = self.kb
        b0, _, elems = block
        par, nxt = s % 2, (s + 1) % 2
        thr = T.bind(self.thresholds[d])
        zero = kb.m.const(0.0)
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
                new = T.bind(kb.load(vec, prefixes[e] + (k,)))
                diff = T.bind(new - old)
                changed = T.bind(self._transmits(live[e], diff, thr))
                T.buffer_store(self.changes, tirx.Select(changed, diff, zero), [d, b0 + e, part, listed[0]])
                T.buffer_store(sent_count[e], sent_count[e][0] + tirx.Select(changed, i64(1), i64(0)), [0])
                sends.append((b, tirx.Select(changed, new, old)))
                anyone = tirx.Or(anyone, changed)
            # Last element first, so that a repeated last element's store (its old
            # copy) is overwritten by the real one's.
            for b, value in reversed(sends):
                T.buffer_store(sent, value, [nxt, d, b, k])
            T.buffer_store(self.columns, k, [d, b0, part, listed[0]])
            T.buffer_store(listed, listed[0] + tirx.Select(anyone, i64(1), i64(0)), [0])
        T.buffer_store(self.listed, listed[0], [d, b0, part])
        for e, b in enumerate(elems):
            with T.If(live[e]):
                with T.Then():
                    T.buffer_store(self.sent, sent_count[e][0], [d, b, part])

    # -- the column updates -----------------------------------------------------------

    def evaluate_block(self, d, ub, block, s, gates, u_buf):
        """Add the step's listed columns to this unit block's parts, for every element
        of the block: each listed column is loaded once and added to every element's
        parts, times that element's change (adding 0 * w leaves a part unchanged), so a
        column load serves every element of the block.  The accumulators stay in registers
        over the list.  With x_projected, the input parts are taken from the
        projection instead, and only R's columns are added.  Counts are multiply-adds:
        rows x transmitted components."""
        kb, loop = self.kb, self.kb.loop
        H, D = loop.hidden_size, loop.input_size
        b0, _, elems = block
        _, count = kb.units(ub)
        live, _ = kb.live(d, block, s)
        if not self.x_projected:
            self._add_block_columns(d, ub, block, gates, 0, self.WT, kb.a)
        self._add_block_columns(d, ub, block, gates, 1, self.RT, kb.bp)
        for e, b in enumerate(elems):
            with T.If(live[e]):
                with T.Then():
                    if self.x_projected:
                        # (The input parts are the projection of x's transmitted copy,
                        # which the cell update reads: see KernelBuilder.input_part.)
                        x_sent = self.x_sent[s % kb.chunk, d, b]
                    else:
                        x_sent = self.sent[d, b, 0]
                    sent = T.bind(x_sent + self.sent[d, b, 1])
                    for g in gates:
                        kb.count(d, b, ub, g, computed=count * sent, reused=count * (i64(D + H) - sent))
        return True

    def _add_block_columns(self, d, ub, block, gates, part, columns, out):
        """out[d, b, rows of the block's units] += the columns listed for ``part``
        times each element's change, in list order, for the elements b of the block."""
        kb = self.kb
        H, U = kb.loop.hidden_size, kb.unit_block
        b0, nb, elems = block
        first, count = kb.units(ub)
        listed = self.listed[d, b0, part]
        if H % U == 0:
            # Whole blocks: vectors of up to COLUMN_WIDTH units, at most four per element.
            width = COLUMN_WIDTH if U % COLUMN_WIDTH == 0 else U
            chunks = [(c * width, width) for c in range(U // width)]
        else:
            # The last block is partial: one unit at a time.
            chunks = [(0, 1)]

        def lanes(w):
            return T.vectorized(0, w) if w > 1 else T.serial(0, 1)

        for g in gates:
            def body(u0):
                accs = [[T.alloc_buffer((w,), kb.acc) for _, w in chunks] for _ in elems]
                for e, b in enumerate(elems):
                    for (c0, w), acc in zip(chunks, accs[e]):
                        with lanes(w) as lane:
                            T.buffer_store(acc, out[d, b, g * H + first + u0 + c0 + lane], [lane])
                with T.serial(0, listed) as i:
                    k = T.bind(self.columns[d, b0, part, i])
                    vs = [T.bind(self.changes[d, b0 + e, part, i]) for e in range(nb)]
                    for ci, (c0, w) in enumerate(chunks):
                        with lanes(w) as lane:
                            col = kb.load(columns, (d, ub, k, g * U + u0 + c0 + lane))
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
