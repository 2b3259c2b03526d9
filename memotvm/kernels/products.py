"""The dense products of a kernel: dot products of weight rows with input vectors.

Every recurrent product, wherever it is computed (the unmodified kernel's, the rows a
memoized kernel lists, the oracle's rows), accumulates lane k % L in order of k (L: the
target's vector lanes, :func:`~memotvm.kernels.tiling.vector_lanes`), then sums the
lanes by halving and adds the tail in order: a row's value does not depend on what it
is computed with.  The input parts all come from one projection of a chunk of steps,
whichever scheme reads them: from W in panels (:mod:`.input_panels`, where W is a
constant) each summed in order of k, else in lanes as above.  That is what makes a
memoized kernel at threshold 0 bit-identical to the unmodified one.

At precision bf16-act the recurrent products sum in the order of :mod:`.bf16_dot`
instead (pairs of k per lane, 2L per vector of accumulators, the row padded with zeros
to whole vectors), again whatever computes them, and every product of W or R multiplies x or h rounded to bfloat16; a predictor's
own products (the low-rank factors') read them unrounded.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from .bf16_dot import pair_dot, pair_word, rounded, word_dot
from .panels import TILE_ROWS, for_panel, panel_count, panel_vectors, register_block
from .row_blocks import BlockRow
from .tiling import ROW_BLOCK, ROW_MASK, TIME_BLOCK, i64, vector_registers

# The projection's register tile takes TIME_BLOCK steps as its rows.
assert TILE_ROWS == TIME_BLOCK
# Rows of W per task of the input projection: enough to amortise the task's launch.
PROJECTION_TASK_ROWS = ROW_BLOCK * 16


class DenseProducts:
    """The product code of :class:`memotvm.kernels.builder.KernelBuilder` (a mixin: it
    reads the builder's parameters and buffers: X, W, R, B, the projection and the
    input and recurrent parts, and ``lanes``)."""

    def load(self, buf, idx):
        v = buf[tuple(idx)]
        return v if buf.dtype == self.acc else tirx.Cast(self.acc, v)

    def store(self, buf, value, idx):
        if buf.dtype != self.acc and buf.dtype in ("float16", "float32", "float64"):
            value = tirx.Cast(buf.dtype, value)
        T.buffer_store(buf, value, list(idx))

    def operand(self, buf, idx, rows=None):
        """A value that rows of W or R multiply (of x or h, ``rows`` None: W's): rounded
        to bfloat16 at bf16-act.  (A predictor's rows multiply it as it is.)"""
        value = self.load(buf, idx)
        weights = rows is None or self._row_buffer(rows).same_as(self.W) or self.paired(rows)
        return rounded(value) if self.pairs and weights else value

    @staticmethod
    def _row_buffer(rows):
        row = rows[0]
        return row.buf if isinstance(row, BlockRow) else row[0]

    def paired(self, rows) -> bool:
        """Whether ``rows`` are rows of R in bfloat16 pairs (bf16-act, :mod:`.bf16_dot`)."""
        return self.pairs and self._row_buffer(rows).same_as(self.R)

    def dot_width(self, rows) -> int:
        """Elements of a row per block of its accumulators: a vector, or a vector of pairs."""
        return 2 * self.lanes if self.paired(rows) else self.lanes

    def _lane_sums(self, rows, vecs, n):
        """The accumulators of ``rows`` x ``vecs`` (see :meth:`multi_dot`) over the
        whole vectors (:meth:`dot_width` elements) of the last axis, vector-major: row r
        . vec v is in ``accs[v * len(rows) + r]``."""
        nr, nv = len(rows), len(vecs)
        # One small buffer per accumulator: each stays on the stack (TVM moves buffers
        # of 1 KiB and more to the heap) and LLVM keeps it in a register.
        accs = [T.alloc_buffer((self.lanes,), self.acc) for _ in range(nr * nv)]
        for acc in accs:
            with T.vectorized(0, self.lanes) as lane:
                T.buffer_store(acc, self.m.const(0.0), [lane])
        width = self.dot_width(rows)
        # (rows of R in pairs: a last partial block too, its missing values zero)
        full = -(-n // width) if self.paired(rows) else n // width
        if not full:
            return accs
        # The vectors in groups, one pass over k each, so that a group's accumulators,
        # its vectors and the rows' values (LLVM loads them all first) fit in the
        # target's registers: 4 rows x 4 vectors need 24 of AVX2's 16, and LLVM spilled
        # accumulators to the stack on every k.  (Each product still sums in order of
        # k: the values are the same.)  A loop of 8 vectors or fewer LLVM unrolls whole
        # and then interleaves the passes again, so it stays one pass (split, GRU 64 at
        # batch 1 took 163-192 us a call against 156-177 in one pass, one thread).
        group = nv if full <= 8 else max(1, min(nv, (vector_registers() - nr) // (nr + 1)))
        for first in range(0, nv, group):
            part = range(first, min(nv, first + group))
            if self.paired(rows):
                self._pair_pass(rows, vecs, part, accs, n)
                continue
            with T.serial(0, full) as k0:
                with T.vectorized(0, self.lanes) as lane:
                    k = k0 * self.lanes + lane
                    xs = {v: self.operand(vecs[v][0], vecs[v][1] + (k,), rows) for v in part}
                    for r, row in enumerate(rows):
                        w = self._row_value(row, k, (k0, lane))
                        for v in part:
                            acc = accs[v * nr + r]
                            T.buffer_store(acc, acc[lane] + w * xs[v], [lane])
        return accs

    def _pair_pass(self, rows, vecs, part, accs, n):
        """:meth:`_lane_sums`' pass over the vectors ``part`` for rows of R in pairs: per
        block of 2 x lanes values one :func:`~.bf16_dot.pair_dot` per row and vector.  A
        last, partial block reads the vectors' values through a copy padded with zeros
        (R's rows are padded so: :func:`~.bf16_dot.r_words`)."""
        L, nr = self.lanes, len(rows)
        whole = tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), L)

        def block(k0, values):
            xs = {v: values(v, k0 * i64(2 * L)) for v in part}
            for r, row in enumerate(rows):
                if isinstance(row, BlockRow):
                    w = T.bind(row.buf.vload(list(row.index((k0, i64(0)))), f"int32x{L}"))
                else:
                    w = T.bind(row[0].vload(list(row[1]) + [k0 * i64(L)], f"int32x{L}"))
                for v in part:
                    acc = accs[v * nr + r]
                    T.buffer_store(acc, pair_dot(acc.vload([0], f"float32x{L}"), w, *xs[v], L),
                                   [whole])

        def loaded(v, start):
            buf, prefix = vecs[v]
            return (T.bind(buf.vload(list(prefix) + [start], f"float32x{L}")),
                    T.bind(buf.vload(list(prefix) + [start + i64(L)], f"float32x{L}")))

        def padded(v, start):
            buf, prefix = vecs[v]
            copy = T.alloc_buffer((2 * L,), "float32")
            with T.vectorized(0, 2 * L) as i:
                k = start + i
                value = self.load(buf, prefix + (tirx.min(k, i64(n - 1)),))
                T.buffer_store(copy, tirx.Select(k < i64(n), value, tirx.const(0.0, "float32")), [i])
            return (T.bind(copy.vload([0], f"float32x{L}")), T.bind(copy.vload([L], f"float32x{L}")))

        with T.serial(0, n // (2 * L)) as k0:
            block(k0, loaded)
        if n % (2 * L):
            block(i64(n // (2 * L)), padded)

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
        ``[[row . vec for vec in vecs] for row in rows]``, each bound to a variable.  Every product accumulates lane k % L in order
        of k (L = ``self.lanes``), then the lanes are summed by halving
        (:meth:`_lane_totals`) and the tail (n % L) added in order: the same arithmetic whatever rows or vectors it is
        grouped with.
        """
        nr = len(rows)
        totals, _ = self._lane_totals(self._lane_sums(rows, vecs, n))
        width = self.dot_width(rows)
        full = n // width
        has_tail = not self.paired(rows) and n % width  # (pairs: a padded last block)
        out = []
        for r, row in enumerate(rows):
            row_out = []
            for v, (vbuf, vpre) in enumerate(vecs):
                total = totals[v * nr + r]
                if has_tail:
                    # The tail, added in order (a loop: unrolled it bloats the code).
                    tail = T.alloc_buffer((1,), self.acc)
                    T.buffer_store(tail, total, [0])
                    with T.serial(full * width, n) as k:
                        prod = self._row_value(row, k) * self.operand(vbuf, vpre + (k,), rows)
                        T.buffer_store(tail, tail[0] + prod, [0])
                    total = tail[0]
                row_out.append(T.bind(total))
            out.append(row_out)
        return out

    def dot_vector(self, rows, vecs, n):
        """:meth:`multi_dot`'s values as one buffer of ``self.lanes`` values, row r . vec v in
        lane ``v * len(rows) + r``: consecutive rows of a vector are consecutive lanes,
        which the caller stores (with their biases) as vectors instead of one by one.
        Where :meth:`vector_rows` allows (no tail, at most ``self.lanes`` products)."""
        assert self.vector_rows(len(rows), len(vecs), n, self.dot_width(rows))
        _, (buf,) = self._lane_totals(self._lane_sums(rows, vecs, n))
        return buf

    def vector_rows(self, n_rows, n_vecs, n, width=None):
        """Whether rows . vecs can come from :meth:`dot_vector` (``width``: the rows'
        :meth:`dot_width`, by default a vector)."""
        width = self.lanes if width is None else width
        whole = n % width == 0 or width == 2 * self.lanes  # (pairs have no tail)
        return whole and n_rows > 1 and n_rows * n_vecs <= self.lanes

    def _lane_totals(self, accs):
        """The sums of the lanes of each accumulator, all in one tree of vector shuffles.

        Each accumulator is summed by halving: s[l] += s[l + w/2] for w = ``self.lanes``, ...,
        2, so a product's total is the same whether its accumulator is reduced alone or
        with others.  Two vectors of g groups of width w become one vector of 2g groups
        of width w/2 (two two-source shuffles and an add), so reducing 16 accumulators
        costs 15 vector adds instead of 15 scalar adds each.  Returns the totals and
        the buffers holding them (one, whose lane i is accs[i]'s total, for at most
        ``self.lanes`` accumulators).
        """
        V, vt = self.lanes, f"{self.acc}x{self.lanes}"
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

    def input_part(self, d, b, s, j):
        """Neuron j's input part at step s, as the cell update reads it: kept in
        input_part where the scheme keeps earlier steps' parts, else this step's
        projection."""
        return self.a[d, b, j] if self.scheme.keeps_input_parts else self.input_projection(d, b, s, j)

    def with_bias(self, value, d, j, which):
        """value + Wb_j (which = "W") or + Rb_j (which = "R"), when the node has B; with
        int8 weights, the value (a dot product of the row's integers) times the row's
        scale first."""
        scale = self.W_scale if which == "W" else self.R_scale
        if scale is not None:
            value = value * scale[d, j]
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
        s+TIME_BLOCK-1 of chain (d, b) (j may be a vector of rows)."""
        vecs = self._projected_vectors(d, b, s)
        D = self.loop.input_size
        if n > 1 and D < self.lanes:
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
                        total = total + self.load(self.W, (d, j, k)) * self.operand(buf, pre + (k,))
                    store(j, tb, self.with_bias(total, d, j, "W"))
            return
        js = [T.bind(j0 + r) for r in range(n)]
        rows = [(self.W, (d, j)) for j in js]
        if self.vector_rows(n, len(vecs), D):
            # Each step's values are stored as one vector.
            sums = self.dot_vector(rows, vecs, D)
            with T.vectorized(0, n) as r:
                j = j0 + r
                for tb in range(TIME_BLOCK):
                    store(j, tb, self.with_bias(sums[tb * n + r], d, j, "W"))
            return
        sums = self.multi_dot(rows, vecs, D)
        for r, j in enumerate(js):
            for tb in range(TIME_BLOCK):
                store(j, tb, self.with_bias(sums[r][tb], d, j, "W"))

    def _projected_vector(self, d, b, s):
        """(buffer, index prefix) of the vector the projection of chain (d, b)
        multiplies at step s: x_t (a step past the element's length reads a clamped
        position, whose value is never used) or the scheme's."""
        projected = self.scheme.projected_vector(d, b, s)
        if projected is not None:
            return projected
        _, t = self.time_index(d, b, s)
        return (self.X, (T.bind(tirx.max(tirx.min(t, self.seq - 1), i64(0))), b))

    def _projected_vectors(self, d, b, s):
        """:meth:`_projected_vector` of steps s .. s+TIME_BLOCK-1."""
        return [self._projected_vector(d, b, s + tb) for tb in range(TIME_BLOCK)]

    def _input_projection(self, s, stream=None):
        """input_projection[i, d, b, j] = W_j . x_t + Wb_j for steps s + i of a chunk.

        A task owns 64 rows and computes them for all those steps, four rows times four
        steps per block: its weight rows stay in cache, so W is read from memory once
        per chunk.  Steps past an element's length (or the sequence)
        read a clamped position and are never used.  With W in panels
        (:mod:`.input_panels`), :meth:`_panel_projection` instead.  ``stream``: the
        (direction, first element, elements) of an independent stream
        (:meth:`~memotvm.kernels.builder.KernelBuilder.stream_loop`), whose worker
        computes its chains' rows, task after task.
        """
        if self.input_panels:
            self._panel_projection(s, stream)
            return
        loop = self.loop
        G = loop.rows
        per_task = PROJECTION_TASK_ROWS
        ntasks = -(-G // per_task)
        blocks = T.bind(tirx.min(self.chunk // TIME_BLOCK,
                                 (self.seq - s + TIME_BLOCK - 1) // TIME_BLOCK))

        def task(d, t, first_element, elements):
            first = T.bind(t * per_task)
            last = T.bind(tirx.min(first + per_task, i64(G)))
            with T.grid(elements, blocks) as (e, sb):
                b = first_element + e

                def store(j, tb, value):
                    T.buffer_store(self.xproj, value, [sb * TIME_BLOCK + tb, d, b, j])

                # Without whole vectors of x, rows are summed as vectors (see
                # _project_rows): a block of them fills one.
                block = self.lanes if loop.input_size < self.lanes else ROW_BLOCK
                self._in_row_blocks(first, last, lambda j0, n: self._project_rows(
                    d, b, s + sb * TIME_BLOCK, j0, n, store), block)

        self._projection_tasks(ntasks, task, stream)

    def _projection_tasks(self, ntasks, task, stream):
        """task(d, t, first element, elements) for every direction d and task t <
        ntasks: in parallel over every element, or one after another over a stream's."""
        nd = self.loop.num_directions
        if stream is None:
            with self.parallel(nd * ntasks) as i:
                d = T.bind(i // ntasks) if nd > 1 else i64(0)
                task(d, T.bind(i % ntasks), i64(0), self.batch)
            return
        d, first_element, elements = stream
        with T.serial(0, ntasks) as t:
            task(d, t, first_element, elements)

    def _panel_projection(self, s, stream=None):
        """:meth:`_input_projection` from W in panels: the chunk's steps times W's
        transpose on the register tile of :mod:`.panels`, each W_j . x_t summed in
        order of k.  A tile is four steps of one element by a panel of rows; the steps
        of the sequence after its last four (all of a call of one step, a stream's)
        are taken four elements at a time instead, and the elements after the last
        four one at a time.

        A task owns the panels of 64 rows (at least one panel) of one direction and
        computes them for every element and step of the chunk: their weights stay in
        cache, and the four steps' x in L1 while the task's panels read them."""
        loop = self.loop
        G = loop.rows
        npanels = panel_count(G)
        per_task = max(1, PROJECTION_TASK_ROWS // (panel_vectors() * self.lanes))  # panels
        ntasks = -(-npanels // per_task)
        steps = T.bind(tirx.min(self.chunk, self.seq - s))
        whole, tail = T.bind(steps // TIME_BLOCK), T.bind(steps % TIME_BLOCK)

        def task(d, t, first_element, elements):
            first_panel = T.bind(t * per_task)
            panels = T.bind(tirx.min(i64(per_task), i64(npanels) - first_panel))

            def project(at, vecs, first, rows, p):
                for_panel(first_panel + p, G, lambda col, width, _whole: self._project_panel(
                    d, at, vecs, first, rows, col, width))

            with T.grid(elements, whole, panels) as (e, sb, p):
                b = T.bind(first_element + e)
                step = T.bind(sb * TIME_BLOCK)
                project(lambda row: (row, b), self._projected_vectors(d, b, s + step),
                        step, step + i64(TIME_BLOCK), p)
            groups = T.bind(elements // TILE_ROWS)
            with T.grid(tail, panels) as (r, p):
                step = T.bind(whole * TIME_BLOCK + r)
                with T.serial(0, groups) as g:
                    b0 = T.bind(first_element + g * TILE_ROWS)
                    project(lambda row: (step, row),
                            [self._projected_vector(d, b0 + i, s + step) for i in range(TILE_ROWS)],
                            b0, b0 + i64(TILE_ROWS), p)
                # (the last elements one at a time: a batch of one computes one row)
                with T.serial(first_element + groups * TILE_ROWS, first_element + elements) as b:
                    project(lambda row: (step, row), [self._projected_vector(d, b, s + step)],
                            b, b + i64(1), p)

        self._projection_tasks(ntasks, task, stream)

    def _project_panel(self, d, at, vecs, first, rows, col, width):
        """The projections of rows col .. col + width x lanes - 1 (those below the rows)
        of direction d for the tile rows first, first + 1, ... below ``rows``, each
        multiplying its vector of ``vecs`` (:meth:`_projected_vector`) and stored at
        the (step in the chunk, element) ``at(tile row)``."""
        G, D, lanes = self.loop.rows, self.loop.input_size, self.lanes
        depth = -(-D // 2) if self.pairs else D  # (bf16-act: words of two values)
        base = i64(col) * i64(depth)  # the panel's offset in its direction's panels

        def weight(k, v, lane):
            at = base + k * i64(width * lanes) + i64(v * lanes)
            if self.pairs:
                return self.W.vload([d, at], f"int32x{lanes}")
            return self.load(self.W, (d, at + lane))

        def x_value(vec, k):
            buf, prefix = vec
            if not self.pairs:
                return self.operand(buf, prefix + (k,))
            # x_2k and x_2k+1 (0 past an odd D's last: its weight is 0 too)
            odd = tirx.min(2 * k + 1, i64(D - 1))
            high = tirx.Select(2 * k + 1 < i64(D), self.load(buf, prefix + (odd,)),
                               tirx.const(0.0, "float32"))
            return pair_word(self.load(buf, prefix + (2 * k,)), high)

        def store(acc, row, v):
            step, b = at(row)
            first_row = i64(col) + i64(v * lanes)
            if isinstance(col, int) and col + (v + 1) * lanes > G:
                lanes_inside = T.serial(0, G - col - v * lanes)  # the rows past G: none
            else:
                lanes_inside = T.vectorized(0, lanes)
            with lanes_inside as lane:
                j = first_row + lane
                T.buffer_store(self.xproj, self.with_bias(acc[lane], d, j, "W"), [step, d, b, j])

        register_block(first, rows, depth, width, lanes, x_value, weight, store, sources=vecs,
                       word_dot=(lambda acc, w, x: word_dot(acc, w, x, lanes)) if self.pairs else None)

    def dense_rows(self, d, chains, base, count, rows_buf=None, a_out=None, b_out=None,
                   step=None, masked=False, whole_groups=False):
        """Compute neurons base .. base+count-1 (or rows_buf[base ..] when given) of
        the chains (d, b) of ``chains``, (b, u_ref) pairs, together, four at a time.
        The input part comes from the input projection of step ``step``.  Results go to
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
                rows = [BlockRow(self.R, d, T.bind((base + i0) // i64(ROW_BLOCK)), r,
                                 self.r_words if self.pairs else loop.hidden_size, self.lanes)
                        for r in range(n)]
            else:
                rows = [(self.R, (d, j)) for j in js]
            vecs = [ref for _, ref in chains]
            # Consecutive rows are stored as vectors: always without a list, and where a
            # block's listed rows happen to be consecutive (most of them, when any of
            # four elements computing a row lists it).
            vector = (rows_buf is None or masked) and self.vector_rows(
                n, len(chains), loop.hidden_size, self.dot_width(rows))
            if vector:
                rec = self.dot_vector(rows, vecs, loop.hidden_size)
            else:
                rec = self.multi_dot(rows, vecs, loop.hidden_size)

            def store_rows(r, j, mask=None):
                """Store the parts of rows j (one row, or a vector of consecutive rows
                when r is a lane index) for every chain c, where bit c of ``mask``
                is set (for every chain without it)."""
                for c, (cb, _) in enumerate(chains):
                    if a_out is None:
                        a_val = None  # read from the projection (input_part)
                    else:
                        a_val = self.input_projection(d, cb, step, j)
                    b_val = self.with_bias(rec[c * n + r] if vector else rec[r][c], d, j, "R")
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
