"""The BNN predictor's sign bits of run-time weights, packed by a kernel."""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..predictors.bnn import BnnPredictor
from .plan import kernel_name


def build_sign_packer(loop, which: str) -> tirx.PrimFunc:
    """A PrimFunc packing the sign bits of W ("W") or R ("R") into 64-bit words, in
    the layout of the BNN predictor's weight data (:func:`memotvm.predictors.bnn.pack_signs`,
    rows grouped by :func:`memotvm.predictors.bnn.group_rows`).

    The memoization pass uses it when the weights are computed at run time (constant
    weights are packed in numpy at compile time).  It is written as a reduction block,
    the form Relax's analyses of single-output functions expect.
    """
    G, dtype = loop.rows, loop.dtype
    n = loop.input_size if which == "W" else loop.hidden_size
    nd, groups, nw, group = BnnPredictor.signs_shape(loop, which)
    zero = tirx.const(0, dtype)

    @T.prim_func(s_tir=True)
    def pack_signs(src: T.Buffer((nd, G, n), dtype),
                   dst: T.Buffer((nd, groups, nw, group), "uint64")):
        T.func_attr({"tir.noalias": True})
        for d, jg, w, r, lane in T.grid(nd, groups, nw, group, 64):
            with T.sblock("pack"):
                vd, vg, vw, vr, vl = T.axis.remap("SSSSR", [d, jg, w, r, lane])
                with T.init():
                    dst[vd, vg, vw, vr] = T.uint64(0)
                # Rows past G (the last group's padding) and bits past n stay 0.
                dst[vd, vg, vw, vr] = dst[vd, vg, vw, vr] | (
                    T.if_then_else(
                        vg * group + vr < G and vw * 64 + vl < n
                        and src[vd, T.min(vg * group + vr, G - 1), T.min(vw * 64 + vl, n - 1)] < zero,
                        T.uint64(1), T.uint64(0),
                    ) << T.Cast("uint64", vl)
                )

    return pack_signs.with_attr("global_symbol", f"pack_signs_{which}_{kernel_name(loop)}")
