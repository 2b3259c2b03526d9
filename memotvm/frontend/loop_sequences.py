"""Loop-carried ONNX sequences that a loop only appends to, rewritten as scan outputs.

A scripted torch decoder that collects a tensor per step in a list (``outs.append(y)``
and, after the loop, ``torch.stack(outs, d)`` or ``torch.cat(outs, d)``) exports the
list as an ONNX sequence: ``SequenceEmpty`` before the Loop, carried through it,
``SequenceInsert`` at its end once per iteration, and ``ConcatFromSequence`` after it.
That is a scan output -- the Loop stacks one value per iteration along a new first axis
-- moved to the asked axis (stack), or with that axis then merged into the next
(concatenation).  memotvm compiles scan outputs (:mod:`.loops`) but not sequences, so
the pattern is rewritten into one; the values are the same, in the same order.

Sequences used any other way (read inside the loop, inserted at a position, several
inserts an iteration, read with SequenceAt after it) are left as they are, and refused
by the importer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError
from .folding import all_names, all_nodes, graphs, node_inputs, unique_name
from .scan import declared_rank


class SequencesAsScanOutputs:
    """Rewrite, in every graph of a model, each loop-carried sequence that starts empty,
    gets one SequenceInsert at its end per iteration and is only concatenated after the
    loop, as a scan output of that loop."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        if not any(node.op_type == "SequenceEmpty" for node in all_nodes(model.graph)):
            return model
        out = onnx.ModelProto()
        out.CopyFrom(model)
        # Ranks of the appended values (for the axes of ConcatFromSequence).
        try:
            inferred = onnx.shape_inference.infer_shapes(out)
        except Exception:  # (a model shape inference rejects: ranks then from declarations)
            inferred = out
        self._ranks = {v.name: declared_rank(v, None) for g in graphs(inferred.graph)
                       for v in list(g.value_info) + list(g.output) + list(g.input)}
        self._names = all_names(out.graph)
        self._rewrite(out.graph)
        return out

    def _rewrite(self, graph) -> None:
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self._rewrite(attr.g)
        # One sequence at a time: a rewrite replaces the graph's nodes (protobuf copies
        # them), so the loops are looked up again after each.  Only carried values that
        # start as an empty sequence are looked at (a decoder carries its weights too).
        while True:
            empty = {name for node in graph.node if node.op_type == "SequenceEmpty" for name in node.output}
            if not any(self._as_scan_output(graph, loop, j) for loop in graph.node if loop.op_type == "Loop"
                       for j in range(len(loop.input) - 2) if loop.input[2 + j] in empty):
                break

    def _as_scan_output(self, graph, loop, j) -> bool:
        """Rewrite loop-carried value j of ``loop`` where it is such a sequence (True
        where it was)."""
        uses = _uses(graph)
        producer = next((n for n in graph.node if loop.input[2 + j] in n.output), None)
        if producer is None or producer.op_type != "SequenceEmpty" or len(uses[loop.input[2 + j]]) != 1:
            return False
        body = next(a.g for a in loop.attribute if a.name == "body")
        if len(body.input) != len(loop.input) or len(body.output) < len(loop.input) - 1:
            return False
        seq_in, seq_out = body.input[2 + j].name, body.output[1 + j].name
        body_uses = _uses(body)
        inserts = body_uses.get(seq_in, [])
        if len(inserts) != 1 or inserts[0].op_type != "SequenceInsert" or len(inserts[0].input) != 2 \
                or inserts[0].input[0] != seq_in or inserts[0].output[0] != seq_out \
                or body_uses.get(seq_out) or [o.name for o in body.output].count(seq_out) != 1:
            return False
        final = loop.output[j] if j < len(loop.output) else ""
        concats = uses.get(final, []) if final else []
        if final in {o.name for o in graph.output} or any(
                c.op_type != "ConcatFromSequence" or c.input[0] != final for c in concats):
            return False
        value = inserts[0].input[1]
        rank = self._ranks.get(value)
        axes = [self._axis(c, rank) for c in concats]
        if any(axis is None for axis in axes):
            return False
        # The body: the value is a scan output (after every carried one), the sequence gone.
        kept = [n for n in body.node if list(n.output) != [seq_out]]
        del body.node[:]
        body.node.extend(kept)
        del body.input[2 + j]
        del body.output[1 + j]
        body.output.append(helper.make_empty_tensor_value_info(value))
        # The loop: the stacked values are its last output.
        label = loop.name or "loop"
        stacked = unique_name(f"{label}::{final or value}::stacked", self._names)
        del loop.input[2 + j]
        if j < len(loop.output):
            del loop.output[j]
        loop.output.append(stacked)
        # (Nodes told apart by their outputs: protobuf gives new wrappers at each access.)
        axis_of = {c.output[0]: axis for c, axis in zip(concats, axes)}
        nodes = []
        for node in graph.node:
            if list(node.output) == list(producer.output):
                continue
            if node.op_type == "ConcatFromSequence" and node.output[0] in axis_of:
                nodes += self._concatenated(node, stacked, axis_of[node.output[0]], rank)
                continue
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        return True

    @staticmethod
    def _axis(concat, rank):
        """(axis, new_axis) of a ConcatFromSequence, the axis made non-negative, or None
        where that needs a rank that is not known."""
        attrs = {a.name: a.i for a in concat.attribute}
        new_axis, axis = attrs.get("new_axis", 0), attrs["axis"]
        if axis < 0:
            if rank is None:
                return None
            axis += rank + new_axis
        return axis, new_axis

    def _concatenated(self, concat, stacked, axis_new, rank) -> list:
        """Nodes computing ``concat``'s output from the stacked values [n, *value]."""
        axis, new_axis = axis_new
        out = concat.output[0]
        if axis == 0 and new_axis:
            return [helper.make_node("Identity", [stacked], [out])]
        if rank is None:
            raise UnsupportedModelError(
                f"node '{concat.name or out}' (ConcatFromSequence): axis {axis} of a sequence a "
                "Loop appends to needs the rank of the appended values, which the model does "
                "not declare")
        if new_axis:  # the new axis moved to position ``axis``
            order = list(range(1, rank + 1))
            order.insert(axis, 0)
            return [helper.make_node("Transpose", [stacked], [out], perm=order)]
        # Concatenation: the new axis merged with ``axis`` (iteration-major).  Both moved
        # last, where a constant shape merges them (0 keeps each other size, whatever it
        # is), then the merged axis moved back.  (A shape computed at run time would be a
        # tensor, which TVM's Reshape does not take.)
        last, merged = (unique_name(f"{out}::{what}", self._names) for what in ("last", "merged"))
        shape = unique_name(f"{out}::shape", self._names)
        others = [i + 1 for i in range(rank) if i != axis]
        back = list(range(rank - 1))
        back.insert(axis, rank - 1)
        return [
            helper.make_node("Transpose", [stacked], [last], perm=others + [0, axis + 1]),
            helper.make_node("Constant", [], [shape], value=numpy_helper.from_array(
                np.array([0] * (rank - 1) + [-1], np.int64), shape)),
            helper.make_node("Reshape", [last, shape], [merged]),
            helper.make_node("Transpose", [merged], [out], perm=back),
        ]


def _uses(graph) -> dict:
    """Value name -> the nodes of ``graph`` that read it (their branches' reads included)."""
    uses: dict = {}
    for node in graph.node:
        for name in dict.fromkeys(node_inputs(node)):
            if name:
                uses.setdefault(name, []).append(node)
    return uses
