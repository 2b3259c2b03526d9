"""Recurrent-loop kernels: one TIR PrimFunc per ONNX recurrent node.

A kernel holds the whole time loop of a layer.  Its structure is what the memoization
pass relies on:

* the outer loop runs over *chains*, one per (direction, batch element); chains are
  independent, so it is a parallel loop;
* each chain keeps its state (h, c) and two buffers of dot products per neuron,
  ``input_part`` (a_j = W_j x_t + Wb_j) and ``recurrent_part`` (b_j = R_j u_j + Rb_j);
* at every valid step the *neuron evaluations* (:meth:`KernelBuilder.emit_neurons`) fill
  those buffers, then the cell update of :mod:`memotvm.cells` turns them into h and c.

Memoization (``memo`` given) changes only the neuron evaluations: a predictor guards
each neuron's dot products, and because the dot-product buffers persist from step to
step they *are* the memo table: a reused neuron simply keeps its last values.

Kernel arguments, in order: X (layout 0), W, R, then the optional inputs the node has
(B, sequence_lens, initial_h, initial_c, P; layout 0), then for the BNN predictor the
packed sign bits of W and R, then the outputs Y, Y_h, [Y_c], ``stats`` (int64
[directions, batch, gates, 2]: computed and reused evaluations) and ``status`` (int32
[directions, batch]: 1 where the element's sequence length was out of range).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .. import cells
from .recurrent import RecurrentLoop

WORD_BITS = 64
# float32 lanes of one accumulator; 16 fills an AVX-512 register, two AVX2 registers.
LANES = 16


def words(n: int) -> int:
    """Machine words needed for the sign bits of an n-vector."""
    return (n + WORD_BITS - 1) // WORD_BITS


@dataclass(frozen=True)
class MemoPlan:
    """What the memoization pass asks of one kernel.

    ``predictor`` is "bnn" or "oracle"; ``thresholds`` has one finite value >= 0 per
    direction.
    """

    predictor: str
    thresholds: tuple


class TirMath:
    """The :mod:`memotvm.cells` math backend that emits TIR expressions."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def const(self, v):
        return tirx.const(float(v), self.dtype)

    def bind(self, x):
        return T.bind(x)

    maximum = staticmethod(tirx.max)
    minimum = staticmethod(tirx.min)
    where = staticmethod(tirx.Select)
    tanh = staticmethod(tirx.tanh)
    sigmoid = staticmethod(tirx.sigmoid)
    exp = staticmethod(tirx.exp)
    abs = staticmethod(tirx.abs)
    log1p = staticmethod(tirx.log1p)


def i64(v):
    return tirx.const(v, "int64")


class KernelBuilder:
    """Builds the PrimFunc of one :class:`RecurrentLoop`, plain or memoized."""

    def __init__(self, loop: RecurrentLoop, memo: MemoPlan | None = None):
        self.loop = loop
        self.memo = memo
        # Accumulate and apply the gate math in float32 at least.
        self.acc = "float64" if loop.dtype == "float64" else "float32"
        self.m = TirMath(self.acc)

    # -- entry point ---------------------------------------------------------------

    def build(self) -> tirx.PrimFunc:
        loop = self.loop
        with IRBuilder() as ib:
            with T.prim_func():
                T.func_name(kernel_name(loop, self.memo))
                attrs = {"tir.noalias": True, "memotvm.recurrent": loop.to_json()}
                if self.memo:
                    attrs["memotvm.memo"] = f"{self.memo.predictor}:{list(self.memo.thresholds)}"
                T.func_attr(attrs)
                self._declare_params()
                nchains = self.seq_batch[1] * loop.num_directions
                with T.parallel(0, nchains) as chain:
                    if loop.num_directions == 1:
                        self._chain(i64(0), chain)
                    else:
                        b = self.seq_batch[1]
                        self._chain(chain // b, chain % b)
        return ib.get()

    # -- parameters ----------------------------------------------------------------

    def _buffer(self, name, shape, dtype):
        handle = T.arg(name, T.handle())
        buf = T.match_buffer(handle, shape, dtype)
        IRBuilder.name(name, buf)
        return buf

    def _declare_params(self):
        loop = self.loop
        nd, H, D, G = loop.num_directions, loop.hidden_size, loop.input_size, loop.rows
        seq = tirx.Var("seq_length", "int64")
        batch = tirx.Var("batch_size", "int64")
        self.seq_batch = (seq, batch)
        dt = loop.dtype
        self.X = self._buffer("X", (seq, batch, D), dt)
        self.W = self._buffer("W", (nd, G, D), dt)
        self.R = self._buffer("R", (nd, G, H), dt)
        self.B = self._buffer("B", (nd, 2 * G), dt) if loop.has("B") else None
        self.L = self._buffer("sequence_lens", (batch,), "int32") if loop.has("sequence_lens") else None
        self.H0 = self._buffer("initial_h", (nd, batch, H), dt) if loop.has("initial_h") else None
        self.C0 = self._buffer("initial_c", (nd, batch, H), dt) if loop.has("initial_c") else None
        self.P = self._buffer("P", (nd, 3 * H), dt) if loop.has("P") else None
        if self.memo and self.memo.predictor == "bnn":
            self.WS = self._buffer("W_signs", (nd, G, words(D)), "uint64")
            self.RS = self._buffer("R_signs", (nd, G, words(H)), "uint64")
        self.Y = self._buffer("Y", (seq, nd, batch, H), dt)
        self.YH = self._buffer("Y_h", (nd, batch, H), dt)
        self.YC = self._buffer("Y_c", (nd, batch, H), dt) if loop.op == "LSTM" else None
        self.stats = self._buffer("stats", (nd, batch, loop.num_gates, 2), "int64")
        self.status = self._buffer("status", (nd, batch), "int32")

    # -- helpers -------------------------------------------------------------------

    def load(self, buf, idx):
        v = buf[tuple(idx)]
        return v if buf.dtype == self.acc else tirx.Cast(self.acc, v)

    def store(self, buf, value, idx):
        if buf.dtype != self.acc and buf.dtype in ("float16", "float32", "float64"):
            value = tirx.Cast(buf.dtype, value)
        T.buffer_store(buf, value, list(idx))

    def dot(self, mat, prefix, vec, vec_prefix, n):
        """sum_k mat[prefix + (k,)] * vec[vec_prefix + (k,)] with vector accumulators."""
        acc = self.dot_acc
        with T.vectorized(0, LANES) as lane:
            T.buffer_store(acc, self.m.const(0.0), [lane])
        full = n // LANES
        if full:
            with T.serial(0, full) as k0:
                with T.vectorized(0, LANES) as lane:
                    k = k0 * LANES + lane
                    prod = self.load(mat, prefix + (k,)) * self.load(vec, vec_prefix + (k,))
                    T.buffer_store(acc, acc[lane] + prod, [lane])
        # Pairwise sum of the lanes (shorter dependency chain than a serial sum).
        terms = [acc[lane] for lane in range(LANES)]
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] for i in range(0, len(terms), 2)]
        total = terms[0]
        for k in range(full * LANES, n):
            total = total + self.load(mat, prefix + (k,)) * self.load(vec, vec_prefix + (k,))
        # Bind now: the accumulator is reused by the next dot product.
        return T.bind(total)

    # -- one chain: a (direction, batch element) pair --------------------------------

    def _chain(self, d, b):
        loop = self.loop
        H, G = loop.hidden_size, loop.rows
        seq, _ = self.seq_batch
        acc = self.acc
        self._d = d
        self.h = T.alloc_buffer((H,), acc)
        IRBuilder.name("h", self.h)
        self.c = T.alloc_buffer((H,), acc) if loop.op == "LSTM" else None
        if self.c is not None:
            IRBuilder.name("c", self.c)
        self.a = T.alloc_buffer((G,), acc)
        IRBuilder.name("input_part", self.a)
        self.bpart = T.alloc_buffer((G,), acc)
        IRBuilder.name("recurrent_part", self.bpart)
        self.rh = T.alloc_buffer((H,), acc) if self._gru_reset_first else None
        self.dot_acc = T.alloc_buffer((LANES,), acc)
        IRBuilder.name("lanes", self.dot_acc)
        self.counts = T.alloc_buffer((loop.num_gates * 2,), "int64")
        IRBuilder.name("counts", self.counts)
        if self.memo:
            self._alloc_memo()
        with T.serial(0, loop.num_gates * 2) as g:
            T.buffer_store(self.counts, i64(0), [g])

        # The element's length, clamped so that no index can leave the buffers; a
        # length outside [0, seq_length] is reported through `status`.
        if self.L is not None:
            raw = tirx.Cast("int64", self.L[b])
            bad = tirx.Or(raw < i64(0), raw > seq)
            T.buffer_store(self.status, tirx.Select(bad, tirx.const(1, "int32"), tirx.const(0, "int32")), [d, b])
            length = T.bind(tirx.max(tirx.min(raw, seq), i64(0)))
        else:
            T.buffer_store(self.status, tirx.const(0, "int32"), [d, b])
            length = seq
        with T.serial(0, H) as k:
            h0 = self.load(self.H0, (d, b, k)) if self.H0 is not None else self.m.const(0.0)
            T.buffer_store(self.h, h0, [k])
            if self.c is not None:
                c0 = self.load(self.C0, (d, b, k)) if self.C0 is not None else self.m.const(0.0)
                T.buffer_store(self.c, c0, [k])

        with T.serial(0, seq) as s:
            with T.If(s < length):
                with T.Then():
                    reverse = self._reverse(d)
                    if reverse is True:
                        t = T.bind(length - 1 - s)
                    elif reverse is False:
                        t = s
                    else:
                        t = T.bind(tirx.Select(reverse, length - 1 - s, s))
                    self._directional(d, lambda dd: self._step(dd, b, t, s))
                    with T.serial(0, H) as k:
                        self.store(self.Y, self.h[k], (t, d, b, k))
                with T.Else():
                    # Past this element's length: Y is zero (same index range for
                    # both directions).
                    with T.serial(0, H) as k:
                        T.buffer_store(self.Y, tirx.const(0.0, loop.dtype), [s, d, b, k])
        with T.serial(0, H) as k:
            self.store(self.YH, self.h[k], (d, b, k))
            if self.YC is not None:
                self.store(self.YC, self.c[k], (d, b, k))
        with T.serial(0, loop.num_gates) as g:
            T.buffer_store(self.stats, self.counts[g * 2], [d, b, g, 0])
            T.buffer_store(self.stats, self.counts[g * 2 + 1], [d, b, g, 1])

    def _reverse(self, d):
        """Whether direction d runs backwards: a Python bool when static, else an expr."""
        if self.loop.direction == "bidirectional":
            return d == i64(1)
        return self.loop.direction == "reverse"

    def _directional(self, d, emit):
        """Emit per-direction code: once if both directions share their settings,
        else once per direction behind a branch on d."""
        loop = self.loop
        if loop.num_directions == 1 or self._same_settings():
            emit(0 if loop.num_directions == 1 else None)
            return
        with T.If(d == i64(0)):
            with T.Then():
                emit(0)
            with T.Else():
                emit(1)

    def _same_settings(self):
        acts = self.loop.activations
        same_thr = not self.memo or len(set(self.memo.thresholds)) == 1
        return acts[0] == acts[1] and same_thr

    @property
    def _gru_reset_first(self):
        return self.loop.op == "GRU" and not self.loop.linear_before_reset

    # -- one step of one chain -------------------------------------------------------

    def _step(self, dd, b, t, s):
        """One valid step.  ``dd`` is the static direction index whose settings apply
        (None when both directions share them); ``self.d_expr`` is the runtime one."""
        loop = self.loop
        H = loop.hidden_size
        m = self.m
        d = self._d
        acts = loop.activations[dd or 0]
        x_ref = (self.X, (t, b))
        h_ref = (self.h, ())
        if self.memo:
            self._pack_step_signs(x_ref, h_ref)
        if loop.op == "GRU" and not loop.linear_before_reset:
            # The candidate's recurrent input r (.) h needs r first.
            self.emit_neurons(dd, d, 0, 2 * H, x_ref, h_ref, s)
            with T.serial(0, H) as k:
                r = cells.gru_reset(m, acts, self.a[H + k] + self.bpart[H + k], loop.clip)
                T.buffer_store(self.rh, r * self.h[k], [k])
            if self.memo and self.memo.predictor == "bnn":
                self._pack_signs(self.rh, (), H, self.rh_bits)
            self.emit_neurons(dd, d, 2 * H, 3 * H, x_ref, (self.rh, ()), s)
        else:
            self.emit_neurons(dd, d, 0, loop.rows, x_ref, h_ref, s)
        with T.serial(0, H) as k:
            self._cell_update(acts, d, k)

    def _cell_update(self, acts, d, k):
        loop, m, H = self.loop, self.m, self.loop.hidden_size
        a, bp = self.a, self.bpart
        if loop.op == "LSTM":
            pre = {g: a[n * H + k] + bp[n * H + k] for n, g in enumerate(loop.gates)}
            peep = None
            if self.P is not None:
                peep = {g: self.load(self.P, (d, n * H + k)) for n, g in enumerate("iof")}
            h_new, c_new = cells.lstm_cell(
                m, acts, pre, self.c[k], peep, loop.clip, loop.input_forget
            )
            T.buffer_store(self.c, c_new, [k])
            T.buffer_store(self.h, h_new, [k])
        elif loop.op == "GRU":
            r = None
            if loop.linear_before_reset:
                r = cells.gru_reset(m, acts, a[H + k] + bp[H + k], loop.clip)
            h_new = cells.gru_cell(
                m, acts, a[k] + bp[k], a[2 * H + k], bp[2 * H + k], r, self.h[k],
                loop.clip, loop.linear_before_reset,
            )
            T.buffer_store(self.h, h_new, [k])
        else:
            T.buffer_store(self.h, cells.rnn_cell(m, acts, a[k] + bp[k], loop.clip), [k])

    # -- neuron evaluations: what memoization guards ----------------------------------

    def emit_neurons(self, dd, d, lo, hi, x_ref, u_ref, s):
        """Evaluate neurons lo..hi-1: their input and recurrent dot products."""
        with T.serial(lo, hi) as j:
            if self.memo is None:
                self._compute_neuron(d, j, x_ref, u_ref)
                self._count(j, computed=True)
            else:
                self._memo_neuron(dd, d, j, x_ref, u_ref, s, lo)

    def _compute_neuron(self, d, j, x_ref, u_ref):
        loop = self.loop
        wa = self.dot(self.W, (d, j), x_ref[0], x_ref[1], loop.input_size)
        wb = self.dot(self.R, (d, j), u_ref[0], u_ref[1], loop.hidden_size)
        if self.B is not None:
            wa = wa + self.load(self.B, (d, j))
            wb = wb + self.load(self.B, (d, loop.rows + j))
        T.buffer_store(self.a, wa, [j])
        T.buffer_store(self.bpart, wb, [j])

    def _count(self, j, computed):
        slot = (j // self.loop.hidden_size) * 2 + (0 if computed else 1)
        T.buffer_store(self.counts, self.counts[slot] + i64(1), [slot])

    # -- memoization (see ../shared/MEMO_SPEC.md) ------------------------------------

    def _alloc_memo(self):
        loop = self.loop
        G, H, D = loop.rows, loop.hidden_size, loop.input_size
        if self.memo.predictor == "bnn":
            self.memo_q = T.alloc_buffer((G,), "int32")
            self.x_bits = T.alloc_buffer((words(D),), "uint64")
            self.h_bits = T.alloc_buffer((words(H),), "uint64")
            self.rh_bits = T.alloc_buffer((words(H),), "uint64") if self._gru_reset_first else None
        else:
            self.memo_q = T.alloc_buffer((G,), self.acc)
        IRBuilder.name("memo_q", self.memo_q)

    def _pack_signs(self, buf, prefix, n, bits):
        """bits[w] bit l = 1 where buf[prefix + (64 w + l,)] < 0; padding bits stay 0."""
        with T.serial(0, words(n)) as w:
            T.buffer_store(bits, tirx.const(0, "uint64"), [w])
            with T.serial(0, tirx.min(i64(WORD_BITS), i64(n) - w * WORD_BITS)) as l:
                neg = self.load(buf, prefix + (w * WORD_BITS + l,)) < self.m.const(0.0)
                bit = tirx.Select(neg, tirx.const(1, "uint64"), tirx.const(0, "uint64"))
                T.buffer_store(bits, bits[w] | (bit << tirx.Cast("uint64", l)), [w])

    def _pack_step_signs(self, x_ref, h_ref):
        if self.memo.predictor != "bnn":
            return
        self._pack_signs(x_ref[0], x_ref[1], self.loop.input_size, self.x_bits)
        self._pack_signs(h_ref[0], h_ref[1], self.loop.hidden_size, self.h_bits)

    def _bnn_output(self, d, j, u_bits):
        """yb_j = (D + H) - 2 * popcount(signs(W_j | R_j) XOR signs(x | u))."""
        loop = self.loop
        D, H = loop.input_size, loop.hidden_size
        diff = tirx.const(0, "uint64")
        for w in range(words(D)):
            diff = diff + tirx.popcount(self.WS[d, j, w] ^ self.x_bits[w])
        for w in range(words(H)):
            diff = diff + tirx.popcount(self.RS[d, j, w] ^ u_bits[w])
        return T.bind(tirx.const(D + H, "int32") - 2 * tirx.Cast("int32", diff))

    def _memo_neuron(self, dd, d, j, x_ref, u_ref, s, lo):
        memo = self.memo
        thr = memo.thresholds[dd or 0]
        first = s == i64(0)
        if memo.predictor == "bnn":
            u_bits = self.rh_bits if (self._gru_reset_first and lo == 2 * self.loop.hidden_size) else self.h_bits
            q = self._bnn_output(d, j, u_bits)
            qm = self.memo_q[j]
            change = tirx.Cast("float64", tirx.abs(q - qm))
            scale = tirx.Cast("float64", tirx.max(tirx.abs(qm), tirx.const(1, "int32")))
            reuse = T.bind(tirx.And(tirx.Not(first), change < tirx.const(thr, "float64") * scale))
            with T.If(reuse):
                with T.Then():
                    self._count(j, computed=False)
                with T.Else():
                    self._compute_neuron(d, j, x_ref, u_ref)
                    T.buffer_store(self.memo_q, q, [j])
                    self._count(j, computed=True)
        else:  # oracle: compute anyway, keep the cached values where the change is small
            old_a = T.bind(self.a[j])
            old_b = T.bind(self.bpart[j])
            self._compute_neuron(d, j, x_ref, u_ref)
            p = T.bind(self.a[j] + self.bpart[j])
            qm = self.memo_q[j]
            change = tirx.abs(p - qm)
            scale = tirx.max(tirx.abs(qm), self.m.const(1e-6))
            reuse = T.bind(tirx.And(tirx.Not(first), change < self.m.const(thr) * scale))
            with T.If(reuse):
                with T.Then():
                    T.buffer_store(self.a, old_a, [j])
                    T.buffer_store(self.bpart, old_b, [j])
                    self._count(j, computed=False)
                with T.Else():
                    T.buffer_store(self.memo_q, p, [j])
                    self._count(j, computed=True)


def kernel_name(loop: RecurrentLoop, memo: MemoPlan | None = None) -> str:
    safe = "".join(ch if ch.isalnum() else "_" for ch in loop.name)
    return f"{loop.op.lower()}_{safe}" + (f"_memo_{memo.predictor}" if memo else "")


def build_kernel(loop: RecurrentLoop, memo: MemoPlan | None = None) -> tirx.PrimFunc:
    """The PrimFunc of ``loop``, memoized when ``memo`` is given."""
    return KernelBuilder(loop, memo).build()


def build_sign_packer(loop: RecurrentLoop, which: str) -> tirx.PrimFunc:
    """A PrimFunc packing the sign bits of W ("W") or R ("R") into 64-bit words.

    The memoization pass calls it on the weights; where they are constants, constant
    folding runs it once at compile time.
    """
    nd, G = loop.num_directions, loop.rows
    n = loop.input_size if which == "W" else loop.hidden_size
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"pack_signs_{which}_{kernel_name(loop)}")
            T.func_attr({"tir.noalias": True})
            src = T.match_buffer(T.arg(which, T.handle()), (nd, G, n), loop.dtype)
            dst = T.match_buffer(T.arg("bits", T.handle()), (nd, G, words(n)), "uint64")
            with T.grid(nd, G, words(n)) as (d, j, w):
                T.buffer_store(dst, tirx.const(0, "uint64"), [d, j, w])
                with T.serial(0, tirx.min(i64(WORD_BITS), i64(n) - w * WORD_BITS)) as l:
                    neg = src[d, j, w * WORD_BITS + l] < tirx.const(0, loop.dtype)
                    bit = tirx.Select(neg, tirx.const(1, "uint64"), tirx.const(0, "uint64"))
                    T.buffer_store(dst, dst[d, j, w] | (bit << tirx.Cast("uint64", l)), [d, j, w])
    return ib.get()
