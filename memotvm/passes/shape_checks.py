"""CheckShapeRelations: check at run time the shape relations TVM cannot prove.

With dynamic axes, an operator's needs of its operands' shapes are relations between
symbolic dimensions: a MatMul's inner sizes agree, element-wise operands broadcast, a
Concat's inputs agree off its axis, a Reshape keeps the number of elements.  Where
Relax's shape inference cannot decide such a relation it either gives up (the operator
is never lowered and compilation fails inside TVM) or assumes it (a MatMul reduces over
its first operand's inner size, a Reshape's -1 is a floor division): inputs that break
it then give wrong results or reads out of bounds, where onnxruntime raises an error.

This pass states each undecided relation: the operator's first operand goes through a
check compiled into the model (:mod:`.native_checks`) before the operator, which
raises :class:`memotvm.errors.InputError` naming the operator and the shapes; the other
operands are then cast (``match_cast``) to the shapes the check guarantees, so that
inference and lowering see them.  A symbolic dimension that must broadcast against
another is required to be equal to it (a size 1 known only at run time is refused with
that explanation, not broadcast).  Relations TVM can prove cost nothing.
"""

from __future__ import annotations

import tvm
import tvm.sym
from tvm import relax, tirx

from ._relax_util import elements, rewrite_functions
from .native_checks import assert_that, checked

# Relax operators whose operands broadcast (ONNX's multidirectional broadcasting).
_BROADCAST = {
    "add", "subtract", "multiply", "divide", "floor_divide", "power", "maximum", "minimum",
    "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "logical_and",
    "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "mod",
    "floor_mod", "left_shift", "right_shift", "where",
}


def require(builder: relax.BlockBuilder, x, shapes: list, spec: dict):
    """Emit the run-time check of ``spec`` over ``shapes`` (lists of dimensions) before
    what uses the returned value (x itself): "equal" lists pairs of (shape, axis)
    positions that must be equal, "one" and "not_one" (shape, axis) positions that must
    be 1 and must not be 1 ("why" completes their messages), "count" says that shape 0
    and shape 1 hold as many elements; "op" and "names" name the operator and its
    operands in the messages."""
    values = [dim for shape in shapes for dim in shape]
    starts = [sum(len(s) for s in shapes[:k]) for k in range(len(shapes))]
    names = spec.get("names") or [f"input {i}" for i in range(len(shapes))]
    where = spec["op"]

    def shown(k):
        return shape_text(shapes[k])

    def asserts(_x, v):
        def dim(i, a):
            return v[starts[i] + a]

        if spec.get("count"):
            have = _product(v, starts[0], len(shapes[0]))
            want = _product(v, starts[1], len(shapes[1]))
            assert_that(have == want, f"{where}: cannot reshape {names[0]} of shape {shown(0)} to "
                        f"{shown(1)}: their numbers of elements differ; the model's shapes do "
                        "not fit these inputs")
        one = tirx.const(1, "int64")
        for i, a in spec.get("one", []):
            assert_that(dim(i, a) == one, f"{where}: dimension {a} of {names[i]} (shape "
                        f"{shown(i)}) is not 1 at run time{spec.get('why', '')}")
        for i, a in spec.get("not_one", []):
            assert_that(dim(i, a) != one, f"{where}: dimension {a} of {names[i]} (shape "
                        f"{shown(i)}) is 1 at run time{spec.get('why', '')}")
        for (i, a), (j, b) in spec.get("equal", []):
            first, second = dim(i, a), dim(j, b)
            text = (f"{where}: {names[i]} has shape {shown(i)} and {names[j]} has shape "
                    f"{shown(j)}: dimension {a} of the first and {b} of the second must be equal")
            assert_that(tirx.Or(first == second, tirx.And(first != one, second != one)),
                        text + " (broadcasting a dimension whose size 1 is known only at run "
                        "time is not supported: memotvm needs it equal)")
            assert_that(first == second, text)

    return checked(builder, x, values, asserts, "check_shapes")


def _product(v, start, count):
    total = tirx.const(1, "int64")
    for k in range(count):
        total = total * v[start + k]
    return total


def shape_text(shape) -> str:
    """A shape as the messages show it: static sizes as numbers, symbolic ones by name."""
    parts = [str(int(d)) if isinstance(d, tirx.IntImm) else
             (d.name if isinstance(d, tirx.Var) else "?") for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def require_equal(builder, operands, shapes, equal, where, names=None) -> list:
    """``operands`` (their ``shapes``) checked at run time for ``equal``, pairs of
    (operand, axis) positions whose second member takes the first's size, and cast to
    the shapes the check guarantees (operand 0 passes through the check)."""
    spec = {"op": where, "equal": equal}
    if names:
        spec["names"] = names
    out = [require(builder, operands[0], shapes, spec)] + list(operands[1:])
    new_shapes = [list(shape) for shape in shapes]
    for (i, a), (j, b) in equal:
        new_shapes[j][b] = new_shapes[i][a]
    for k in sorted({j for _, (j, _) in equal}):
        out[k] = builder.match_cast(out[k], relax.TensorType(new_shapes[k], out[k].ty.dtype))
    return out


def unproven(shapes, first, second):
    """The pair (first, second) of (operand, axis) positions, ordered so that a
    symbolic size takes a static one, if their sizes are not provably equal; else
    None."""
    (i, a), (j, b) = first, second
    da, db = shapes[i][a], shapes[j][b]
    if provably_equal(da, db):
        return None
    if isinstance(db, tirx.IntImm) and not isinstance(da, tirx.IntImm):
        return second, first
    return first, second


@tvm.transform.module_pass(opt_level=0, name="CheckShapeRelations")
class CheckShapeRelations:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_functions(_ShapeRelationRewriter(mod), mod)


def _shape(expr):
    """expr's dimensions, or None where its shape is not known as a list."""
    info = expr.ty
    if isinstance(info, relax.TensorType) and isinstance(info.shape, relax.ShapeExpr):
        return list(info.shape.values)
    return None


def proven(condition) -> bool:
    """Whether TVM's arithmetic analysis proves a condition on dimensions (PrimExprs)."""
    return bool(tvm.sym.Analyzer().can_prove(condition))


def provably_equal(a, b) -> bool:
    return proven(a == b)


def simplified(value):
    return tvm.sym.Analyzer().simplify(value)


def _is_one(dim) -> bool:
    return isinstance(dim, tirx.IntImm) and int(dim) == 1


def with_shape_relations(builder: relax.BlockBuilder, call):
    """``call`` of a Relax operator rebuilt on operands checked for the shape relations
    it needs and TVM does not prove (see the module's documentation), the checks
    emitted with ``builder``; ``call`` itself where nothing is undecided."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) \
            or not call.op.name.startswith("relax."):
        return call
    rules = _Rules(builder)
    name = call.op.name[len("relax."):]
    rule = {"matmul": rules.matmul, "concat": rules.concat, "reshape": rules.reshape,
            "broadcast_to": rules.broadcast_to}.get(name)
    if rule is None and name in _BROADCAST:
        rule = rules.broadcast
    return rule(call, name) if rule is not None else call


@relax.expr_functor.mutator
class _ShapeRelationRewriter(relax.PyExprMutator):
    """Rebuilds each operator whose shape relations are not proven on checked
    operands (:func:`with_shape_relations`)."""

    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod

    def visit_call_(self, call):
        return with_shape_relations(self.builder_, self.visit_expr_post_order(call))


class _Rules:
    """One rule per kind of operator: the call rebuilt on checked operands."""

    def __init__(self, builder):
        self.builder = builder

    def _rebuilt(self, call, operands, shapes, equal, name):
        if not equal:
            return call
        checked = require_equal(self.builder, operands, shapes, equal, name)
        if call.op.name == "relax.concat":
            checked = [relax.Tuple(checked)]
        return relax.Call(call.op, checked, call.attrs, call.ty_args)

    def broadcast(self, call, name):
        operands = list(call.args)
        shapes = [_shape(x) for x in operands]
        if len(operands) < 2 or any(s is None for s in shapes):
            return call
        equal = []
        for axis in range(1, max(len(s) for s in shapes) + 1):
            # (operand, position) of this axis, counted from the right.
            at = [(k, len(s) - axis) for k, s in enumerate(shapes) if len(s) >= axis]
            equal += _agree(shapes, at)
        return self._rebuilt(call, operands, shapes, equal, name)

    def matmul(self, call, name):
        operands = list(call.args)
        shapes = [_shape(x) for x in operands]
        if any(s is None for s in shapes):
            return call
        sa, sb = shapes
        inner = unproven(shapes, (0, len(sa) - 1), (1, max(len(sb) - 2, 0)))
        equal = [inner] if inner else []
        for axis in range(3, min(len(sa), len(sb)) + 1):  # batch dimensions broadcast
            equal += _agree(shapes, [(0, len(sa) - axis), (1, len(sb) - axis)])
        return self._rebuilt(call, operands, shapes, equal, name)

    def concat(self, call, name):
        if not isinstance(call.args[0], relax.Tuple) or len(call.args[0].fields) < 2:
            return call
        operands = list(call.args[0].fields)
        shapes = [_shape(x) for x in operands]
        if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
            return call
        rank = len(shapes[0])
        axis = int(call.attrs.axis) % rank if call.attrs.axis is not None else 0
        equal = []
        for a in range(rank):
            if a != axis:
                equal += _agree(shapes, [(k, a) for k in range(len(shapes))], broadcast=False)
        return self._rebuilt(call, operands, shapes, equal, name)

    def broadcast_to(self, call, name):
        x, target = call.args
        shape = _shape(x)
        if shape is None or not isinstance(target, relax.ShapeExpr) or len(target.values) < len(shape):
            return call
        new = list(target.values)
        offset = len(new) - len(shape)
        pairs = [((0, a), (1, a + offset)) for a, dim in enumerate(shape)
                 if not _is_one(dim) and not provably_equal(dim, new[a + offset])]
        if not pairs:
            return call
        # Equal, not "1 or equal": TVM's broadcast_to reads a dimension that is not a
        # static 1 as it is, so a dynamic one that is 1 at run time would be read past
        # its end (as for the element-wise operators, see broadcast).
        checked = require(self.builder, x, [shape, new], {"op": name, "equal": pairs})
        return relax.Call(call.op, [checked, target], call.attrs, call.ty_args)

    def reshape(self, call, name):
        x, target = call.args
        shape = _shape(x)
        if shape is None or not isinstance(target, relax.ShapeExpr):
            return call
        new = list(target.values)
        if provably_equal(elements(shape), elements(new)):
            return call
        checked = require(self.builder, x, [shape, new], {"op": name, "count": True})
        return relax.Call(call.op, [checked, target], call.attrs, call.ty_args)


def _agree(shapes, at, broadcast=True):
    """Pairs making the sizes at positions ``at`` ((operand, axis) of one axis) agree
    where they are not proven to: each symbolic size takes a static one if there is
    one, else the first symbolic size.  Where the axis broadcasts, static 1s need
    nothing and are no reference; where it does not (a Concat's other axes), a static 1
    is a size like any other (a paddle2onnx OCR recognizer concatenates a pooled height
    of (h - 33) // 48 + 1 with a height of 1)."""
    dims = [(pos, shapes[pos[0]][pos[1]]) for pos in at]
    static = [pos for pos, d in dims if isinstance(d, tirx.IntImm) and not (broadcast and _is_one(d))]
    symbolic = [pos for pos, d in dims if not isinstance(d, tirx.IntImm)]
    if not symbolic:
        return []
    ref = static[0] if static else symbolic[0]
    return [pair for pos in symbolic if pos != ref and (pair := unproven(shapes, ref, pos))]
