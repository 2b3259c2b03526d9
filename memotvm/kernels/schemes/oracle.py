"""The oracle (analysis only): every neuron computed, the cached values kept where the
true pre-activation changed little.  It saves nothing; it shows the best any predictor
could do (docs/spec.md, "The oracle")."""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from ..tiling import i64
from .base import Scheme, buffer_field, small_change


class Oracle(Scheme):
    """Computes each neuron's recurrent part and takes its input part from the
    projection, one batch element per task."""

    keeps_input_parts = True
    blocks_batch = False

    def declare(self):
        kb = self.kb
        # Thresholds are data, not code: one compiled kernel serves every threshold.
        self.thresholds = kb.param("memo_thresholds", (kb.loop.num_directions,), "float64")

    def allocate(self):
        kb = self.kb
        shape = (kb.loop.num_directions, kb.batch, kb.loop.rows)
        self.memo_q = kb.named("memo_q", T.alloc_buffer(shape, kb.acc))
        # Every neuron is computed into these, then kept or dropped.
        self.new_a = kb.named("computed_input_part", T.alloc_buffer(shape, kb.acc))
        self.new_b = kb.named("computed_recurrent_part", T.alloc_buffer(shape, kb.acc))

    def carried(self):
        kb = self.kb
        return [("a", *buffer_field(kb.a)), ("b", *buffer_field(kb.bp)),
                ("q", *buffer_field(self.memo_q))]

    def evaluate_block(self, d, ub, block, s, gates, u_buf):
        return False

    def evaluate_element(self, d, ub, b, s, t, gates, u_ref):
        kb = self.kb
        H = kb.loop.hidden_size
        first, count = kb.units(ub)
        thr = T.bind(self.thresholds[d])
        # The first valid step of a sequence always computes (its table is empty),
        # unless the chain continues a table.
        may_reuse = T.bind(self.may_reuse(d, b, s))
        todo = T.alloc_buffer((len(gates) * kb.unit_block,), "int64")
        ntodo = T.alloc_buffer((1,), "int64")
        T.buffer_store(ntodo, i64(0), [0])
        new_a, new_b = self.new_a, self.new_b
        for g in gates:
            with T.serial(0, count) as u:
                T.buffer_store(todo, g * H + first + u, [ntodo[0]])
                T.buffer_store(ntodo, ntodo[0] + i64(1), [0])
        n = T.bind(ntodo[0])
        kb.dense_rows(d, [(b, u_ref)], i64(0), n, rows_buf=todo, a_out=new_a, b_out=new_b, step=s)
        for g in gates:
            reused = T.alloc_buffer((1,), "int64")
            T.buffer_store(reused, i64(0), [0])
            with T.serial(0, count) as u:
                j = T.bind(g * H + first + u)
                p = T.bind(new_a[d, b, j] + new_b[d, b, j])
                reuse = tirx.And(may_reuse, small_change(p, self.memo_q[d, b, j], thr, 1e-6))
                with T.If(reuse):
                    with T.Then():
                        T.buffer_store(reused, reused[0] + i64(1), [0])
                    with T.Else():
                        T.buffer_store(self.memo_q, p, [d, b, j])
                        T.buffer_store(kb.a, new_a[d, b, j], [d, b, j])
                        T.buffer_store(kb.bp, new_b[d, b, j], [d, b, j])
            kb.count(d, b, ub, g, computed=count - reused[0], reused=reused[0])
