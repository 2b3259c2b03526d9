"""ONNX ``Loop`` as a recursive Relax function.

Relax has no loop construct; its virtual machine runs recursive functions, as TVM's
TFLite frontend lowers ``WHILE``.  A Loop node becomes two private functions:

* ``<name>_body``: the body graph, from (iteration number, condition, loop-carried
  values, the outer values it reads) to (condition, loop-carried values, scan outputs);
* ``<name>_loop``: runs :data:`UNROLL` iterations (each an If on the loop's condition
  and trip count) and calls itself for the next ones.  Scan outputs are stacked as the
  calls return, so that no call keeps a partial stack alive while the deeper ones run.

Loop-carried values that the body passes through unchanged (Paddle2ONNX carries every
weight of a decoder this way) are not carried: the body reads the initial value, a
constant where the weight is one, and its matrix products are compiled for it.

Each call of the loop function is a frame on the calling thread's C stack (about 3
KB), so the iterations are bounded (:data:`MAX_ITERATIONS`): a loop that would run
more stops with an error naming the node, where unbounded recursion would crash.
"""

from __future__ import annotations

import onnx
import tvm
from tvm import relax, tirx

from ..errors import UnsupportedModelError
from ..passes.native_checks import stop_if
from .converters import AS_TENSOR

# Iterations per call of a loop function, and calls deep: 8 x 1024 iterations with
# about 3.3 MB of the thread's C stack (Linux gives a thread 8 MB).
UNROLL = 8
MAX_DEPTH = 1024
MAX_ITERATIONS = UNROLL * MAX_DEPTH


class LoopConverter:
    """Converts ``Loop`` nodes; mixed into :class:`memotvm.frontend.importer.RecurrentGraphImporter`,
    whose ``bb``, ``_nodes`` and ``_construct_nodes`` it uses."""

    # How many loop bodies enclose the nodes being converted; sizes named so far.
    _loop_depth = 0
    _sizes_named = 0

    def _sized(self, value):
        """A result whose sizes depend on values (a slice of a loop-carried buffer up
        to the iteration number), given symbolic sizes that the match defines at run
        time: the converters after it (Shape, Slice, Expand of its shape) need them."""
        self._sizes_named += 1
        dims = _new_dims(value.ty.ndim, f"loop_size{self._sizes_named}")
        return self.bb.match_cast(value, relax.TensorType(dims, value.ty.dtype))

    def _convert_loop(self, inputs, attrs):
        """The Loop node's outputs: its final loop-carried values and stacked scan
        outputs, from one call of its loop function."""
        name = attrs["tvm_custom"]["name"] or "loop"
        body = attrs["body"]
        spec = LoopSignature(name, body, len(inputs) - 2)
        trip = _scalar(self.bb, inputs[0], "int64", name, "M (the trip count)") if _given(inputs, 0) else None
        cond = _scalar(self.bb, inputs[1], "bool", name, "cond") if _given(inputs, 1) else None
        initial = [self._loop_value(value, name, spec.body_inputs[2 + j])
                   for j, value in enumerate(inputs[2:])]
        outer = self._outer_values(body, name)
        for j in range(spec.num_carried):  # read where they are, as outer values are
            if spec.passes_through(j):
                outer[spec.body_inputs[2 + j]] = initial[j]
        general: set = set()  # (carried index, axis) whose size changes between iterations
        for _ in range(1 + sum(v.ty.ndim for v in initial)):
            attempt = self._loop_body(spec, initial, outer, general)
            changed = attempt.changed_axes() - general
            if not changed:
                break
            general |= changed
        else:  # (each attempt generalizes at least one more axis)
            raise UnsupportedModelError(f"node '{name}' (Loop): its loop-carried shapes do not settle")
        loop_gv = self._loop_function(spec, attempt, trip is not None, cond is not None)
        args = [relax.const(0, "int64"), cond if cond is not None else relax.const(True, "bool")]
        args += [initial[j] for j in attempt.carried] + attempt.outer_args
        args += [trip] if trip is not None else []
        args += [self._no_iteration_shape(spec, k, ty) for k, ty in enumerate(attempt.scan_types)]
        result = self.bb.emit(relax.Call(loop_gv, args))
        outputs = []
        returned = iter(range(len(attempt.carried) + spec.num_scans))
        for j in range(spec.num_carried):
            if j in attempt.carried:
                value = self.bb.emit(relax.TupleGetItem(result, next(returned)))
                outputs.append(self._shaped(value, initial[j].ty, {a for c, a in general if c == j},
                                            f"{name}_out{j}"))
            else:
                outputs.append(initial[j])
        for k, ty in enumerate(attempt.scan_types):
            value = self.bb.emit(relax.TupleGetItem(result, next(returned)))
            outputs.append(self.bb.match_cast(value, relax.TensorType(
                _new_dims(ty.ndim + 1, f"{name}_scan{k}"), ty.dtype)))
        return relax.Tuple(outputs) if len(outputs) != 1 else outputs[0]

    def _no_iteration_shape(self, spec, k, ty):
        """A tensor of the shape scan output ``k`` has when the loop runs no iteration:
        one iteration's shape where it is known when compiling, else the one the body
        declares, else 0 along each axis (ONNX leaves it open)."""
        dims = ty.shape.values if isinstance(ty.shape, relax.ShapeExpr) else []
        if len(dims) != ty.ndim or not all(isinstance(d, tirx.IntImm) for d in dims):
            declared = spec.body.output[1 + spec.num_carried + k].type.tensor_type.shape.dim
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in declared]
            dims = dims if len(dims) == ty.ndim else [0] * ty.ndim
        return self.bb.normalize(relax.op.zeros(relax.ShapeExpr([int(d) for d in dims]), ty.dtype))

    # -- the body -------------------------------------------------------------------

    def _loop_body(self, spec, initial, outer, general) -> "LoopBody":
        """The body as a private function, its loop-carried values typed with the axes
        in ``general`` symbolic."""
        bb, name = self.bb, spec.name
        iteration = relax.Var("iteration", relax.TensorType(spec.iteration_shape, "int64"))
        condition = relax.Var("condition", relax.TensorType(spec.condition_shape, "bool"))
        carried = [j for j in range(spec.num_carried) if not spec.passes_through(j)]
        carried_vars = {j: relax.Var(f"carried{j}", _generalized(initial[j].ty, general, j, name))
                        for j in carried}
        outer_vars = {key: relax.Var(f"outer{n}", _fresh_dims(value.ty, f"{name}_outer{n}"))
                      for n, (key, value) in enumerate(outer.items()) if not _inlined(value)}
        params = [iteration, condition] + list(carried_vars.values()) + list(outer_vars.values())
        table = {key: outer_vars.get(key, value) for key, value in outer.items()}
        table[spec.body_inputs[0]] = iteration
        table[spec.body_inputs[1]] = condition
        for j in carried:
            table[spec.body_inputs[2 + j]] = carried_vars[j]
        saved_nodes, saved_branches, depth = self._nodes, dict(self._converted), self._loop_depth
        bb.begin_scope(params)
        bb._begin_binding_block()
        try:
            for tensor in spec.body.initializer:
                table[tensor.name] = relax.const(self._parse_array(tensor))
            self._nodes = table
            self._loop_depth += 1
            self._construct_nodes(spec.body)  # (main's loop over nodes: it binds every value)
            fields = [self._nodes[name] for name in spec.body_outputs]
            block = bb._end_block()
            seq = bb.normalize(relax.SeqExpr([block], relax.Tuple(fields)))
        except BaseException:
            bb._end_block()
            raise
        finally:
            bb.end_scope()
            self._nodes, self._converted = saved_nodes, saved_branches
            self._loop_depth = depth
        gv = bb.add_func(relax.Function(params, seq), f"{_identifier(name)}_body")
        return LoopBody(spec, gv, carried, carried_vars, list(seq.ty.fields),
                        [outer[key] for key in outer_vars], list(outer_vars.values()))

    def _outer_values(self, body, name) -> dict:
        """The values of enclosing graphs the body reads (name -> expression)."""
        values = {}
        for value_name in _free_names(body):
            if value_name not in self._nodes:
                raise UnsupportedModelError(f"node '{name}' (Loop): its body reads '{value_name}', "
                                            "which is not defined before the loop")
            values[value_name] = self._loop_value(self._nodes[value_name], name, value_name)
        return values

    def _loop_value(self, value, name, what):
        """``value`` as a tensor (a shape as TVM's importer keeps it becomes one)."""
        if value is None:
            raise UnsupportedModelError(f"node '{name}' (Loop): its loop-carried value '{what}' "
                                        "is empty; an empty optional input is not supported")
        value = _prim_as_tensor(self.bb, value)
        if isinstance(value, relax.Expr) and not isinstance(value, tvm.ir.expr.Constant):
            value = self.bb.normalize(value)
        if isinstance(value, tvm.ir.expr.Constant) or isinstance(getattr(value, "ty", None), relax.TensorType):
            if isinstance(value.ty, relax.TensorType) and value.ty.ndim < 0:
                raise UnsupportedModelError(f"node '{name}' (Loop): the rank of '{what}' is not "
                                            "known when compiling; fix the inputs' shapes (shapes=, --shape)")
            if not isinstance(value.ty.shape, relax.ShapeExpr):
                return self._sized(value)
            return value
        if isinstance(getattr(value, "ty", None), relax.ShapeType):
            return self.bb.normalize(relax.op.shape_to_tensor(value))
        raise UnsupportedModelError(f"node '{name}' (Loop): '{what}' is a {type(value).__name__}, "
                                    "not a tensor")

    def _shaped(self, value, initial_ty, general_axes, prefix):
        """A loop-carried result with the initial value's shape, its changing axes
        symbolic (checked by the match at run time)."""
        dims = [tirx.Var(f"{prefix}_{axis}", "int64") if axis in general_axes else dim
                for axis, dim in enumerate(initial_ty.shape.values)]
        return self.bb.match_cast(value, relax.TensorType(dims, initial_ty.dtype))

    # -- the loop ---------------------------------------------------------------------

    def _loop_function(self, spec, body: "LoopBody", has_trip: bool, has_cond: bool):
        """The recursive function that runs the body :data:`UNROLL` times a call.

        Its parameters: the iteration number, the condition, the loop-carried values
        the body changes, the outer values it reads, the trip count where there is
        one, and for each scan output a tensor of one iteration's shape (the last one
        stacked; the shape of the empty stack when no iteration runs)."""
        bb, name = self.bb, spec.name
        i = relax.Var("i", relax.TensorType([], "int64"))
        c = relax.Var("cond", relax.TensorType([], "bool"))
        carried = [relax.Var(f"carried{j}", body.param_types[j]) for j in body.carried]
        outer = [relax.Var(v.name, v.ty) for v in body.outer_params]
        trip = [relax.Var("trip_count", relax.TensorType([], "int64"))] if has_trip else []
        templates = [relax.Var(f"scan{k}_shape", relax.TensorType(dtype=ty.dtype, ndim=ty.ndim))
                     for k, ty in enumerate(body.scan_types)]
        params = [i, c] + carried + outer + trip + templates
        returned = [relax.TensorType(dtype=ty.dtype, ndim=ty.ndim) for ty in
                    [body.param_types[j] for j in body.carried]]
        returned += [relax.TensorType(dtype=ty.dtype, ndim=ty.ndim + 1) for ty in body.scan_types]
        ret_ty = relax.TupleType(returned)
        gv = bb.add_func(relax.Function(params, _placeholder(ret_ty), ret_ty=ret_ty),
                         f"{_identifier(name)}_loop")
        message = (f"node '{name}' (Loop) would run more than {MAX_ITERATIONS} iterations, the most "
                   "a compiled loop runs (each takes C stack of the calling thread)")

        def iteration(depth, i, c, values, scans, dims):
            """The loop's results from iteration ``i`` on, given the scan outputs of the
            iterations before it in this call (``scans``, each of shape ``dims``): an
            If on whether iteration ``i`` runs.  Each If is the last binding of its
            branch, and the results are put together in the innermost branches: TVM's
            memory planning reuses, after an If, storage that only one of its branches
            allocates."""
            go = bb.emit(relax.op.logical_and(c, relax.op.less(i, trip[0])) if has_trip else c)
            if depth == 0:
                limit = relax.const(MAX_ITERATIONS, "int64")
                go = stop_if(bb, go, bb.normalize(relax.op.logical_and(go, relax.op.greater_equal(i, limit))),
                             message)
            bb._begin_binding_block()
            iter_arg = bb.emit(relax.op.reshape(i, spec.iteration_shape))
            cond_arg = bb.emit(relax.op.reshape(c, spec.condition_shape))
            out = bb.emit(relax.Call(body.gv, [iter_arg, cond_arg] + values + outer))
            fields = [bb.emit(relax.TupleGetItem(out, n)) for n in range(len(body.out_types))]
            next_i = bb.emit(relax.op.add(i, relax.const(1, "int64")))
            next_c = bb.emit(relax.op.astype(relax.op.reshape(fields[0], []), "bool")) if has_cond \
                else relax.const(True, "bool")
            next_values = [fields[1 + j] for j in body.carried]
            # Every iteration's scan output has one shape (ONNX requires it; the match
            # checks it): the first one's in this call.
            this = [bb.match_cast(fields[1 + spec.num_carried + k], relax.TensorType(
                        dims[k] if scans[k] else _new_dims(ty.ndim, f"scan{k}_{depth}"), ty.dtype))
                    for k, ty in enumerate(body.scan_types)]
            next_dims = [list(t.ty.shape.values) for t in this]
            next_scans = [parts + [bb.emit(relax.op.expand_dims(t, 0))] for parts, t in zip(scans, this)]
            if depth + 1 < UNROLL:
                ran = iteration(depth + 1, next_i, next_c, next_values, next_scans, next_dims)
            else:
                rest = bb.emit(relax.Call(gv, [next_i, next_c] + next_values + outer + trip + this))
                results = [bb.emit(relax.TupleGetItem(rest, n)) for n in range(len(carried))]
                for k, parts in enumerate(next_scans):
                    later = bb.match_cast(relax.TupleGetItem(rest, len(carried) + k), relax.TensorType(
                        [tirx.Var(f"later{k}", "int64")] + next_dims[k], body.scan_types[k].dtype))
                    results.append(bb.emit(relax.op.concat(parts + [later], axis=0)))
                ran = bb.emit(relax.Tuple(results))
            ran = relax.SeqExpr([bb._end_block()], ran)
            bb._begin_binding_block()
            stacks = []
            for k, parts in enumerate(scans):
                if len(parts) > 1:
                    stacks.append(bb.emit(relax.op.concat(parts, axis=0)))
                elif parts:
                    stacks.append(parts[0])
                else:  # nothing ran in this call: an empty stack of the last iteration's shape
                    stacks.append(bb.emit(relax.op.zeros(relax.ShapeExpr([0] + dims[k]),
                                                         body.scan_types[k].dtype)))
            stopped = relax.SeqExpr([bb._end_block()], relax.Tuple(list(values) + stacks))
            return bb.emit(relax.If(go, ran, stopped))

        bb.begin_scope(params)
        bb._begin_binding_block()
        try:
            dims = [list(bb.match_cast(t, relax.TensorType(_new_dims(ty.ndim, f"shape{k}"), ty.dtype)).ty.shape.values)
                    for k, (t, ty) in enumerate(zip(templates, body.scan_types))]
            result = iteration(0, i, c, list(carried), [[] for _ in templates], dims)
            block = bb._end_block()
            seq = bb.normalize(relax.SeqExpr([block], result))
        except BaseException:
            bb._end_block()
            raise
        finally:
            bb.end_scope()
        bb.update_func(gv, relax.Function(params, seq, ret_ty=ret_ty))
        return gv


class LoopSignature:
    """What a Loop node's body takes and gives, checked against the node."""

    def __init__(self, name, body, num_carried):
        self.name, self.body = name, body
        self.body_inputs = [v.name for v in body.input]
        self.body_outputs = [v.name for v in body.output]
        self.num_carried = num_carried
        self.num_scans = len(body.output) - 1 - num_carried
        if len(body.input) != 2 + num_carried or self.num_scans < 0:
            raise UnsupportedModelError(
                f"node '{name}' (Loop): its body takes {len(body.input)} inputs and gives "
                f"{len(body.output)} outputs, but the node has {num_carried} loop-carried "
                f"values (the body must take {2 + num_carried} and give at least {1 + num_carried})")
        self.iteration_shape = _declared_scalar_shape(body.input[0])
        self.condition_shape = _declared_scalar_shape(body.input[1])

    def passes_through(self, j) -> bool:
        """Whether the body gives loop-carried value ``j`` back unchanged."""
        return self.body_outputs[1 + j] == self.body_inputs[2 + j]


class LoopBody:
    """A converted body: its function and types, and which loop-carried values it
    changes (``carried``)."""

    def __init__(self, spec, gv, carried, carried_vars, out_types, outer_args, outer_params):
        self.gv, self.carried = gv, carried
        self.param_types = {j: var.ty for j, var in carried_vars.items()}
        self.out_types = out_types
        self.outer_args, self.outer_params = outer_args, outer_params
        name = spec.name
        for j in carried:
            got, want = out_types[1 + j], self.param_types[j]
            if not isinstance(got, relax.TensorType) or got.dtype != want.dtype or got.ndim != want.ndim:
                raise UnsupportedModelError(
                    f"node '{name}' (Loop): loop-carried value '{spec.body_inputs[2 + j]}' enters the "
                    f"body as {_describe(want)} and leaves it as {_describe(got)}; its type and rank "
                    "must stay the same")
        self.scan_types = out_types[1 + spec.num_carried:]
        for k, ty in enumerate(self.scan_types):
            if not isinstance(ty, relax.TensorType) or ty.ndim < 0:
                raise UnsupportedModelError(
                    f"node '{name}' (Loop): scan output '{spec.body_outputs[1 + spec.num_carried + k]}' "
                    f"is {_describe(ty)}; memotvm stacks tensors of a rank known when compiling")
        cond = out_types[0]
        if not isinstance(cond, relax.TensorType) or cond.dtype != "bool":
            raise UnsupportedModelError(f"node '{name}' (Loop): its body's condition is "
                                        f"{_describe(cond)}, not bool")

    def changed_axes(self) -> set:
        """(carried index, axis) of the loop-carried sizes the body does not keep."""
        changed = set()
        for j in self.carried:
            want = self.param_types[j].shape.values
            got = self.out_types[1 + j].shape
            got = got.values if isinstance(got, relax.ShapeExpr) else [None] * len(want)
            for axis, (a, b) in enumerate(zip(want, got)):
                if isinstance(a, tirx.Var) and isinstance(b, tirx.Var) and a.same_as(b):
                    continue
                if isinstance(a, tirx.IntImm) and isinstance(b, tirx.IntImm) and int(a) == int(b):
                    continue
                changed.add((j, axis))
        return changed


def _placeholder(ret_ty):
    """A body of type ``ret_ty`` for the function's first definition (its recursive
    call needs the function's type before its body exists)."""
    return relax.Tuple([relax.op.zeros(relax.ShapeExpr([0] * max(ty.ndim, 0)), ty.dtype)
                        for ty in ret_ty.fields])


def _given(inputs, index) -> bool:
    return index < len(inputs) and inputs[index] is not None


def _scalar(bb, value, dtype, name, what):
    """The Loop's trip count or condition as a scalar of ``dtype``."""
    value = _prim_as_tensor(bb, value)
    ty = getattr(value, "ty", None)
    if isinstance(ty, relax.ShapeType):
        value = bb.normalize(relax.op.shape_to_tensor(value))
        ty = value.ty
    if not isinstance(ty, relax.TensorType) or str(ty.dtype) != dtype:
        raise UnsupportedModelError(f"node '{name}' (Loop): its input {what} must be a {dtype} "
                                    f"tensor, got {_describe(ty)}")
    shape = ty.shape.values if isinstance(ty.shape, relax.ShapeExpr) else None
    if shape is None or not all(isinstance(d, tirx.IntImm) and int(d) == 1 for d in shape):
        raise UnsupportedModelError(f"node '{name}' (Loop): its input {what} must hold one "
                                    f"element, got {_describe(ty)}")
    return bb.normalize(relax.op.reshape(value, []))


def _prim_as_tensor(bb, value):
    """A scalar that TVM's importer keeps as a number (a size gathered from a shape)
    as a 0-d tensor; anything else as it is."""
    if not tvm.ir.is_prim_expr(value):
        return value
    as_int = value if str(value.ty) == "int64" else tirx.Cast("int64", value)
    tensor = relax.op.reshape(relax.op.shape_to_tensor(relax.ShapeExpr([as_int])), [])
    return bb.normalize(tensor if str(value.ty) == "int64" else relax.op.astype(tensor, str(value.ty)))


def _declared_scalar_shape(value_info) -> list:
    """[] or [1]: how the body declares its iteration number or condition (Paddle2ONNX
    declares [1])."""
    dims = value_info.type.tensor_type.shape.dim if value_info.type.tensor_type.HasField("shape") else []
    return [1] if len(dims) == 1 else []


def _new_dims(ndim, prefix) -> list:
    return [tirx.Var(f"{prefix}_{axis}", "int64") for axis in range(ndim)]


def _generalized(ty, general, j, name):
    """``ty`` with the axes of loop-carried value ``j`` that change symbolic."""
    dims = [tirx.Var(f"{name}_carried{j}_{axis}", "int64") if (j, axis) in general else d
            for axis, d in enumerate(ty.shape.values)]
    return _fresh_dims(relax.TensorType(dims, ty.dtype), f"{name}_carried{j}")


def _fresh_dims(ty, prefix):
    """``ty`` with its symbolic sizes replaced by new ones (those of another function
    cannot be shared); a size that appears twice stays one symbol."""
    if not isinstance(ty.shape, relax.ShapeExpr):
        return relax.TensorType(dtype=ty.dtype, ndim=ty.ndim)
    fresh = {}
    dims = []
    for axis, dim in enumerate(ty.shape.values):
        if isinstance(dim, tirx.IntImm):
            dims.append(dim)
            continue
        key = dim if isinstance(dim, tirx.Var) else None
        if key is not None and any(key.same_as(k) for k in fresh):
            dims.append(next(v for k, v in fresh.items() if key.same_as(k)))
            continue
        var = tirx.Var(f"{prefix}_{axis}", "int64")
        if key is not None:
            fresh[key] = var
        dims.append(var)
    return relax.TensorType(dims, ty.dtype)


def _inlined(value) -> bool:
    """Whether an outer value goes into the body as it is (a constant) rather than as a
    parameter."""
    return isinstance(value, tvm.ir.expr.Constant)


def _free_names(graph) -> list:
    """Names the graph's nodes (nested graphs included) read but do not define (without
    the suffix :func:`memotvm.frontend.converters.shapes_as_tensors` gives, which the
    importer's table of values answers)."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    free = []

    def visit(g, defined):
        defined = set(defined) | {v.name for v in g.input} | {t.name for t in g.initializer}
        for node in g.node:
            for name in node.input:
                name = name[:-len(AS_TENSOR)] if name.endswith(AS_TENSOR) else name
                if name and name not in defined and name not in free:
                    free.append(name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, defined)
            defined |= set(node.output)
        for out in g.output:
            if out.name not in defined and out.name not in free:
                free.append(out.name)

    visit(graph, defined)
    return free


def _describe(ty) -> str:
    if isinstance(ty, relax.TensorType):
        if isinstance(ty.shape, relax.ShapeExpr):
            dims = [str(int(d)) if isinstance(d, tirx.IntImm) else str(d) for d in ty.shape.values]
            return f"a {ty.dtype} tensor of shape [{', '.join(dims)}]"
        return f"a {ty.dtype} tensor of rank {ty.ndim}"
    return str(ty)


def _identifier(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "loop"
