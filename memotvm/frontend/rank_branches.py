"""Ifs whose branches give values of different ranks, made into Ifs that do not.

torch exports a scripted ``x.squeeze(-1)`` or an unbatched-input test (``if
x.dim() == 2``) as an ``If`` on a shape: one branch squeezes, the other passes the
value through, so the If's result has one rank or the other depending on the inputs'
sizes (silero-vad v5 squeezes its features when a chunk makes one frame).  Relax
types a value by its rank, and TVM's converters need it: the nodes after such an If
cannot be converted.

:class:`SplitOnRankChangingIfs` moves every node that depends on the If's results
into both of its branches, each copy renamed apart, so that in each branch the value
has one rank and the nodes after it convert (and the rank tests after it fold, see
:class:`.folding.ConstantFolding`).  The If then produces the results of the graph
(or of the enclosing branch) that depend on it.  This is what the model computes:
the nodes after the If run on whichever value it selected.  It copies the rest of the
graph once per such If; a model that needs more than :data:`_MAX_SPLITS` of them, or
whose copies would grow it beyond :data:`_MAX_GROWTH` times its size, is left as it
is (its first node that needs the rank is then refused, with the way out: fixing the
inputs' shapes).
"""

from __future__ import annotations

import onnx
from onnx import helper

from .folding import ConstantFolding, all_names, defined_names, fresh_name, graphs, node_inputs, \
    rename_node, static_shapes

_MAX_SPLITS = 8
_MAX_GROWTH = 8


class SplitOnRankChangingIfs:
    """Copy what follows each rank-changing If into its branches (see the module)."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        size = _node_count(model.graph)
        for _ in range(_MAX_SPLITS):
            split = onnx.ModelProto()
            split.CopyFrom(model)
            found = _first_rank_changing_if(split)
            if found is None:
                break
            _split(*found, all_names(split.graph))
            split = ConstantFolding()(split)
            if _node_count(split.graph) > _MAX_GROWTH * size:
                break
            model = split
        return model


def _first_rank_changing_if(model):
    """(graph, index of the node) of the first If, in any graph, whose branches give one
    of its results different ranks and whose result another node reads; or None."""
    shapes = static_shapes(model).partial
    for graph in graphs(model.graph):
        for index, node in enumerate(graph.node):
            if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
                continue
            branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
            if set(branches) != {"then_branch", "else_branch"}:
                continue
            ranks = [(_rank(then, shapes), _rank(other, shapes)) for out, then, other
                     in zip(node.output, branches["then_branch"].output, branches["else_branch"].output) if out]
            if not any(None not in pair and pair[0] != pair[1] for pair in ranks):
                continue
            outputs = {o for o in node.output if o}
            if any(outputs & set(node_inputs(later)) for later in graph.node[index + 1:]):
                return graph, index
    return None


def _rank(value: onnx.ValueInfoProto, shapes: dict):
    if value.name in shapes:
        return len(shapes[value.name])
    tensor_type = value.type.tensor_type
    if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
        return len(tensor_type.shape.dim)
    return None


def _split(graph, index: int, names: set) -> None:
    """Move the nodes after ``graph.node[index]`` (an If) that depend on its results into
    both of its branches; the If then gives the outputs of ``graph`` they compute."""
    node = graph.node[index]
    produced = {o for o in node.output if o}
    dependent, independent = [], []
    for later in graph.node[index + 1:]:
        if produced & set(node_inputs(later)):
            dependent.append(later)
            produced.update(o for o in later.output if o)
        else:
            independent.append(later)
    results = [o for o in graph.output if o.name in produced]
    split = onnx.NodeProto()
    split.CopyFrom(node)
    del split.output[:]
    split.output.extend(o.name for o in results)
    del split.attribute[:]
    for attr in node.attribute:
        if attr.type != onnx.AttributeProto.GRAPH:
            split.attribute.add().CopyFrom(attr)
            continue
        label = attr.name.split("_")[0]
        branch = onnx.GraphProto()
        branch.CopyFrom(attr.g)
        rename = {out: inner.name for out, inner in zip(node.output, attr.g.output) if out}
        rename.update((name, fresh_name(name, names)) for name in defined_names(helper.make_graph(
            dependent, "dependent", [], [])))
        for later in dependent:
            copy = branch.node.add()
            copy.CopyFrom(later)
            rename_node(copy, rename)
            if copy.name:
                copy.name = f"{copy.name}[{node.name or 'If'}:{label}]"
        del branch.output[:]
        for result in results:
            branch.output.add().CopyFrom(_typed_only(rename[result.name], result))
        split.attribute.add().CopyFrom(helper.make_attribute(attr.name, branch))
    kept = list(graph.node[:index]) + independent + [split]
    del graph.node[:]
    graph.node.extend(kept)
    alive = {v for g in graphs(graph) for n in g.node for v in n.output} | {v.name for v in graph.input}
    stale = [v for v in graph.value_info if v.name not in alive]
    for value in stale:
        graph.value_info.remove(value)


def _typed_only(name: str, value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """A branch output: the element type of ``value`` without its shape, which the
    branches may give different ranks."""
    out = onnx.ValueInfoProto()
    out.name = name
    if value.type.HasField("tensor_type"):
        out.type.tensor_type.elem_type = value.type.tensor_type.elem_type
    return out


def _node_count(graph) -> int:
    return sum(len(g.node) for g in graphs(graph))
