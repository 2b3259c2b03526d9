"""BoundedGather: make every ``take`` (ONNX Gather) clamp its indices.

TVM's ONNX frontend emits ``relax.take`` in "fast" mode, which reads without bounds
checks: an out-of-range index computed inside a graph would read outside the table.
Indices that come straight from a model input are range-checked by the runtime before
the call (a clear error); this pass makes sure no other index can leave the table.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ._relax_util import rewrite_functions


@tvm.transform.module_pass(opt_level=0, name="BoundedGather")
class BoundedGather:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_functions(_TakeRewriter(mod), mod)


@relax.expr_functor.mutator
class _TakeRewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.take = tvm.ir.Op.get("relax.take")

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op == self.take and str(call.attrs.mode) == "fast":
            axis = call.attrs.axis
            return relax.op.take(call.args[0], call.args[1], axis=None if axis is None else int(axis),
                                 mode="clip")
        return call
