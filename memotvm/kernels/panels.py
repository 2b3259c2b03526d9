"""Products by weights packed in panels of vectors: the register tile that the input
projection of the recurrent kernels and the host's matrix products and convolutions
(:mod:`memotvm.targets.host_gemm`, :mod:`memotvm.targets.host_conv`) share.

A panel is ``width`` vectors of output columns (vectors of the target's width), its
weights stored [K, width x lanes] contiguously.  The tile keeps TILE_ROWS rows x the
panel's vectors of outputs in registers: per k one broadcast of each row's input and
one load of each of the panel's vectors, every output the sum of its K products in
order of k (fused multiply-adds).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from .tiling import i64, vector_lanes, vector_registers

# Rows of a register tile.
TILE_ROWS = 4


def panel_vectors() -> int:
    """Vectors of columns per panel: TILE_ROWS x this many accumulators, plus the
    TILE_ROWS broadcasts (LLVM loads them all before the step's FMAs) and a load, fit
    in the target's vector registers: 24 + 4 + 1 of 32, 8 + 4 + 1 of 16.  (4 x 3 of 16
    spilled accumulators to the stack every step: half the speed on AVX2.)"""
    return 6 if vector_registers() >= 32 else 2


def panel_widths(n: int) -> list[int]:
    """Vectors per panel: as many full panels as fit, then the rest."""
    vectors, full = -(-n // vector_lanes()), panel_vectors()
    widths = [full] * (vectors // full)
    if vectors % full:
        widths.append(vectors % full)
    return widths


def panel_count(n):
    """Panels over ``n`` columns: ``len(panel_widths(n))``; for a symbolic ``n`` (a TIR
    expression), the full panels of whole vectors and one panel per vector after them."""
    if isinstance(n, int):
        return len(panel_widths(n))
    lanes, full = vector_lanes(), panel_vectors()
    uniform = n // i64(lanes) // i64(full)
    return uniform + (n + i64(lanes - 1)) // i64(lanes) - uniform * i64(full)


def for_panel(panel, n, body) -> None:
    """Emit ``body(col, width, whole)`` for panel number ``panel`` (a TIR index below
    :func:`panel_count` of ``n``): ``col`` its first column, ``width`` its vectors and
    ``whole`` whether all of them lie inside the ``n`` columns.  Full panels of whole
    vectors share one code path, their ``col`` computed from the index; the last panel
    has its own where it is narrower or holds the partial vector (its ``col`` an int),
    and a symbolic ``n``'s last vectors one path of one-vector panels.  (One path per
    panel made a convolution over 2048 positions 86 copies of the micro-kernel.)"""
    lanes, full = vector_lanes(), panel_vectors()
    if not isinstance(n, int):
        uniform = n // i64(lanes) // i64(full)
        with T.If(panel < uniform):
            with T.Then():
                body(panel * i64(full * lanes), full, True)
            with T.Else():
                body(uniform * i64(full * lanes) + (panel - uniform) * i64(lanes), 1, False)
        return
    widths = panel_widths(n)
    uniform = n // lanes // full  # (at most the last panel is not)
    last_col = uniform * full * lanes
    if uniform == 0:
        body(last_col, widths[-1], False)
    elif uniform == len(widths):
        body(panel * i64(full * lanes), full, True)
    else:
        with T.If(panel < i64(uniform)):
            with T.Then():
                body(panel * i64(full * lanes), full, True)
            with T.Else():
                body(last_col, widths[-1], False)


def register_block(first, rows, k, width, lanes, row_value, vector_value, store, sources=None,
                   word_dot=None):
    """The register-blocked product of rows ``first`` ... ``first + TILE_ROWS - 1`` (of
    ``rows``) by ``width`` vectors of columns: accumulator [i][j] sums, in order of
    kk < k, ``row_value(row i, kk)`` (one broadcast) times ``vector_value(kk, j,
    lane)`` (one vector load); then ``store(accumulator, row, j)`` for the rows that
    exist.  Rows past the end repeat the last row (their results are not stored).

    ``k`` may be a pair (outer, inner): kk = a * inner + b over two nested loops, and
    ``vector_value`` is given (a, b) for kk (a convolution's channel and tap).
    ``sources``: what ``row_value`` is given for each row instead of its number (the
    rows' positions elsewhere; each must exist), one row per source.

    ``word_dot`` (precision bf16-act, :mod:`.bf16_dot`): kk counts words of two
    bfloat16 values; ``row_value`` gives a row's word (int32), ``vector_value(kk, j,
    None)`` a vector of the panel's words, and each accumulator adds their pair products
    with ``word_dot(acc, weights, broadcast word)``."""
    tile = TILE_ROWS if sources is None else len(sources)
    accs = [[T.alloc_buffer((lanes,), "float32") for _ in range(width)] for _ in range(tile)]
    for row in accs:
        for acc in row:
            with T.vectorized(0, lanes) as lane:
                T.buffer_store(acc, tirx.const(0.0, "float32"), [lane])
    src = sources if sources is not None else \
        [T.bind(tirx.min(first + i64(i), rows - i64(1))) for i in range(tile)]

    def step(kk, at):
        xs = [T.bind(row_value(src[i], kk)) for i in range(tile)]
        if word_dot is not None:
            whole = tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), lanes)
            for j in range(width):
                w = T.bind(vector_value(at, j, None))
                for i in range(tile):
                    acc = accs[i][j]
                    T.buffer_store(acc, word_dot(acc.vload([0], f"float32x{lanes}"), w,
                                                 tirx.Broadcast(xs[i], lanes)), [whole])
            return
        with T.vectorized(0, lanes) as lane:
            for j in range(width):
                w = vector_value(at, j, lane)
                for i in range(tile):
                    acc = accs[i][j]
                    T.buffer_store(acc, acc[lane] + xs[i] * w, [lane])

    if isinstance(k, tuple):  # (outer, inner): kk = a * inner + b
        outer, inner = k
        with T.serial(0, outer) as a, T.serial(0, inner) as b:
            step(a * i64(inner) + b, (a, b))
    else:
        with T.serial(0, k) as kk:
            step(kk, kk)
    for i in range(tile):
        with T.If(first + i64(i) < rows):
            with T.Then():
                for j in range(width):
                    store(accs[i][j], first + i64(i), j)
