"""The unmodified kernel: every neuron computed at every step."""

from __future__ import annotations

from tvm.script.ir_builder import tirx as T

from .base import Scheme


class Dense(Scheme):
    """Every neuron, for a task's whole block of batch elements together."""

    streams = True

    def evaluate_block(self, d, ub, block, s, gates, u_buf):
        """Evaluate the neurons of unit block ub in ``gates`` for the task's batch
        elements together, reading u from ``u_buf`` (h of the previous step or r (.) h).
        Elements past their length are computed too (their values are never used), so
        that the block's products stay together."""
        kb = self.kb
        H = kb.loop.hidden_size
        first, count = kb.units(ub)
        chains = [(b, kb.u_ref(u_buf, d, b, s)) for b in block[2]]
        for g in gates:
            kb.dense_rows(d, chains, first + g * H, count, step=s,
                           whole_groups=kb.row_blocks)

        def count_element(b):
            with T.If(s < kb.lengths[b]):
                with T.Then():
                    for g in gates:
                        kb.count(d, b, ub, g, computed=count)

        kb.each_element(block, count_element)
        return True
