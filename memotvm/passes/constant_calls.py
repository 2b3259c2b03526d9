"""FoldConstantCalls: evaluate, with numpy, the operators TVM's converters apply to
constants, before they are lowered.

TVM's ONNX importer leaves many operators over constants for a later FoldConstant: a
Gather by a constant index becomes ``where(less(i, 0), add(i, n), i)``, a Reshape of a
weight a ``reshape``, a shape becomes a tensor through ``shape_to_tensor``.  TVM's
FoldConstant evaluates each by legalizing it and compiling the PrimFunc with LLVM, a
tenth of a second or more apiece: GTCRN's export (32 Gathers, 37 Reshapes and 32
shapes over constants) spent 12 of its 29 s of compile time there.  Here each such call
is evaluated in numpy as it is met, for the operators whose numpy form is the ONNX
result exactly: comparisons, integer arithmetic, ``where``, ``take``, forward
``strided_slice``, ``concat``, ``permute_dims`` and the operators that only reshape;
and a ``where`` whose condition alone is constant becomes the operand it selects.
Anything else, and a result whose shape or type is not the call's, is left for
FoldConstant.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._relax_util import rewrite_functions
from .shape_checks import provably_equal

_COMPARISONS = {"relax.less": np.less, "relax.less_equal": np.less_equal,
                "relax.greater": np.greater, "relax.greater_equal": np.greater_equal,
                "relax.equal": np.equal, "relax.not_equal": np.not_equal}
# Integer arithmetic only: numpy wraps int64 as the compiled code does.
_INTEGER_ARITHMETIC = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply}
# Operators whose result is their input's elements in order, in the call's shape.
_RESHAPES = {"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"}
# Results larger than this are left to FoldConstant, which weighs a constant's growth
# against its inputs itself.
_MAX_ELEMENTS = 1 << 22


@tvm.transform.module_pass(opt_level=0, name="FoldConstantCalls")
class FoldConstantCalls:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        # (the bindings of the folded values, now unused, go: passes that match a
        # constant operand look for it in place, as FoldConstant leaves it)
        return relax.transform.DeadCodeElimination()(rewrite_functions(_ConstantCallFolder(mod), mod))


@relax.expr_functor.mutator
class _ConstantCallFolder(relax.PyExprMutator):
    def visit_var_(self, var):  # a use of a folded value is the constant itself
        bound = self.lookup_binding(var)
        return bound if isinstance(bound, tvm.ir.GenericConst) else var

    visit_dataflow_var_ = visit_var_

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        if call.op.name == "relax.where":
            chosen = self._chosen_by_constant_condition(call)
            if chosen is not None:
                return chosen
        if call.op.name == "relax.take":
            picked = self._known_sizes_taken(call)
            if picked is not None:
                return picked
        args = [self._constant(a) for a in call.args]
        if any(a is None for a in args):
            return call
        try:
            value = _evaluate(call, args)
        except (ValueError, TypeError, IndexError):
            return call
        ty = call.ty if isinstance(call.ty, relax.TensorType) else None
        if value is None or ty is None or not isinstance(ty.shape, relax.ShapeExpr):
            return call
        want = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in ty.shape.values]
        if list(value.shape) != want or str(value.dtype) != str(ty.dtype) or value.size > _MAX_ELEMENTS:
            return call
        return relax.const(np.array(value, order="C"), str(ty.dtype))  # (ascontiguousarray makes 0-d 1-d)

    def _chosen_by_constant_condition(self, call):
        """The operand a ``where`` whose condition is a constant, the same everywhere,
        always selects, where it has the call's type (no broadcast); else None.  A
        Gather by a constant index over an axis of symbolic size is ``where(i < 0, i +
        n, i)``: the condition folds, the sum does not, and the index is then computed
        (and checked) at run time on every call."""
        cond = self._constant(call.args[0])
        if not isinstance(cond, np.ndarray) or cond.size == 0:
            return None
        flat = cond.astype(bool).ravel()
        if flat.any() and not flat.all():
            return None
        chosen = call.args[1] if flat[0] else call.args[2]
        have, want = chosen.ty, call.ty
        if not isinstance(have, relax.TensorType) or not isinstance(want, relax.TensorType) \
                or str(have.dtype) != str(want.dtype) or not isinstance(have.shape, relax.ShapeExpr) \
                or not isinstance(want.shape, relax.ShapeExpr) \
                or len(have.shape.values) != len(want.shape.values) \
                or not all(provably_equal(a, b) for a, b in zip(have.shape.values, want.shape.values)):
            return None
        bound = self._constant(chosen)
        return relax.const(bound, str(want.dtype)) if isinstance(bound, np.ndarray) else chosen

    def _known_sizes_taken(self, call):
        """A ``take`` of a shape made a tensor (some of its sizes symbolic) that picks only
        sizes known when compiling, as a constant: ``y[:, -1]`` over a loop body's
        [batch, 1, d] becomes the index 0 instead of shape_of, take, add and a run-time
        check on every call.  Else None."""
        sizes = self._sizes(call.args[0])
        indices = self._constant(call.args[1])
        if sizes is None or not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu" \
                or call.attrs.axis is None or int(call.attrs.axis) != 0 \
                or not isinstance(call.ty, relax.TensorType) or not isinstance(call.ty.shape, relax.ShapeExpr):
            return None
        n = len(sizes)
        flat = indices.astype(np.int64).ravel()
        if str(call.attrs.mode) == "wrap":
            flat = flat % max(n, 1)
        elif str(call.attrs.mode) == "clip":
            flat = np.clip(flat, 0, n - 1)
        if n == 0 or flat.size == 0 or flat.min() < 0 or flat.max() >= n \
                or not all(isinstance(sizes[i], tvm.tirx.IntImm) for i in flat):
            return None
        value = np.array([int(sizes[i]) for i in flat], np.int64).reshape(indices.shape)
        if str(call.ty.dtype) != "int64" or list(value.shape) != [
                int(d) if isinstance(d, tvm.tirx.IntImm) else -1 for d in call.ty.shape.values]:
            return None
        return relax.const(value, "int64")

    def _sizes(self, expr):
        """The sizes (some symbolic) of a shape made a tensor (``shape_to_tensor`` of a
        shape, or of a tensor's ``shape_of``), else None."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            return None if bound is None else self._sizes(bound)
        if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.shape_to_tensor"):
            shape = expr.args[0]
            if isinstance(shape, relax.Var):
                shape = self.lookup_binding(shape)
            if isinstance(shape, relax.Call) and shape.op == tvm.ir.Op.get("relax.shape_of"):
                shape = shape.args[0].ty.shape
            if isinstance(shape, relax.ShapeExpr):
                return list(shape.values)
        return None

    def _constant(self, expr):
        """expr as a numpy array (a list for a tuple, an int for an IntImm)
        where it is a constant, a static shape (or the shape_of a tensor that has one)
        or a variable bound to one; else None."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            return None if bound is None else self._constant(bound)
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.ShapeExpr):
            if all(isinstance(d, tvm.tirx.IntImm) for d in expr.values):
                return np.array([int(d) for d in expr.values], np.int64)
            return None
        if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.shape_of"):
            shape = expr.args[0].ty.shape  # a tensor whose shape is known when compiling
            return self._constant(shape) if isinstance(shape, relax.ShapeExpr) else None
        if isinstance(expr, tvm.tirx.IntImm):  # (a strided_slice's axes and bounds)
            return int(expr.value)
        if isinstance(expr, relax.Tuple):
            fields = [self._constant(f) for f in expr.fields]
            return None if any(f is None for f in fields) else fields
        return None


def _evaluate(call, args):
    """The call's value, or None where it is not one of the operators folded here."""
    name = call.op.name
    if name in _COMPARISONS:
        return _COMPARISONS[name](*args)
    if name in _INTEGER_ARITHMETIC:
        if all(a.dtype.kind in "iu" and a.dtype == args[0].dtype for a in args):
            return _INTEGER_ARITHMETIC[name](*args)
        return None
    if name == "relax.where":
        cond, a, b = args
        return np.where(cond.astype(bool), a, b) if a.dtype == b.dtype else None
    if name in _RESHAPES:
        shape = call.ty.shape
        if not isinstance(shape, relax.ShapeExpr) or \
                not all(isinstance(d, tvm.tirx.IntImm) for d in shape.values):
            return None
        return args[0].reshape([int(d) for d in shape.values])
    if name == "relax.shape_to_tensor":
        return args[0]
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(args[0], None if axes is None else [int(a) for a in axes])
    if name == "relax.concat" and isinstance(args[0], list):
        return np.concatenate(args[0], axis=int(call.attrs.axis))
    if name == "relax.strided_slice" and len(args) in (4, 5):
        x, axes, begin, end = args[:4]
        strides = args[4] if len(args) == 5 else [1] * len(axes)
        if any(step <= 0 for step in strides):  # (numpy's reverse slices clamp otherwise)
            return None
        index = [slice(None)] * x.ndim
        for axis, first, last, step in zip(axes, begin, end, strides):
            index[axis] = slice(first, last, step)
        return x[tuple(index)]
    if name == "relax.take":  # "fast": indices out of range raise, and nothing is folded
        mode = {"clip": "clip", "wrap": "wrap", "fast": "raise"}.get(str(call.attrs.mode))
        axis = call.attrs.axis
        return None if mode is None else np.take(
            args[0], args[1].astype(np.int64), axis=None if axis is None else int(axis), mode=mode)
    return None
