"""BoundedGather: make every ``take`` (ONNX Gather) check and clamp its indices.

TVM's ONNX frontend emits ``relax.take`` in "fast" mode, which reads without bounds
checks: an out-of-range index computed inside a graph would read outside the table.
Indices that come straight from a model input are range-checked by the runtime before
the call (a clear error).  Computed ones are checked by ``memotvm.require_indices``
before the take (InputError, as onnxruntime raises one), and the take clamps them, so
that no index can leave the table even unchecked.
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from ..errors import InputError
from ._relax_util import elements, rewrite_functions

CHECK = "memotvm.require_indices"


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
                indices = self.builder_.emit(relax.call_pure_packed(
                    CHECK, indices, relax.ShapeExpr([size]), ty_args=indices.ty))
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


@tvm_ffi.register_global_func(CHECK)
def _require_indices(indices, size):
    values = np.from_dlpack(indices)
    n = int(size[0])
    outside = values[(values < 0) | (values >= n)] if values.size else values
    if outside.size:
        raise InputError(
            f"Gather: index {int(outside.flat[0])} (computed inside the model; negative indices "
            f"already count from the end) is outside an axis of {n}")
    return indices
