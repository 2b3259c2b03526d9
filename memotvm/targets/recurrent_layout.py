"""The recurrent matrices of the unmodified kernels in the layout they are read in.

The unmodified kernel computes the recurrent parts of four consecutive rows at a time.
With R as ONNX stores it those are four streams through memory; at batch 1 and
H >= 512, where R comes from the last-level cache every step, that costs 5-8 % of a
step against one stream.  ``PackRecurrentRows`` gives each unmodified kernel whose R is
a constant R in :func:`memotvm.kernels.pack_row_blocks`'s layout, packed at
compile time, and the kernel built to read it.  Nothing else changes: the same products
summed in the same order (bit-identical results).

Memoized kernels keep R as it is: they compute lists of arbitrary rows.  A kernel whose
R is computed at run time, or whose hidden size is not a multiple of the block, keeps
it too.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import GenericConst

from ..kernels import (MemoPlan, build_kernel, has_row_blocks, kernel_weights, pack_row_blocks,
                       vector_lanes)
from ..passes._relax_util import add_kernel, rewrite_functions, without_uncalled_kernels
from ..passes.kernel_calls import recurrent_kernel


@tvm.transform.module_pass(opt_level=0, name="PackRecurrentRows")
class PackRecurrentRows:
    """Give the unmodified recurrent kernels with constant R their row-block layout."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return without_uncalled_kernels(rewrite_functions(_RowBlockRewriter(mod), mod))


@tvm.transform.module_pass(opt_level=0, name="RetargetRecurrentKernels")
class RetargetRecurrentKernels:
    """Rebuild the recurrent kernels for the vector width of the target compiled for.

    The importer and the memoization pass build kernels before the target is known,
    for the host's width (:func:`memotvm.kernels.vector_lanes`); a kernel compiled for
    another target (``llvm -mcpu=haswell``, an aarch64 board) is built again, run
    inside ``with target:``, with the same loop and memoization plan.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return without_uncalled_kernels(rewrite_functions(_LanesRewriter(mod), mod))


@relax.expr_functor.mutator
class _LanesRewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.lanes = vector_lanes()

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        hit = recurrent_kernel(self.mod_, call)
        if hit is None or int(hit[1].attrs["memotvm.lanes"]) == self.lanes:
            return call
        loop, kernel = hit
        plan = kernel.attrs.get("memotvm.memo_plan")
        memo = MemoPlan.from_json(str(plan)) if plan is not None else None
        rebuilt = add_kernel(self.builder_, build_kernel(loop, memo, weights=kernel_weights(kernel)))
        return relax.call_tir(rebuilt, list(call.args[1].fields), out_ty=list(call.ty_args[0].fields))


@relax.expr_functor.mutator
class _RowBlockRewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        hit = recurrent_kernel(self.mod_, call)
        if hit is None or "memotvm.memo" in hit[1].attrs:  # memoized kernels keep R
            return call
        loop, kernel = hit
        args = list(call.args[1].fields)
        if not isinstance(args[2], GenericConst) or not has_row_blocks(loop):
            return call
        # (run inside the target: the kernel is built for its vector width, R packed for it)
        packed = pack_row_blocks(args[2].value.numpy(), vector_lanes())
        # (relax.const makes float64 arrays float32 unless told)
        args[2] = relax.const(packed, str(packed.dtype))
        kernel = add_kernel(self.builder_, build_kernel(loop, row_blocks=True,
                                                         weights=kernel_weights(kernel)))
        return relax.call_tir(kernel, args, out_ty=list(call.ty_args[0].fields))
