"""Dot products of bfloat16 operands: the recurrent product at precision ``bf16-act``.

At ``bf16-act`` (:mod:`memotvm.precision`) a recurrent kernel multiplies R, stored in
bfloat16, by the previous state h rounded to bfloat16, and accumulates in float32.
The product of two bfloat16 values is exact in float32, so every multiply-add rounds
once, whichever instruction computes it.  The order is that of AVX512-BF16's
``vdpbf16ps``, which takes L pairs of bfloat16 values per vector of L float32
accumulators: over a row of n, padded with zeros to a multiple of 2L, for each block b,
lane i adds w x at k = 2Lb + 2i + 1, then at k = 2Lb + 2i; the lanes are then summed by
halving, as :mod:`.products` sums every product.  (The padding adds exact zeros: a
row's last, partial block costs one instruction, where a tail added in order cost one
scalar multiply-add per value.)

The input projection (the register tile of :mod:`.panels`) takes W's panels in the same
words and multiplies each by a broadcast word of x's two rounded values: each W_j x_t
sums its words in order of k, within a word the odd element first.

R reaches the kernel as ``pairs``: int32 words, element 2i in the low half and 2i + 1
in the high half (:func:`memotvm.precision.bf16_pairs`), so that one vector load gives
one ``vdpbf16ps`` operand.  Where the target has AVX512-BF16 the kernel calls that
instruction; elsewhere the same arithmetic in plain float32 (two multiply-adds per
pair, in the same order: the same results, except that ``vdpbf16ps`` flushes
subnormal inputs and results to zero).  Both are small LLVM IR functions that the code
generator links into the kernel and inlines (TVM stores bfloat16 as 16-bit integers
and has no bfloat16 vector type to pass to the intrinsic).
"""

from __future__ import annotations

from contextlib import contextmanager

import tvm
from tvm import tirx
from tvm.script.ir_builder import tirx as T
from tvm.target import codegen

from .tiling import _current

# R's rows are padded with zeros to a multiple of this many words (32 values: the
# widest target's vector of pairs), so that every vector of pairs is whole.
WORD_BLOCK = 16

# The LLVM functions the kernels call: (acc, w pairs, x[0:L], x[L:2L]) -> acc, and
# (acc, w pairs, x pairs) -> acc with x already rounded and paired (a broadcast word).
FUNCTION = "memotvm_bf16_pair_dot"
WORDS = "memotvm_bf16_word_dot"


def r_words(hidden_size: int) -> int:
    """Words of a row of R in pairs: ``hidden_size`` values, padded to WORD_BLOCK words."""
    return -(-hidden_size // (2 * WORD_BLOCK)) * WORD_BLOCK


def native(target: tvm.target.Target, lanes: int) -> bool:
    """Whether ``target`` runs the pair dot as ``vdpbf16ps`` (AVX512-BF16, 16 lanes)."""
    return lanes == 16 and codegen.target_has_features("avx512bf16", target)


def _vector(lanes, kind):
    return f"<{lanes} x {kind}>"


def _splat(lanes, kind, value):
    return f"<{', '.join([f'{kind} {value}'] * lanes)}>"


def _native_ir(lanes: int) -> str:
    f, b = _vector(lanes, "float"), _vector(2 * lanes, "bfloat")
    i = _vector(lanes, "i32")
    return f"""
declare {f} @llvm.x86.avx512bf16.dpbf16ps.512({f}, {b}, {b})
declare {b} @llvm.x86.avx512bf16.cvtne2ps2bf16.512({f}, {f})
define {f} @{FUNCTION}({f} %acc, {i} %w, {f} %lo, {f} %hi) {{
  %x = call {b} @llvm.x86.avx512bf16.cvtne2ps2bf16.512({f} %hi, {f} %lo)
  %xw = bitcast {b} %x to {i}
  %r = call {f} @{WORDS}({f} %acc, {i} %w, {i} %xw)
  ret {f} %r
}}
define {f} @{WORDS}({f} %acc, {i} %w, {i} %x) {{
  %wb = bitcast {i} %w to {b}
  %xb = bitcast {i} %x to {b}
  %r = call {f} @llvm.x86.avx512bf16.dpbf16ps.512({f} %acc, {b} %wb, {b} %xb)
  ret {f} %r
}}
"""


def _portable_ir(lanes: int) -> str:
    """The same sums in float32 multiply-adds, for any vector width (the pair dot
    rounds and pairs x's values, then takes the word dot)."""
    f, i = _vector(lanes, "float"), _vector(lanes, "i32")
    even = ", ".join(f"i32 {2 * k}" for k in range(lanes))
    odd = ", ".join(f"i32 {2 * k + 1}" for k in range(lanes))
    high = _splat(lanes, "i32", -65536)  # 0xFFFF0000

    def rounded(name):
        # float32 -> the bits of its nearest bfloat16 in the high half (ties to even;
        # NaN stays NaN): vcvtne2ps2bf16's rounding, as :func:`rounded` in TIR
        return f"""
  %{name}.u = bitcast {f} %{name} to {i}
  %{name}.lsb = lshr {i} %{name}.u, {_splat(lanes, "i32", 16)}
  %{name}.odd = and {i} %{name}.lsb, {_splat(lanes, "i32", 1)}
  %{name}.bias = add {i} %{name}.odd, {_splat(lanes, "i32", 32767)}
  %{name}.sum = add {i} %{name}.u, %{name}.bias
  %{name}.cut = and {i} %{name}.sum, {high}
  %{name}.quiet = or {i} %{name}.u, {_splat(lanes, "i32", 4194304)}
  %{name}.qcut = and {i} %{name}.quiet, {high}
  %{name}.nan = fcmp uno {f} %{name}, %{name}
  %{name}.bits = select {_vector(lanes, "i1")} %{name}.nan, {i} %{name}.qcut, {i} %{name}.cut"""

    return f"""
define {f} @{FUNCTION}({f} %acc, {i} %w, {f} %lo, {f} %hi) {{
  %xe = shufflevector {f} %lo, {f} %hi, <{lanes} x i32> <{even}>
  %xo = shufflevector {f} %lo, {f} %hi, <{lanes} x i32> <{odd}>{rounded("xe")}{rounded("xo")}
  %xe.low = lshr {i} %xe.bits, {_splat(lanes, "i32", 16)}
  %xw = or {i} %xo.bits, %xe.low
  %r = call {f} @{WORDS}({f} %acc, {i} %w, {i} %xw)
  ret {f} %r
}}
define {f} @{WORDS}({f} %acc, {i} %w, {i} %x) {{
  %wo.bits = and {i} %w, {high}
  %we.bits = shl {i} %w, {_splat(lanes, "i32", 16)}
  %xo.bits = and {i} %x, {high}
  %xe.bits = shl {i} %x, {_splat(lanes, "i32", 16)}
  %wo = bitcast {i} %wo.bits to {f}
  %we = bitcast {i} %we.bits to {f}
  %xo = bitcast {i} %xo.bits to {f}
  %xe = bitcast {i} %xe.bits to {f}
  %po = fmul {f} %wo, %xo
  %t = fadd {f} %acc, %po
  %pe = fmul {f} %we, %xe
  %r = fadd {f} %t, %pe
  ret {f} %r
}}
"""


@contextmanager
def linked(lanes: int):
    """Link the pair dot for the target compiled for into the function being built
    (wrap the body that calls :func:`pair_dot`)."""
    code = _native_ir(lanes) if native(_current(), lanes) else _portable_ir(lanes)
    with T.attr(tirx.const(0, "int32"), "pragma_import_llvm", code):
        yield


def word_dot(acc, w_pairs, x_pairs, lanes: int):
    """acc + the pair products of ``w_pairs`` and ``x_pairs`` (int32 x lanes each: words
    of two bfloat16 values, :func:`pair_word`)."""
    return tirx.call_pure_extern(f"float32x{lanes}", WORDS, acc, w_pairs, x_pairs)


def pair_dot(acc, w_pairs, lo, hi, lanes: int):
    """acc + the pair products of ``w_pairs`` (int32 x lanes: 2 lanes bfloat16 weights)
    and the 2 x lanes float32 values ``lo``, ``hi`` (rounded to bfloat16 here)."""
    return tirx.call_pure_extern(f"float32x{lanes}", FUNCTION, acc, w_pairs, lo, hi)


def rounded(value):
    """float32 ``value`` (a TIR expression) rounded to the nearest bfloat16, as float32:
    ties to even, NaN kept NaN (what ``vcvtne2ps2bf16`` and the portable function do)."""
    bits = tirx.reinterpret("uint32", value)  # (no binding: callers build expressions)
    high = tirx.const(0xFFFF0000, "uint32")
    odd = (bits >> tirx.const(16, "uint32")) & tirx.const(1, "uint32")
    cut = (bits + odd + tirx.const(0x7FFF, "uint32")) & high
    quiet = (bits | tirx.const(0x400000, "uint32")) & high
    return tirx.reinterpret("float32", tirx.Select(tirx.isnan(value), quiet, cut))


def pair_word(lo, hi):
    """The int32 word of float32 values ``lo`` (element 2k) and ``hi`` (2k + 1), each
    rounded to bfloat16: as :func:`memotvm.precision.bf16_pairs` stores weights."""
    low = tirx.reinterpret("uint32", rounded(lo)) >> tirx.const(16, "uint32")
    high = tirx.reinterpret("uint32", rounded(hi)) & tirx.const(0xFFFF0000, "uint32")
    return tirx.reinterpret("int32", high | low)
