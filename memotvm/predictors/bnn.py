"""The paper's predictor: a binarized copy of each neuron (sign bits, XOR, popcount)."""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from .base import Predictor, words

# Rows whose sign words the BNN predictor keeps side by side (8 words: one AVX-512 vector).
SIGN_GROUP = 8


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
        # Equal to the popcount form: agreements minus disagreements of the signs (the
        # kernels' sign bit is v < 0, so a NaN counts as positive, as 0 does).
        sx = np.where(x < 0, -1, 1).astype(np.int64)
        su = np.where(u < 0, -1, 1).astype(np.int64)
        sw = data["W_sign_matrix"][d][rows]
        sr = data["R_sign_matrix"][d][rows]
        return (sw @ sx + sr @ su).astype(np.float64)

    def reference_data(self, W, R):
        return {"W_sign_matrix": np.where(W < 0, -1, 1).astype(np.int64),
                "R_sign_matrix": np.where(R < 0, -1, 1).astype(np.int64)}

    def extra_cost(self, loop):
        return loop.rows * (words(loop.input_size) + words(loop.hidden_size))

    def data_bytes(self, loop):
        return 8 * sum(int(np.prod(self.signs_shape(loop, which))) for which in "WR")
