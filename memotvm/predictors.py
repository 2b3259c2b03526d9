"""Predictors: cheap guesses of how much a neuron's pre-activation changed.

Every predictor plugs into the same memo table and decision (../shared/MEMO_SPEC.md):
it maps a neuron's current inputs to q_j(t); the table keeps q_m from the neuron's last
full evaluation; the neuron is reused when |q_j(t) - q_m| / max(|q_m|, floor) < threshold.

A predictor is a small class with four parts, used by the pass, the kernel builder and
the numpy reference alike:

* ``weight_data(loop, W, R)`` -- what it derives from the weights at compile time, as
  named numpy arrays (they become constant inputs of the kernel);
* ``declare(kb)`` -- the kernel parameters for that data (called by the kernel builder);
* ``prepare(kb, d, b, s, x_ref, u_ref)`` / ``value(kb, d, j, state)`` -- TIR emitted once
  per task and step, then per neuron, returning q_j; a predictor with a ``group`` size
  may instead give the values of ``group`` consecutive neurons at once
  (``group_values``), which the kernel uses where the hidden size is a multiple of it;
* ``reference(data, d, rows, x, u, a)`` -- the same q in numpy, for the reference (``a``
  is the rows' exact input parts).

A predictor with ``fresh_input = True`` reads the exact input part (the kernel computes
the input projection of every step anyway) and memoizes only the recurrent part: a
reused neuron takes its fresh input part and its cached recurrent part.

``register_predictor`` makes a new one available by name (``"name"`` or
``"name:argument"``, e.g. ``lowrank:8``).  The oracle is not a predictor in this sense
(it computes every neuron and saves nothing) and is handled by the kernel directly.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from .errors import ConfigError


# Rows whose sign words the BNN predictor keeps side by side (8 words: one AVX-512 vector).
SIGN_GROUP = 8
# Delta execution updates the input parts by W's transmitted columns while W and R (as
# float32 columns, per direction) fit in this many bytes; beyond, the columns of both
# no longer stay in the last-level cache, and the input parts come from the projection
# of x's transmitted copies instead (DeltaExecution.projects_input).
DELTA_COLUMN_BYTES = 4 << 20


def words(n: int) -> int:
    """64-bit words needed for the sign bits of an n-vector."""
    return (n + 63) // 64


class Predictor:
    """Base class; see the module docstring."""

    name = ""
    floor = 1e-6  # e of the spec: 1 for integer predictors
    q_dtype = "float32"
    fresh_input = False  # True: only the recurrent part is memoized
    # "memo" (neuron-level memoization) or "delta" (delta execution: counts are
    # multiply-adds, not neuron evaluations)
    scheme = "memo"
    # True: the kernel keeps the packed sign bits of x, h (and r (.) h) for it
    # (``kb.sign_bits(ref)``), each packed once instead of by every task.
    reads_signs = False
    # Neurons whose values group_values computes together (None: value only).
    group = None

    def weight_data(self, loop, W, R) -> dict:
        return {}

    def declare(self, kb) -> None:
        """Declare the kernel parameters holding weight_data, in its order."""

    def prepare(self, kb, d, b, s, x_ref, u_ref):
        raise NotImplementedError

    def value(self, kb, d, j, state):
        raise NotImplementedError

    def group_values(self, kb, d, j0, state, out):
        """Store the values of neurons j0 .. j0 + group - 1 (j0 a multiple of group)
        into the buffer ``out``."""
        raise NotImplementedError

    def reference(self, data, d, rows, x, u, a) -> np.ndarray:
        raise NotImplementedError

    def reference_data(self, W, R) -> dict:
        return {}

    def data_bytes(self, loop) -> int:
        """Bytes of weight_data (kept with the compiled model)."""
        return 0

    def skipped_share(self, loop) -> float:
        """Share of a neuron's multiply-adds a reuse skips."""
        if self.fresh_input:
            return loop.hidden_size / (loop.input_size + loop.hidden_size)
        return 1.0

    def extra_cost(self, loop) -> int:
        """Multiply-adds (or equivalent word operations) per step and direction."""
        return 0


def pack_signs(v: np.ndarray) -> np.ndarray:
    """Sign bits (1 where v < 0) of the last axis, packed into uint64 words, bit l of
    word w standing for element 64 w + l; padding bits are 0."""
    n = v.shape[-1]
    bits = np.zeros(v.shape[:-1] + (words(n) * 64,), np.uint8)
    bits[..., :n] = v < 0
    packed = np.packbits(bits.reshape(v.shape[:-1] + (words(n), 8, 8))[..., ::-1], axis=-1)
    return packed.reshape(v.shape[:-1] + (words(n), 8)).view("<u8")[..., 0]


def group_rows(packed: np.ndarray, group: int) -> np.ndarray:
    """[..., rows, words] -> [..., ceil(rows / group), words, group]: word w of ``group``
    consecutive rows side by side, so that one vector load serves them all (padding
    rows are 0)."""
    *lead, rows, nw = packed.shape
    padded = np.zeros((*lead, -(-rows // group) * group, nw), packed.dtype)
    padded[..., :rows, :] = packed
    grouped = padded.reshape(*lead, -1, group, nw)
    return np.ascontiguousarray(np.swapaxes(grouped, -1, -2))


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


class BnnPredictor(Predictor):
    """The paper's binarized neuron: q = sum s(W) s(x) + sum s(R) s(u), by XOR and
    popcount on 64-bit words; the weights' sign bits are packed at compile time, in
    groups of SIGN_GROUP rows (:func:`group_rows`): the kernel computes a group's
    values with one vector XOR and popcount per word, summed across words lane by
    lane (no horizontal sum per neuron)."""

    name = "bnn"
    floor = 1.0
    q_dtype = "int32"
    reads_signs = True
    group = SIGN_GROUP

    @staticmethod
    def signs_shape(loop, which) -> tuple:
        """Shape of the packed sign bits of W (which = "W") or R: [directions, groups of
        SIGN_GROUP rows, words, SIGN_GROUP] (:func:`group_rows`)."""
        n = loop.input_size if which == "W" else loop.hidden_size
        return (loop.num_directions, -(-loop.rows // SIGN_GROUP), words(n), SIGN_GROUP)

    def weight_data(self, loop, W, R):
        return {"W_signs": group_rows(pack_signs(np.asarray(W)), self.group),
                "R_signs": group_rows(pack_signs(np.asarray(R)), self.group)}

    def declare(self, kb):
        kb.WS = kb.param("W_signs", self.signs_shape(kb.loop, "W"), "uint64")
        kb.RS = kb.param("R_signs", self.signs_shape(kb.loop, "R"), "uint64")

    def prepare(self, kb, d, b, s, x_ref, u_ref):
        return kb.sign_bits(x_ref), kb.sign_bits(u_ref)

    def _parts(self, kb, state):
        """(sign bits, index prefix, weight signs, length) of x and of u."""
        (x_bits, x_pre), (u_bits, u_pre) = state
        loop = kb.loop
        return ((x_bits, x_pre, kb.WS, loop.input_size), (u_bits, u_pre, kb.RS, loop.hidden_size))

    def value(self, kb, d, j, state):
        loop, n = kb.loop, self.group
        diff = tirx.const(0, "uint64")
        for bits, pre, signs, size in self._parts(kb, state):
            for w in range(words(size)):
                diff = diff + tirx.popcount(signs[d, j // n, w, j % n] ^ bits[pre + (w,)])
        return T.bind(tirx.const(loop.input_size + loop.hidden_size, "int32") - 2 * tirx.Cast("int32", diff))

    def group_values(self, kb, d, j0, state, out):
        loop, n = kb.loop, self.group
        diff = T.alloc_buffer((n,), "uint64")
        with T.vectorized(0, n) as lane:
            T.buffer_store(diff, tirx.const(0, "uint64"), [lane])
        for bits, pre, signs, size in self._parts(kb, state):
            with T.serial(0, words(size)) as w:
                word = T.bind(bits[pre + (w,)])
                with T.vectorized(0, n) as lane:
                    T.buffer_store(diff, diff[lane] + tirx.popcount(signs[d, j0 // n, w, lane] ^ word), [lane])
        with T.vectorized(0, n) as lane:
            total = tirx.const(loop.input_size + loop.hidden_size, "int32")
            T.buffer_store(out, total - 2 * tirx.Cast("int32", diff[lane]), [lane])

    def reference(self, data, d, rows, x, u, a):
        # Equal to the popcount form: agreements minus disagreements of the signs.
        sx = np.where(x >= 0, 1, -1).astype(np.int64)
        su = np.where(u >= 0, 1, -1).astype(np.int64)
        sw = data["W_sign_matrix"][d][rows]
        sr = data["R_sign_matrix"][d][rows]
        return (sw @ sx + sr @ su).astype(np.float64)

    def reference_data(self, W, R):
        return {"W_sign_matrix": np.where(W >= 0, 1, -1).astype(np.int64),
                "R_sign_matrix": np.where(R >= 0, 1, -1).astype(np.int64)}

    def extra_cost(self, loop):
        return loop.rows * (words(loop.input_size) + words(loop.hidden_size))

    def data_bytes(self, loop):
        return 8 * sum(int(np.prod(self.signs_shape(loop, which))) for which in "WR")


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


class DeltaExecution(Predictor):
    """Delta execution (Neil et al., Delta Networks, ICML 2017), not a predictor but the
    competing scheme, run by the same pass with its own threshold per node and direction.

    Per chain every input vector of the layer (x_t, h_{t-1}, and r_t (.) h_{t-1} for
    the GRU candidate with linear_before_reset = 0) keeps its last transmitted copy; a
    component whose change since then reaches the threshold is transmitted, and the
    pre-activations, which start from the biases, are updated by the transmitted
    columns only: a_j += W[j, k] (x_k - x^_k).  The kernel reads W and R by columns,
    rearranged at compile time per block of units (``columns[d, block, k, g * U + u]`` is
    row g H + block U + u of column k, 0 past H), so the part of a column one task needs
    is one contiguous run.  For large layers (:meth:`projects_input`) the
    input parts are instead the projection of x's transmitted copies, W x^ + Wb, which
    the column updates of W sum to; W's columns are then not needed.  Counts are
    multiply-adds: computed = rows x transmitted columns, reused = rows x the others.
    """

    name = "delta"
    scheme = "delta"

    @staticmethod
    def _blocked_columns(loop, M):
        from .frontend.kernels import unit_block

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

    @staticmethod
    def projects_input(loop) -> bool:
        """Whether the input parts are the projection of x's transmitted copies (W and R
        as float32 columns exceed DELTA_COLUMN_BYTES per direction) rather than updated
        by W's transmitted columns.  Both give W x^ + Wb up to rounding; the kernel and
        the reference make the same choice."""
        return 4 * loop.rows * (loop.input_size + loop.hidden_size) > DELTA_COLUMN_BYTES

    def weight_data(self, loop, W, R):
        data = {} if self.projects_input(loop) else {"W_columns": self._blocked_columns(loop, np.asarray(W))}
        data["R_columns"] = self._blocked_columns(loop, np.asarray(R))
        return data

    def declare(self, kb):
        loop = kb.loop
        nd, U, nub = loop.num_directions, kb.unit_block, kb.unit_blocks
        if not kb.x_projected:
            kb.WT = kb.param("W_columns", (nd, nub, loop.input_size, loop.num_gates * U), "float32")
        kb.RT = kb.param("R_columns", (nd, nub, loop.hidden_size, loop.num_gates * U), "float32")

    def skipped_share(self, loop):
        return 1.0

    def extra_cost(self, loop):
        return loop.input_size + loop.hidden_size  # one comparison per component

    def data_bytes(self, loop):
        columns = loop.hidden_size + (0 if self.projects_input(loop) else loop.input_size)
        return 4 * loop.num_directions * loop.rows * columns


def _ranked(cls):
    """Factory of a predictor taking a rank argument ("name:R")."""

    def make(arg):
        if arg is None:
            raise ConfigError(f"{cls.name} needs a rank: {cls.name}:R, e.g. {cls.name}:8")
        try:
            return cls(int(arg))
        except ValueError:
            raise ConfigError(f"{cls.name} rank must be an integer, got '{arg}'") from None

    return make


_FACTORIES = {
    "bnn": lambda arg: BnnPredictor(),
    "lowrank": _ranked(LowRankPredictor),
    "exactinput": _ranked(ExactInputPredictor),
    "delta": lambda arg: DeltaExecution(),
}


def register_predictor(name: str, factory) -> None:
    """Make ``factory(argument_or_None) -> Predictor`` available as ``name[:argument]``."""
    if not name or ":" in name or name == "oracle":
        raise ConfigError(f"invalid predictor name '{name}'")
    _FACTORIES[name] = factory


def get_predictor(spec: str) -> Predictor | None:
    """The predictor for ``spec`` ("bnn", "lowrank:8", ...); None for "oracle"."""
    if spec == "oracle":
        return None
    name, _, arg = spec.partition(":")
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES) + ["oracle"])
        raise ConfigError(f"unknown predictor '{spec}' (known: {known}; lowrank takes :rank)")
    return factory(arg or None)
