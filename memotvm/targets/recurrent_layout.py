"""The recurrent kernels' weights in the layouts they are read in.

``PackRecurrentWeights`` packs, at compile time, the constant weights of each recurrent
kernel call and gives it the kernel built to read them:

* W, in every kernel (plain or memoized), as
  :func:`memotvm.kernels.input_panels.pack_input_panels`: the input projection is then a
  register-tiled matrix product with no lane sums.  Every kernel of a model, memoized
  or not, reads W so (the input parts of a memoized kernel at threshold 0 are then
  those of the unmodified one, bit for bit).
* R, in the unmodified kernels, in :func:`memotvm.kernels.pack_row_blocks`'s layout.
  The unmodified kernel computes the recurrent parts of four consecutive rows at a
  time; with R as ONNX stores it those are four streams through memory; at batch 1
  and H >= 512, where R comes from the last-level cache every step, that costs 5-8 %
  of a step against one stream.  The same products are summed in the same order
  (bit-identical results).  Memoized kernels keep R as it is: they compute lists of
  arbitrary rows.

A weight computed at run time, or R whose hidden size is not a multiple of the block,
stays as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import GenericConst

from ..kernels import (build_kernel, has_row_blocks, kernel_memo_plan, kernel_weights,
                       pack_row_blocks, vector_lanes)
from ..kernels.input_panels import has_input_panels, pack_input_panels
from ..passes._relax_util import add_kernel, rewrite_functions, without_uncalled_kernels
from ..passes.kernel_calls import recurrent_kernel


@tvm.transform.module_pass(opt_level=0, name="PackRecurrentWeights")
class PackRecurrentWeights:
    """Give the recurrent kernels' constant W its panels and the unmodified kernels'
    constant R its row blocks."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return without_uncalled_kernels(rewrite_functions(_WeightLayoutRewriter(mod), mod))


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
        rebuilt = add_kernel(self.builder_, build_kernel(loop, kernel_memo_plan(kernel),
                                                          weights=kernel_weights(kernel)))
        return relax.call_tir(rebuilt, list(call.args[1].fields), out_ty=list(call.ty_args[0].fields))


@relax.expr_functor.mutator
class _WeightLayoutRewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        hit = recurrent_kernel(self.mod_, call)
        if hit is None:
            return call
        loop, kernel = hit
        args = list(call.args[1].fields)
        memo = kernel_memo_plan(kernel)
        panels = isinstance(args[1], GenericConst) and has_input_panels(loop)
        row_blocks = memo is None and isinstance(args[2], GenericConst) and has_row_blocks(loop)
        if not (panels or row_blocks):
            return call
        # (run inside the target: the kernel is built for its vector width, the
        # weights packed for it; relax.const makes float64 arrays float32 unless told)
        if panels:
            packed = pack_input_panels(args[1].value.numpy(),
                                       pairs=kernel_weights(kernel) == "bfloat16_pairs")
            args[1] = relax.const(packed, str(packed.dtype))
        if row_blocks:
            packed = pack_row_blocks(args[2].value.numpy(), vector_lanes())
            args[2] = relax.const(packed, str(packed.dtype))
        kernel = add_kernel(self.builder_, build_kernel(loop, memo, row_blocks=row_blocks,
                                                         weights=kernel_weights(kernel),
                                                         input_panels=panels))
        return relax.call_tir(kernel, args, out_ty=list(call.ty_args[0].fields))
