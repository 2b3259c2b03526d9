"""BoundedGather: make every ``take`` (ONNX Gather) check and clamp its indices.

TVM's ONNX frontend emits ``relax.take`` in "fast" mode, which reads without bounds
checks: an out-of-range index would read outside the table.  Every index that is not a
constant is checked before the take by a check compiled into the model
(:mod:`.native_checks`: an InputError, as onnxruntime raises one; the runtime also
checks indices that come straight from a model input before the call, naming the
value), and the take clamps them, so that no index can leave the table even unchecked.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from ._relax_util import elements, rewrite_functions
from .native_checks import assert_that, checked, each_element


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
            data, indices = call.args
            axis = call.attrs.axis
            size = self._axis_size(data, None if axis is None else int(axis))
            if size is not None and not isinstance(indices, tvm.ir.GenericConst):
                indices = require_indices(self.builder_, indices, size)
            return relax.op.take(data, indices, axis=None if axis is None else int(axis), mode="clip")
        return call

    @staticmethod
    def _axis_size(data, axis):
        """The size of the axis a take indexes (of the flattened data without an axis),
        or None where the data's shape is not known."""
        shape = data.ty.shape if isinstance(data.ty, relax.TensorType) else None
        if not isinstance(shape, relax.ShapeExpr):
            return None
        dims = list(shape.values)
        if axis is None:
            return elements(dims)
        return dims[axis % len(dims)] if dims else None


def require_indices(builder, indices, size):
    """``indices`` after checking that each lies in [0, size) (TVM's Gather has made
    negative ones count from the end already)."""
    shown = str(int(size)) if isinstance(size, tirx.IntImm) else \
        (size.name if isinstance(size, tirx.Var) else "its size")

    def asserts(x, v):
        def one(value):
            value = tirx.Cast("int64", value)
            assert_that(tirx.And(value >= tirx.const(0, "int64"), value < v[0]),
                        f"Gather: an index (negative ones count from the end) is outside an "
                        f"axis of {shown}")

        each_element(x, one)

    return checked(builder, indices, [size], asserts, "check_indices")
