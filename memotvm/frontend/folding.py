"""ONNX-level preparation of a model before TVM sees it: inputs fixed to values, and
every value computable from constants alone made a constant.

Exporters compute many operator inputs from constants at run time: torch writes the
pads of a reflection pad as ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose ->
Reshape -> Cast, and the shapes of reshapes and states from ``Shape`` of tensors whose
shapes are static.  TVM's converters want such inputs as constants ("Dynamic pads are not
supported yet").  :class:`ConstantFolding` evaluates them once, with onnx's reference
implementation of each operator (:mod:`onnx.reference`, the executable form of the ONNX
spec), as onnxruntime's offline basic optimization does; an ``If`` whose condition
becomes a constant is replaced by the branch it selects (:func:`inline_branch`), which
is how a model that branches on a sample rate or a state's shape compiles once those
are fixed (``compile(fixed_inputs=...)``, :func:`bind_inputs`).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..errors import ConfigError

# Operators never evaluated at compile time: the recurrent ones become kernels (their
# counts are the point), random ones must draw at each call, and those with loop bodies
# are not evaluated here.
_NEVER_FOLDED = {"LSTM", "GRU", "RNN", "RandomNormal", "RandomUniform", "RandomNormalLike",
                 "RandomUniformLike", "Multinomial", "Bernoulli", "Loop", "Scan",
                 "SequenceEmpty", "Optional"}
# A folded value may be large when it is no larger than its inputs (a transposed weight),
# but an operator that makes a big tensor out of small ones (ConstantOfShape, Expand,
# Tile, Range) is left to run: folding it would only grow the artifact.
_GROWTH_LIMIT_BYTES = 1 << 20
# ... except the dequantization of a quantized weight (the QDQ format): folded, the
# weight is a float constant, which the matrix products and convolutions after it are
# compiled for (unfolded, every call dequantizes it and multiplies by a weight that is
# not constant, a hundred times slower on a quantized transformer).
_FOLDED_AT_ANY_SIZE = {"DequantizeLinear"}
# onnx.reference implements these operators only from this opset on; the versions
# before it mean the same for the integer types they take (19 added float8 types).
_REFERENCE_OPSET_FLOOR = {"DequantizeLinear": 19, "QuantizeLinear": 19}


def bind_inputs(model: onnx.ModelProto, values: dict | None) -> onnx.ModelProto:
    """``model`` with the graph inputs named in ``values`` replaced by constants.

    Each value is converted to the input's element type; its rank and static dimensions
    must match the input's declaration.
    """
    if not values:
        return model
    if not isinstance(values, dict):
        raise ConfigError(f"fixed_inputs must map input names to values, got {type(values).__name__}")
    initializers = {t.name for t in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    del bound.graph.input[:]
    for value in model.graph.input:
        if value.name not in values:
            bound.graph.input.add().CopyFrom(value)
    for name, value in values.items():
        if name not in inputs:
            raise ConfigError(f"fixed_inputs names '{name}', which is not an input of the model "
                              f"(inputs: {', '.join(inputs) or 'none'})")
        array = _as_input_value(inputs[name], value)
        bound.graph.initializer.append(numpy_helper.from_array(array, name))
    return bound


def _as_input_value(declared: onnx.ValueInfoProto, value) -> np.ndarray:
    name = declared.name
    tensor_type = declared.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    try:
        raw = np.asarray(value)
    except Exception as err:
        raise ConfigError(f"fixed_inputs['{name}']: not an array ({err})") from err
    if raw.dtype.kind not in "biuf":
        raise ConfigError(f"fixed_inputs['{name}']: expected numbers, got {raw.dtype}")
    if dtype.kind in "iub" and raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise ConfigError(f"fixed_inputs['{name}']: input '{name}' is {dtype}, got non-integer values")
    if dtype.kind in "iu" and raw.size and raw.dtype.kind in "iuf":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ConfigError(f"fixed_inputs['{name}']: values outside the range of {dtype}")
    array = raw.astype(dtype)
    if tensor_type.HasField("shape"):
        dims = tensor_type.shape.dim
        if len(dims) != array.ndim:
            raise ConfigError(f"fixed_inputs['{name}'] has {array.ndim} axes; input '{name}' "
                              f"has {len(dims)}")
        for axis, (dim, size) in enumerate(zip(dims, array.shape)):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise ConfigError(f"fixed_inputs['{name}'] has size {size} on axis {axis}; "
                                  f"input '{name}' has {dim.dim_value}")
    return array


def with_input_shapes(model: onnx.ModelProto, shapes: dict) -> onnx.ModelProto:
    """``model`` with the declared shapes of the named inputs replaced (``compile(shapes=)``,
    already checked), so that folding sees them."""
    if not shapes:
        return model
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    for value in shaped.graph.input:
        if value.name in shapes:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for size in shapes[value.name]:
                shape.dim.add().dim_value = int(size)
    return shaped


class ConstantFolding:
    """Replace every node output computable from constants alone by an initializer.

    Constants are initializers, ``Constant`` nodes, outputs of folded nodes, and
    ``Shape``/``Size`` of tensors whose shape is static (as ONNX shape inference finds
    it).  An ``If`` with a constant condition becomes the nodes of its selected branch.
    Folding repeats until nothing changes, since inlined branches and newly static
    shapes open more: each round re-runs ONNX shape inference, which stops at the first
    operator whose output shape depends on a value it cannot see (a ``Range`` over a
    ``Shape``), so a model that computes its shapes in a chain of such steps (GTCRN's
    fourteen GRUs) needs one round per step.  Every round but the last folds at least
    one node, so at most as many rounds run as there are nodes.  Subgraphs of run-time
    ``If``s are folded too, with the outer constants visible.
    """

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        folded = onnx.ModelProto()
        folded.CopyFrom(model)
        self._opsets = list(model.opset_import)
        self._ir_version = model.ir_version
        self._names = all_names(folded.graph)
        while True:
            shapes = static_shapes(folded)
            if not self._fold_graph(folded.graph, {}, shapes):
                break
        _drop_unused_initializers(folded.graph)
        return folded

    def _fold_graph(self, graph, outer: dict, shapes: dict) -> bool:
        """Fold ``graph`` in place; ``outer`` holds the constants of enclosing graphs."""
        known = dict(outer)
        known.update({t.name: t for t in graph.initializer})
        changed = False
        kept = []
        pending = list(graph.node)
        while pending:
            node = pending.pop(0)
            if node.op_type == "If" and node.domain in ("", "ai.onnx"):
                cond = known.get(node.input[0])
                if cond is not None:
                    pending[:0] = self._inline(node, numpy_helper.to_array(cond))
                    changed = True
                    continue
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        changed |= self._fold_graph(attr.g, known, shapes)
                kept.append(node)
                continue
            values = self._evaluate(node, known, shapes)
            if values is None:
                if node.op_type == "Shape" and node.input[0] in shapes.partial:
                    shapes.of_shape[node.output[0]] = _shape_slice(node, shapes.partial[node.input[0]])
                kept.append(node)
                continue
            for name, array in zip(node.output, values):
                if name:
                    tensor = numpy_helper.from_array(array, name)
                    graph.initializer.append(tensor)
                    known[name] = tensor
            changed = True
        del graph.node[:]
        graph.node.extend(kept)
        return changed

    def _inline(self, node, cond: np.ndarray) -> list:
        """The nodes of the branch ``node`` (an If) selects by ``cond``, renamed where
        they would clash, followed by Identity nodes that give its outputs the If's
        output names."""
        if cond.size != 1:
            raise ConfigError(f"node '{node.name}' (If): its condition has {cond.size} elements")
        which = "then_branch" if bool(cond.reshape(())) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == which)
        rename = {}
        for name in defined_names(branch):
            if name in self._names:
                fresh = fresh_name(name, self._names)
                rename[name] = fresh
        nodes = []
        for tensor in branch.initializer:
            constant = helper.make_node("Constant", [], [rename.get(tensor.name, tensor.name)],
                                        value=tensor)
            nodes.append(constant)
        for inner in branch.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            rename_node(copy, rename)
            nodes.append(copy)
        for out, inner in zip(node.output, branch.output):
            if out:
                nodes.append(helper.make_node("Identity", [rename.get(inner.name, inner.name)], [out],
                                              name=f"{node.name}/{which}/{out}"))
        self._names.update(rename.values())
        return nodes

    def _evaluate(self, node, known: dict, shapes: dict):
        """The node's outputs as arrays where they follow from constants, else None."""
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLDED:
            return None
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            return None
        if node.op_type in ("Shape", "Size"):
            return _shape_of(node, shapes)
        if node.op_type == "Gather" and node.input[0] in shapes.of_shape:
            return _gather_static_dims(node, shapes.of_shape[node.input[0]], known)
        if not all(name == "" or name in known for name in node.input):
            return None
        feeds = {name: numpy_helper.to_array(known[name]) for name in node.input if name}
        try:
            evaluator = ReferenceEvaluator(self._one_node_model(node, feeds))
            results = evaluator.run(None, feeds)
        except Exception:  # an operator onnx.reference lacks or rejects: leave it to TVM
            return None
        if not all(isinstance(r, np.ndarray) for r in results):
            return None
        size_in = sum(a.nbytes for a in feeds.values())
        if sum(r.nbytes for r in results) > max(size_in, _GROWTH_LIMIT_BYTES) \
                and node.op_type not in _FOLDED_AT_ANY_SIZE:
            return None
        return [np.array(r, order="C") for r in results]  # (ascontiguousarray makes 0-d 1-d)

    def _one_node_model(self, node, feeds):
        inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                  for name, a in feeds.items()]
        outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in node.output if name]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        opsets, ir_version = self._opsets, self._ir_version
        floor = _REFERENCE_OPSET_FLOOR.get(node.op_type)
        if floor is not None:
            opsets = [helper.make_opsetid("", max(e.version, floor)) if e.domain in ("", "ai.onnx") else e
                      for e in opsets]
            ir_version = max(ir_version, 9)  # (what opset 19 needs)
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


class _Shapes(dict):
    """Value name -> static shape (list of ints); ``partial`` holds every known rank's
    dimensions with None for the symbolic ones, ``of_shape`` the same for the outputs of
    Shape nodes that stay (a Gather of their static entries still folds)."""

    def __init__(self):
        super().__init__()
        self.partial = {}
        self.of_shape = {}


def _shape_slice(node, dims: list) -> list:
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(dims)
    start = attrs.get("start", 0)
    end = attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return list(dims[start:end])


def _shape_of(node, shapes: dict):
    dims = shapes.get(node.input[0])
    if dims is None:
        return None
    if node.op_type == "Size":
        return [np.array(int(np.prod(dims)), np.int64)]
    return [np.array(_shape_slice(node, dims), np.int64)]


def _gather_static_dims(node, dims: list, known: dict):
    """Gather from a Shape whose selected entries are static (a channel count of a
    tensor whose batch is symbolic)."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if axis != 0 or node.input[1] not in known:
        return None
    indices = numpy_helper.to_array(known[node.input[1]]).astype(np.int64)
    if indices.size and (indices.min() < -len(dims) or indices.max() >= len(dims)):
        return None
    picked = [dims[i] for i in indices.ravel()]
    if any(d is None for d in picked):
        return None
    return [np.array(picked, np.int64).reshape(indices.shape)]


def static_shapes(model) -> _Shapes:
    """Value name -> its static shape (a list of ints), where ONNX shape inference finds
    every dimension; names of all graphs, subgraphs included."""
    shapes = _Shapes()
    try:
        inferred = onnx.shape_inference.infer_shapes(_with_outer_constants(model), strict_mode=False,
                                                     data_prop=True)
    except Exception:  # inference gave up on something: no shapes, no Shape folding
        return shapes
    for graph in graphs(inferred.graph):
        for value in itertools.chain(graph.input, graph.value_info, graph.output):
            tensor_type = value.type.tensor_type
            if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                    for d in tensor_type.shape.dim]
            shapes.partial[value.name] = dims
            if None not in dims:
                shapes[value.name] = dims
        for tensor in graph.initializer:
            shapes[tensor.name] = shapes.partial[tensor.name] = list(tensor.dims)
    return shapes


# The largest outer constant copied into a subgraph for shape inference (axes, shapes).
_OUTER_CONSTANT_LIMIT = 64


def _with_outer_constants(model):
    """A copy of ``model`` for shape inference, with the small constants of enclosing
    graphs that a subgraph reads copied into it.  ONNX shape inference gives a subgraph
    the types of outer values but not their contents, so an ``Unsqueeze`` in an If
    branch whose axes are an outer constant (as folding leaves them) would get no rank."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)

    def push(graph, outer):
        visible = dict(outer)
        visible.update({t.name: t for t in graph.initializer})
        for node in graph.node:
            for attr in node.attribute:
                if attr.type != onnx.AttributeProto.GRAPH:
                    continue
                sub = attr.g
                have = {t.name for t in sub.initializer}
                for name in sorted({i for inner in sub.node for i in inner.input} - have):
                    tensor = visible.get(name)
                    if tensor is not None and np.prod(tensor.dims, dtype=np.int64) <= _OUTER_CONSTANT_LIMIT:
                        sub.initializer.append(tensor)
                push(sub, visible)

    push(copy.graph, {})
    return copy


def graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from graphs(g)


def all_nodes(graph):
    """The nodes of graph and of its If branches."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)


def node_inputs(node) -> list:
    """A node's inputs, with the outer values its branches use counted as its own."""
    names = list(node.input)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names += [n for inner in all_nodes(attr.g) for n in inner.input]
            names += [o.name for o in attr.g.output]
    return names


def all_names(graph) -> set:
    names = set()
    for g in graphs(graph):
        names.update(v.name for v in g.input)
        names.update(t.name for t in g.initializer)
        for node in g.node:
            names.update(node.output)
    return names


def defined_names(graph) -> set:
    """Names a branch defines (its initializers and node outputs, nested ones included)."""
    names = {t.name for t in graph.initializer}
    for g in graphs(graph):
        names.update(t.name for t in g.initializer)
        for node in g.node:
            names.update(n for n in node.output if n)
    return names


def rename_node(node, rename: dict) -> None:
    for i, name in enumerate(node.input):
        node.input[i] = rename.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = rename.get(name, name)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            rename_graph(attr.g, rename)


def rename_graph(graph, rename: dict) -> None:
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    for node in graph.node:
        rename_node(node, rename)
    for value in graph.output:
        value.name = rename.get(value.name, value.name)


def unique_name(base: str, taken: set) -> str:
    """``base``, or ``base_k`` for the smallest k that is not ``taken``; now taken."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def fresh_name(name: str, taken: set) -> str:
    for k in itertools.count(1):
        candidate = f"{name}::inlined{k}"
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    raise AssertionError("unreachable")


def _drop_unused_initializers(graph) -> None:
    used = {o.name for o in graph.output}
    for g in graphs(graph):
        for node in g.node:
            used.update(node.input)
        used.update(o.name for o in g.output)
    inputs = {v.name for v in graph.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(keep)
