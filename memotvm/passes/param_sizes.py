"""UnifyParameterSizes: one symbolic size where a loop's function learns two are equal.

A Loop's body and loop functions (:mod:`memotvm.frontend.loops`) type each parameter
with sizes of its own: the state a loop carries (a recurrent cell's h, batch x hidden)
and the outer values its body reads (the input, time x batch x features) have
unrelated batch sizes in the function's signature.  :class:`.shape_checks.CheckShapeRelations`
then checks at run time, where the two meet, that they are equal, and casts one
operand to the other's size.  TVM's CanonicalizeBindings (run by FuseTIR) learns the
equality from that cast and rewrites the size in the types of the bindings after it,
but not of those before it: an in-place check (:mod:`.native_checks`) on an earlier
value then no longer types its output as its input, and FuseTIR fails (tf2onnx's
export of Keras 3's GRU, a cell written out in a Loop, with a symbolic batch).

This pass finds, in every function but ``main``, the casts that equate a size of one
parameter with a size of another (or with a constant), and binds the first to the
second in the whole function (``relax.transform.BindSymbolicVars``): the parameter's
type then says it, the function checks it on entry, and the cast relates nothing.
The model's inputs (``main``'s parameters) keep their sizes and their named checks.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx


@tvm.transform.module_pass(opt_level=0, name="UnifyParameterSizes")
class UnifyParameterSizes:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function) or gv.name_hint == "main":
                continue
            binding = _equated_sizes(func)
            if binding:
                mod = relax.transform.BindSymbolicVars(binding, gv.name_hint)(mod)
        return mod


def _parameter_sizes(func) -> set:
    sizes = set()
    for param in func.params:
        ty = param.ty
        if isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
            sizes.update(d for d in ty.shape.values if isinstance(d, tirx.Var))
    return sizes


def _equated_sizes(func) -> dict:
    """{size of a parameter: the size (another parameter's, or a constant) a cast in
    ``func`` equates it with}, each size bound once and never to itself."""
    params = _parameter_sizes(func)
    found = {}

    def visit(binding):
        if not isinstance(binding, relax.MatchCast) or not isinstance(binding.value, relax.Var):
            return
        have, want = binding.value.ty, binding.ty
        if not (isinstance(have, relax.TensorType) and isinstance(want, relax.TensorType)
                and isinstance(have.shape, relax.ShapeExpr) and isinstance(want.shape, relax.ShapeExpr)):
            return
        for old, new in zip(have.shape.values, want.shape.values):
            if not isinstance(old, tirx.Var) or old not in params or old in found or old.same_as(new):
                continue
            if isinstance(new, tirx.IntImm) or (isinstance(new, tirx.Var) and new in params):
                found[old] = new

    relax.analysis.post_order_visit(func, lambda e: _bindings(e, visit))
    # No chains (a -> b while b -> c): bind b's target first, then drop cycles.
    resolved = {}
    for old, new in found.items():
        seen = {old}
        while isinstance(new, tirx.Var) and new in found and new not in seen:
            seen.add(new)
            new = found[new]
        if not (isinstance(new, tirx.Var) and new.same_as(old)):
            resolved[old] = new
    return resolved


def _bindings(expr, visit):
    if isinstance(expr, relax.SeqExpr):
        for block in expr.blocks:
            for binding in block.bindings:
                visit(binding)
