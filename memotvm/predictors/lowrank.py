"""Predictors from truncated SVDs of the weights: ``lowrank:r`` and ``exactinput:r``."""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from ..errors import ConfigError
from .base import Predictor


def _stack32(per_direction):
    return np.ascontiguousarray(np.stack(per_direction), dtype=np.float32)


def _low_rank_state(kb, d, r, parts):
    """z[i] = sum over (V, vec_ref, n) in parts of V[d, i, :n] . vec, four rows at a time:
    the per-step projection onto the r singular vectors."""
    z = T.alloc_buffer((r,), "float32")
    for i0 in range(0, r, 4):
        rows = list(range(i0, min(i0 + 4, r)))
        sums = [kb.multi_dot([(V, (d, i)) for i in rows], [ref], n) for V, ref, n in parts]
        for k, i in enumerate(rows):
            total = sums[0][k][0]
            for part in sums[1:]:
                total = total + part[k][0]
            T.buffer_store(z, tirx.Cast("float32", total), [i])
    return z


def _low_rank_value(P, d, j, z, r, start):
    """start + P[d, j, :] . z, in order of i."""
    total = start
    for i in range(r):
        total = total + P[d, j, i] * z[i]
    return T.bind(total)


class LowRankPredictor(Predictor):
    """q = (U_r S_r V_r^T)_j . [x ; u]: the rank-r truncated SVD of the direction's
    stacked weights [W | R] (biases left out), computed at compile time.  Per step it
    costs r (D + H) multiply-adds for z = V_r^T [x ; u], then r per neuron."""

    name = "lowrank"

    def __init__(self, rank: int):
        if rank < 1:
            raise ConfigError(f"lowrank needs a rank >= 1, got {rank}")
        self.rank = rank

    def effective_rank(self, loop):
        return min(self.rank, loop.rows, loop.input_size + loop.hidden_size)

    def weight_data(self, loop, W, R):
        r = self.effective_rank(loop)
        D = loop.input_size
        P, Vx, Vu = [], [], []
        for d in range(loop.num_directions):
            stacked = np.concatenate([W[d], R[d]], axis=1).astype(np.float64)
            U, S, Vt = np.linalg.svd(stacked, full_matrices=False)
            P.append(U[:, :r] * S[:r])
            Vx.append(Vt[:r, :D])
            Vu.append(Vt[:r, D:])
        return {"lowrank_P": _stack32(P), "lowrank_Vx": _stack32(Vx), "lowrank_Vu": _stack32(Vu)}

    def declare(self, kb):
        loop = kb.loop
        nd, G, r = loop.num_directions, loop.rows, self.effective_rank(loop)
        kb.LP = kb.param("lowrank_P", (nd, G, r), "float32")
        kb.LVx = kb.param("lowrank_Vx", (nd, r, loop.input_size), "float32")
        kb.LVu = kb.param("lowrank_Vu", (nd, r, loop.hidden_size), "float32")

    def prepare(self, kb, d, b, s, x_ref, u_ref):
        loop = kb.loop
        return _low_rank_state(kb, d, self.effective_rank(loop),
                               [(kb.LVx, x_ref, loop.input_size), (kb.LVu, u_ref, loop.hidden_size)])

    def value(self, kb, d, j, z):
        return _low_rank_value(kb.LP, d, j, z, self.effective_rank(kb.loop), tirx.const(0.0, "float32"))

    def reference(self, data, d, rows, x, u, a):
        z = data["lowrank_Vx"][d] @ x.astype(np.float32) + data["lowrank_Vu"][d] @ u.astype(np.float32)
        return (data["lowrank_P"][d][rows] @ z).astype(np.float64)

    def extra_cost(self, loop):
        r = self.effective_rank(loop)
        return r * (loop.input_size + loop.hidden_size) + r * loop.rows

    def data_bytes(self, loop):
        r = self.effective_rank(loop)
        return 4 * loop.num_directions * r * (loop.rows + loop.input_size + loop.hidden_size)


class ExactInputPredictor(Predictor):
    """q = a_j(t) + (U_r S_r V_r^T)_j . u: the exact input part (W_j x_t + Wb_j, which
    the kernel's input projection computes for every step anyway) plus a rank-r
    approximation of the recurrent part from the truncated SVD of R.  Only the
    recurrent part is memoized: a reused neuron takes its fresh input part and its
    cached recurrent part, so an input that moves is never missed.  Per step it costs
    r H multiply-adds for z = V_r^T u, then r per neuron; a reuse skips H of the
    neuron's D + H multiply-adds."""

    name = "exactinput"
    fresh_input = True

    def __init__(self, rank: int):
        if rank < 1:
            raise ConfigError(f"exactinput needs a rank >= 1, got {rank}")
        self.rank = rank

    def effective_rank(self, loop):
        return min(self.rank, loop.rows, loop.hidden_size)

    def weight_data(self, loop, W, R):
        r = self.effective_rank(loop)
        P, V = [], []
        for d in range(loop.num_directions):
            U, S, Vt = np.linalg.svd(np.asarray(R[d], np.float64), full_matrices=False)
            P.append(U[:, :r] * S[:r])
            V.append(Vt[:r])
        return {"exactinput_P": _stack32(P), "exactinput_V": _stack32(V)}

    def declare(self, kb):
        loop = kb.loop
        nd, G, r = loop.num_directions, loop.rows, self.effective_rank(loop)
        kb.EP = kb.param("exactinput_P", (nd, G, r), "float32")
        kb.EV = kb.param("exactinput_V", (nd, r, loop.hidden_size), "float32")

    def prepare(self, kb, d, b, s, x_ref, u_ref):
        loop = kb.loop
        z = _low_rank_state(kb, d, self.effective_rank(loop), [(kb.EV, u_ref, loop.hidden_size)])
        return z, b, s

    def value(self, kb, d, j, state):
        z, b, s = state
        exact = tirx.Cast("float32", kb.input_projection(d, b, s, j))
        return _low_rank_value(kb.EP, d, j, z, self.effective_rank(kb.loop), exact)

    def reference(self, data, d, rows, x, u, a):
        z = data["exactinput_V"][d] @ u.astype(np.float32)
        return (a.astype(np.float32) + data["exactinput_P"][d][rows] @ z).astype(np.float64)

    def extra_cost(self, loop):
        r = self.effective_rank(loop)
        return r * loop.hidden_size + r * loop.rows

    def data_bytes(self, loop):
        r = self.effective_rank(loop)
        return 4 * loop.num_directions * r * (loop.rows + loop.hidden_size)
